// SavePlanner: the hook's decisions as a pure function (no libtorch, no I/O): from the folded state
// (HookState) and the validated config, what to save, which events commit each save and which
// files go once it is committed. The hook then stages, persists and commits what it is given:
// stage -> plan -> persist -> commit (torch.distributed.checkpoint's planner stage).
//
// The rules are MMEngine's CheckpointHook (docs/behaviour.md: rotation, best checkpoints, re-save
// after a best update, keep list) with the delete after the successor's commit
// (docs/crash-safety.md: delete after successor) and rotated paths taken from the ledger.
// A plan of several saves is decided in order: each save is planned from the state with the
// previous saves' events folded in, exactly as the hook applies them.
//
// Thread safety: const and stateless apart from the config; any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ckptledger/event.h"
#include "ckptledger/hook_config.h"
#include "ckptledger/hook_state.h"
#include "ckptledger/log.h"

namespace ckptledger {

// One checkpoint file to write. `commit` is appended in one transaction once the bytes are
// durable: save_committed first, then what it supersedes (pruned, best_updated); `remove_after`
// are deleted after that commit.
struct PlannedSave {
  std::string path;
  std::vector<Event> commit;
  std::vector<std::string> remove_after;
  int64_t meta_epoch = 0;
  int64_t meta_iter = 0;
  bool with_optimizer = false;
  bool with_schedulers = false;
  bool moves_last_checkpoint = false;  // a regular checkpoint: last_checkpoint names it
  // Log lines to emit once the save is handed to the writer, in order.
  std::vector<std::pair<LogLevel, std::string>> logs_after;
};

// One step of a validation's plan: a log line (save empty) or a save.
struct PlanStep {
  std::optional<PlannedSave> save;
  LogLevel level = LogLevel::kInfo;
  std::string message;
};

struct ValidationPlan {
  Event validated;  // decided first, appended after every save of this plan
  std::vector<PlanStep> steps;
};

// Keep-list trims at before_train (a smaller max_keep_ckpts than the run that wrote the ledger).
struct TrimPlan {
  std::vector<Event> prunes;
  std::vector<std::string> remove_after;
};

class SavePlanner {
 public:
  // Whether a file exists on disk (the one question the planner asks outside the state; tests
  // answer it themselves).
  using FileProbe = std::function<bool(const std::string&)>;

  SavePlanner(const ValidatedConfig& cfg, std::string out_dir, FileProbe exists);

  // A regular checkpoint at `step` (epoch or iteration), with rotation when max_keep_ckpts > 0.
  PlannedSave plan_regular(const HookState& state, int64_t step, int64_t meta_epoch,
                           int64_t meta_iter) const;

  // after_val_epoch at counters (epoch, iter): the validated event ('auto' resolved), the best
  // saves (each with the prune of the best it replaces) and the re-save of the regular checkpoint
  // when a best was updated. Throws Error(kInvalidArgument) naming the key when a save_best key
  // is not among the metrics.
  ValidationPlan plan_validation(const HookState& state, const Metrics& metrics, int64_t epoch,
                                 int64_t iter) const;

  // The keep list restored from the ledger trimmed to max_keep_ckpts, oldest first.
  TrimPlan plan_keep_trim(const HookState& state, int64_t epoch, int64_t iter) const;

  static bool better(Rule rule, double score, const BestState* prev);

 private:
  const ValidatedConfig& cfg_;
  std::string out_dir_;
  FileProbe exists_;
};

}  // namespace ckptledger
