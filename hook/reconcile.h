// Reconciliation: the ledger checked against the disk (RocksDB WalSet::CheckWals). One planner
// serves the hook, which repairs at open before anything else happens, and `ckptledger gc`, which
// shows the plan (dry run) or carries it out with the writer's lock (--apply).
//
// Findings, each recorded as a `recovered` event when repaired:
//   torn_save              save_begun without an outcome: the temp file is removed
//   prune_completed        a prune was recorded but the file is still there: it is removed
//   lost / corrupt         a live file is missing / has another size: never chosen for resume
//   stray_temp             a temp file no save accounts for: removed
//   unknown_file           a *.pth the ledger never wrote: left alone, reported once
//   stale_last_checkpoint  `last_checkpoint` lags the ledger (crash before its rename): rewritten
//   in_flight              (gc while a writer holds the ledger) a save being made: left alone
// lost and corrupt are the "problems" that recovery=strict refuses to start with.
// No libtorch; thread safety: none (the caller owns the ledger and the state).
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "hook/durable_file.h"
#include "hook/hook_state.h"
#include "ledger/event.h"
#include "ledger/ledger.h"

namespace ckptledger {

struct Finding {
  std::string finding;  // torn_save, prune_completed, lost, corrupt, stray_temp, ...
  std::string path;
  std::string action;  // what the repair does (and records)
  std::string detail;
  std::string remove;    // the file the repair removes ("" = none)
  bool problem = false;  // refused by recovery=strict
  int64_t bytes = -1;    // size on disk (-1: no file)
  int64_t step = 0, epoch = 0, iter = 0;
};

struct ReconcilePlan {
  std::vector<Finding> findings;
  std::string last_file;     // <work_dir>/last_checkpoint
  std::string last_rewrite;  // what to write into it ("" = leave it)

  bool empty() const { return findings.empty(); }
  std::vector<std::string> problems() const;  // one line per problem finding
  std::vector<Event> events() const;          // the `recovered` events the repair appends
};

struct ReconcileScope {
  std::string work_dir;              // absolute; holds last_checkpoint
  std::set<std::string> extra_dirs;  // scanned too (out_dir, earlier runs' out_dirs)
  // A writer holds the ledger (gc dry run while training): its in-flight saves and their temp
  // files are not torn.
  bool writer_active = false;
};

// What reconciliation finds for `state` (the fold of the whole ledger) on the disk now.
ReconcilePlan plan_reconcile(const HookState& state, const ReconcileScope& scope);

// Carries out `plan` on a ledger open for writing: appends its events (one batch, durable), folds
// them into `state`, then removes files and rewrites last_checkpoint. The order makes a crash in
// between harmless: the next open finds the remaining files and removes them.
void apply_reconcile(const ReconcilePlan& plan, Ledger& ledger, HookState& state,
                     FileSystem& files);

}  // namespace ckptledger
