// Reconciliation: the ledger checked against the disk (RocksDB WalSet::CheckWals). One planner
// serves the hook, which repairs at open before anything else happens, and `ckptledger gc`, which
// shows the plan (dry run) or carries it out with the writer's lock (--apply).
//
// Findings, each recorded as a `recovered` event when repaired:
//   torn_save              save_begun without an outcome: the temp file is removed
//   rolled_forward         a save that replaces a file under its name (save_prepared) died after
//                          its rename and before its commit: the file holds exactly the prepared
//                          bytes, so the save's save_committed is appended (then this finding)
//   prune_completed        a prune was recorded but the file is still there: it is removed
//   lost / corrupt         a live file is missing / has another size: never chosen for resume
//   stray_temp             a temp file no save accounts for: removed
//   orphan_part            a part file (policy/parts.h) no committed checkpoint lists: a save of
//                          several ranks that never committed, or a pruned one's: removed
//   unknown_file           a *.pth the ledger never wrote: left alone, reported once
//   stale_last_checkpoint  `last_checkpoint` lags the ledger (crash before its rename): rewritten
//   in_flight              (gc while a writer holds the ledger) a save being made: left alone
// lost and corrupt are the "problems" that recovery=strict refuses to start with.
//
// Not repairable, in any policy: evidence that the ledger is BEHIND the work_dir, i.e. it lost
// events the disk saw (ReconcilePlan::behind). A ledger restored from an older copy, or whose
// -wal was deleted after its writer died, opens as a consistent but older prefix: repairing it
// would resume from an older checkpoint and let the next saves overwrite files it never heard
// of. The evidence is what a crash can never leave, because of the order in which the hook
// writes (save_begun is durable before the temp file exists; save_committed before the rename's
// successor, last_checkpoint, is rewritten):
//   - last_checkpoint names a file this ledger never committed;
//   - a file named like this hook's regular or best checkpoints, or the temp file of one, that
//     this ledger never began (published copies and last_checkpoint's temp are written without
//     save_begun, and are not evidence).
// A ledger created by this very open (no file before) is not checked: a new ledger in a work_dir
// that another tool (or an earlier ckptledger-less run) wrote knows nothing, legitimately.
// No libtorch; thread safety: none (the caller owns the ledger and the state).
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "ckptledger/event.h"
#include "ckptledger/hook_state.h"
#include "ckptledger/ledger.h"
#include "storage/durable_file.h"

namespace ckptledger {

struct Finding {
  Finding() = default;
  Finding(std::string finding_, std::string path_, std::string action_, std::string detail_ = "")
      : finding(std::move(finding_)),
        path(std::move(path_)),
        action(std::move(action_)),
        detail(std::move(detail_)) {}

  std::string finding;  // torn_save, prune_completed, lost, corrupt, stray_temp, ...
  std::string path;
  std::string action;  // what the repair does (and records)
  std::string detail;
  std::string remove;    // the file the repair removes ("" = none)
  bool problem = false;  // refused by recovery=strict
  int64_t bytes = -1;    // size on disk (-1: no file)
  int64_t step = 0, epoch = 0, iter = 0;
  // rolled_forward: the save's commit, appended before the finding's `recovered` event: its
  // save_committed and the events committed with it.
  std::vector<Event> commit;
};

struct ReconcilePlan {
  std::vector<Finding> findings;
  std::string last_file;     // <work_dir>/last_checkpoint
  std::string last_rewrite;  // what to write into it ("" = leave it)

  // Evidence that the ledger is behind the work_dir, one line each (see the top of this file).
  // The hook refuses to start on it in every recovery policy; apply_reconcile refuses the plan.
  std::vector<std::string> behind;

  bool empty() const { return findings.empty() && behind.empty(); }
  std::vector<std::string> problems() const;  // one line per problem finding
  std::vector<Event> events() const;          // what the repair appends: `recovered` events (a roll
                                              // forward's save_committed before its own)
};

struct ReconcileScope {
  std::string work_dir;              // absolute; holds last_checkpoint
  std::set<std::string> extra_dirs;  // scanned too (out_dir, earlier runs' out_dirs)
  // A writer holds the ledger (gc dry run while training): its in-flight saves and their temp
  // files are not torn.
  bool writer_active = false;
  // Set both to look for evidence that the ledger is behind the work_dir: the ledger `state` was
  // folded from (its history answers "was this file ever begun / committed?"), and which file
  // names are this hook's checkpoints (checkpoint_name_matcher).
  const Ledger* ledger = nullptr;
  std::function<bool(const std::string& file_name)> ours;
  // A moved or copied work_dir (Ledger::moved_roots): files outside this directory may be the
  // original's, so nothing outside it is removed (such findings are reported, action "left
  // alone"). Empty: no restriction.
  std::string confined_to;
};

// Whether a file name is one that a hook with `filename_tmpl` writes a regular or best
// checkpoint under: `epoch_12.pth` and `best_acc_epoch_12.pth` for "epoch_{}.pth" (any metric
// key, padding the template asks for). Published copies (`epoch_12-1a2b3c4d.pth`) are not.
std::function<bool(const std::string& file_name)> checkpoint_name_matcher(
    const std::string& filename_tmpl);

// What reconciliation finds for `state` (the fold of the whole ledger) on the disk now.
ReconcilePlan plan_reconcile(const HookState& state, const ReconcileScope& scope);

// Carries out `plan` on a ledger open for writing: removes files and rewrites last_checkpoint,
// then appends its events (one batch, durable) and folds them into `state`. The order makes a
// crash in between harmless: the next open finds what is left and does it again. A plan with
// `behind` evidence is refused (Error kCorruption) before anything is written.
void apply_reconcile(const ReconcilePlan& plan, Ledger& ledger, HookState& state,
                     FileSystem& files);

}  // namespace ckptledger
