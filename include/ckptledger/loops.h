// Reference training loops that drive a CheckpointHook in MMEngine's runner order
// (docs/behaviour.md: stages and counters).
//
// Copy them into your own code or use them as they are. Each loop owns nothing: it advances the
// counters of a LoopRunner, calls your train step, runs validation when it is due, and calls the
// hook's stages:
//
//   hook.join(job)           only when runner.job() is a job of several ranks (below)
//   hook.resume()            only when LoopOptions::resume or load_from is set
//   before_train
//   EpochLoop, per epoch:    per batch: step(batch_idx), after_train_iter(batch_idx), I += 1
//                            after_train_epoch, E += 1, then validation if due: after_val_epoch
//   IterLoop:                skip the I batches already consumed (resume), then per iteration:
//                            step(data_idx), after_train_iter(I), I += 1, validation if due;
//                            after_train_epoch once at the end (E stays 0)
//   after_train, after_run
//
// Validation is due (MMEngine's rule) at step K = completed epochs (epoch loop) or completed
// iterations (iteration loop) when K >= val_begin and (K % val_interval == 0 or K == the maximum);
// LoopOptions::val_due replaces the rule. LoopOptions::on_stage is called right after each hook
// stage returns, while the counters still hold the values the hook saw.
//
// After a resume, a validation that was due at the resume point and whose outcome the ledger does
// not hold (CheckpointHook::validation_complete) runs before training continues: MMEngine skips
// it when the process died between the save and the validation.
//
// A runner in a job of several ranks (Runner::job(), e.g. TorchRunner::set_job): the loop joins the
// hook to the job's group and store when the hook has joined none (hook.world_size() == 1), so
// that every rank's hook is in the job before resume. A hook joined already (CheckpointHook::join,
// e.g. to a group of the program's own) is left as it is when its world size is the job's;
// another world size is Error(kInvalidArgument) naming both.
//
// One deliberate difference from MMEngine: an EpochLoop resumed from a mid-epoch checkpoint (an
// iteration-based hook's iter_N.pth) continues that epoch at the batch after the last one trained,
// as IterLoop does, instead of replaying the epoch from its first batch while I goes on (which
// runs past max_iters; docs/behaviour.md: reference loops).
//
// Thread safety: a loop runs on the calling thread; the hook and the runner are used from it only.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "ckptledger/checkpoint_hook.h"
#include "ckptledger/runner.h"

namespace ckptledger {

// The hook stages a loop reports to LoopOptions::on_stage.
enum class Stage { kBeforeTrain, kAfterTrainIter, kAfterTrainEpoch, kAfterValEpoch, kAfterTrain };
const char* stage_name(Stage stage);  // "before_train" | "after_train_iter" | ...

// A Runner whose counters the loops advance. Derive from it and implement checkpoint_state,
// has_param_schedulers, work_dir and load_checkpoint (which calls restore_counters on resume).
class LoopRunner : public Runner {
 public:
  int64_t epoch() const override { return epoch_; }
  int64_t iter() const override { return iter_; }
  int64_t max_epochs() const override { return max_epochs_; }
  int64_t max_iters() const override { return max_iters_; }

  // For the loops.
  void set_counters(int64_t epoch, int64_t iter) {
    epoch_ = epoch;
    iter_ = iter;
  }
  void set_max(int64_t max_epochs, int64_t max_iters) {
    max_epochs_ = max_epochs;
    max_iters_ = max_iters;
  }

 protected:
  // As MMEngine's resume does: E = meta.epoch, I = meta.iter (each left alone when absent).
  void restore_counters(const Dict& ckpt);

 private:
  int64_t epoch_ = 0;
  int64_t iter_ = 0;
  int64_t max_epochs_ = 0;
  int64_t max_iters_ = 0;
};

struct LoopOptions {
  // Resume before before_train: resume && !load_from is auto-resume, resume && load_from
  // resumes from that file, !resume && load_from loads the weights only.
  bool resume = false;
  std::optional<std::string> load_from;

  // Validation: none unless `validate` is set. It returns the metrics of the validation at step K.
  std::function<Metrics(int64_t step)> validate;
  int64_t val_begin = 1;
  int64_t val_interval = 1;
  std::function<bool(int64_t step)> val_due;  // replaces the val_begin / val_interval rule

  // Called right after each hook stage returns.
  std::function<void(Stage stage)> on_stage;
};

// The user's forward / backward / optimizer step on one batch. EpochLoop passes the batch index in
// the epoch; IterLoop the index in the dataset (the iteration count modulo the dataset length).
using TrainStep = std::function<void(int64_t batch_idx)>;

class EpochLoop {
 public:
  EpochLoop(LoopRunner& runner, CheckpointHook& hook, int64_t max_epochs, int64_t iters_per_epoch,
            TrainStep step, LoopOptions options = {});
  void run();

  // The checkpoint hook.resume() loaded (absolute path), once run() got past it.
  const std::optional<std::string>& resumed_from() const { return resumed_from_; }
  // What run() is doing or last did: "join", "resume", a stage name, "train_step", "validate",
  // "after_run".
  const char* current_call() const { return current_call_; }

 private:
  void call(Stage stage, const std::function<void()>& fn);

  LoopRunner& runner_;
  CheckpointHook& hook_;
  int64_t max_epochs_;
  int64_t iters_per_epoch_;
  TrainStep step_;
  LoopOptions options_;
  std::optional<std::string> resumed_from_;
  const char* current_call_ = "none";
};

class IterLoop {
 public:
  IterLoop(LoopRunner& runner, CheckpointHook& hook, int64_t max_iters, int64_t iters_per_epoch,
           TrainStep step, LoopOptions options = {});
  void run();

  const std::optional<std::string>& resumed_from() const { return resumed_from_; }
  const char* current_call() const { return current_call_; }

 private:
  void call(Stage stage, const std::function<void()>& fn);

  LoopRunner& runner_;
  CheckpointHook& hook_;
  int64_t max_iters_;
  int64_t iters_per_epoch_;
  TrainStep step_;
  LoopOptions options_;
  std::optional<std::string> resumed_from_;
  const char* current_call_ = "none";
};

}  // namespace ckptledger
