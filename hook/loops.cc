#include "ckptledger/loops.h"

#include <algorithm>
#include <utility>

#include "ckptledger/distributed.h"
#include "ckptledger/error.h"

namespace ckptledger {

const char* stage_name(Stage stage) {
  switch (stage) {
    case Stage::kBeforeTrain:
      return "before_train";
    case Stage::kAfterTrainIter:
      return "after_train_iter";
    case Stage::kAfterTrainEpoch:
      return "after_train_epoch";
    case Stage::kAfterValEpoch:
      return "after_val_epoch";
    case Stage::kAfterTrain:
      return "after_train";
  }
  return "unknown";
}

void LoopRunner::restore_counters(const c10::impl::GenericDict& ckpt) {
  if (!ckpt.contains("meta") || !ckpt.at("meta").isGenericDict()) return;
  const c10::impl::GenericDict meta = ckpt.at("meta").toGenericDict();
  if (meta.contains("epoch") && meta.at("epoch").isInt()) epoch_ = meta.at("epoch").toInt();
  if (meta.contains("iter") && meta.at("iter").isInt()) iter_ = meta.at("iter").toInt();
}

namespace {

void check_lengths(int64_t max_steps, int64_t iters_per_epoch, const char* max_name) {
  if (max_steps < 0) {
    throw_error(ErrorCode::kInvalidArgument,
                std::string("training loop: ") + max_name + " must be >= 0");
  }
  if (iters_per_epoch < 1) {
    throw_error(ErrorCode::kInvalidArgument, "training loop: iters_per_epoch must be >= 1");
  }
}

// MMEngine's rule: due when step >= val_begin and step is a multiple of val_interval or the last
// step, unless the options replace it.
bool validation_due(const LoopOptions& o, int64_t step, int64_t max_step) {
  if (!o.validate) return false;
  if (o.val_due) return o.val_due(step);
  return step >= o.val_begin &&
         ((o.val_interval > 0 && step % o.val_interval == 0) || step == max_step);
}

// The runner's job of several ranks (Runner::job): the hook joins it unless it has joined a group
// already, which must then be as large.
void join_job(CheckpointHook& hook, const Runner& runner) {
  const JobGroup* job = runner.job();
  if (!job || !job->group || job->world_size <= 1) return;
  if (hook.world_size() == 1) {
    hook.join(job->group, job->store);
  } else if (hook.world_size() != job->world_size) {
    throw_error(ErrorCode::kInvalidArgument,
                "training loop: the hook joined a group of " + std::to_string(hook.world_size()) +
                    " ranks, the runner's job has " + std::to_string(job->world_size) + " ranks");
  }
}

std::optional<std::string> maybe_resume(CheckpointHook& hook, Runner& runner,
                                        const LoopOptions& o) {
  if (!o.resume && !o.load_from) return std::nullopt;
  return hook.resume(runner, o.resume, o.load_from);
}

}  // namespace

// ---- EpochLoop ------------------------------------------------------------------------------

EpochLoop::EpochLoop(LoopRunner& runner, CheckpointHook& hook, int64_t max_epochs,
                     int64_t iters_per_epoch, TrainStep step, LoopOptions options)
    : runner_(runner),
      hook_(hook),
      max_epochs_(max_epochs),
      iters_per_epoch_(iters_per_epoch),
      step_(std::move(step)),
      options_(std::move(options)) {
  check_lengths(max_epochs, iters_per_epoch, "max_epochs");
}

void EpochLoop::call(Stage stage, const std::function<void()>& fn) {
  current_call_ = stage_name(stage);
  fn();
  if (options_.on_stage) options_.on_stage(stage);
}

void EpochLoop::run() {
  runner_.set_max(max_epochs_, max_epochs_ * iters_per_epoch_);
  runner_.set_counters(0, 0);
  current_call_ = "join";
  join_job(hook_, runner_);
  current_call_ = "resume";
  resumed_from_ = maybe_resume(hook_, runner_, options_);

  call(Stage::kBeforeTrain, [&] { hook_.before_train(runner_); });
  // Nothing due is skipped: a validation due where the resumed checkpoint was written, whose
  // outcome the ledger does not hold (the process died before or during it), runs now.
  if (resumed_from_ && options_.resume && runner_.epoch() > 0 &&
      runner_.iter() == runner_.epoch() * iters_per_epoch_ &&
      validation_due(options_, runner_.epoch(), max_epochs_) &&
      !hook_.validation_complete(runner_.epoch(), runner_.iter())) {
    current_call_ = "validate";
    const Metrics metrics = options_.validate(runner_.epoch());
    call(Stage::kAfterValEpoch, [&] { hook_.after_val_epoch(runner_, metrics); });
  }
  while (runner_.epoch() < max_epochs_) {
    const int64_t epoch = runner_.epoch();
    // Batches of this epoch already trained before a mid-epoch checkpoint (0 otherwise).
    const int64_t done =
        std::clamp<int64_t>(runner_.iter() - epoch * iters_per_epoch_, 0, iters_per_epoch_);
    for (int64_t batch_idx = done; batch_idx < iters_per_epoch_; ++batch_idx) {
      current_call_ = "train_step";
      step_(batch_idx);
      call(Stage::kAfterTrainIter, [&] { hook_.after_train_iter(runner_, batch_idx); });
      runner_.set_counters(epoch, runner_.iter() + 1);
    }
    call(Stage::kAfterTrainEpoch, [&] { hook_.after_train_epoch(runner_); });
    runner_.set_counters(epoch + 1, runner_.iter());

    const int64_t completed = runner_.epoch();
    if (validation_due(options_, completed, max_epochs_)) {
      current_call_ = "validate";
      const Metrics metrics = options_.validate(completed);
      call(Stage::kAfterValEpoch, [&] { hook_.after_val_epoch(runner_, metrics); });
    }
  }
  call(Stage::kAfterTrain, [&] { hook_.after_train(runner_); });
  current_call_ = "after_run";
  hook_.after_run(runner_);
}

// ---- IterLoop -------------------------------------------------------------------------------

IterLoop::IterLoop(LoopRunner& runner, CheckpointHook& hook, int64_t max_iters,
                   int64_t iters_per_epoch, TrainStep step, LoopOptions options)
    : runner_(runner),
      hook_(hook),
      max_iters_(max_iters),
      iters_per_epoch_(iters_per_epoch),
      step_(std::move(step)),
      options_(std::move(options)) {
  check_lengths(max_iters, iters_per_epoch, "max_iters");
}

void IterLoop::call(Stage stage, const std::function<void()>& fn) {
  current_call_ = stage_name(stage);
  fn();
  if (options_.on_stage) options_.on_stage(stage);
}

void IterLoop::run() {
  runner_.set_max(1, max_iters_);
  runner_.set_counters(0, 0);
  current_call_ = "join";
  join_job(hook_, runner_);
  current_call_ = "resume";
  resumed_from_ = maybe_resume(hook_, runner_, options_);

  call(Stage::kBeforeTrain, [&] { hook_.before_train(runner_); });
  // Nothing due is skipped (see EpochLoop::run).
  if (resumed_from_ && options_.resume && runner_.iter() > 0 &&
      validation_due(options_, runner_.iter(), max_iters_) &&
      !hook_.validation_complete(runner_.epoch(), runner_.iter())) {
    current_call_ = "validate";
    const Metrics metrics = options_.validate(runner_.iter());
    call(Stage::kAfterValEpoch, [&] { hook_.after_val_epoch(runner_, metrics); });
  }
  // The dataloader position: after a resume, the I batches already consumed are skipped.
  int64_t position = runner_.iter();
  while (runner_.iter() < max_iters_) {
    current_call_ = "train_step";
    step_(position % iters_per_epoch_);
    ++position;
    const int64_t iter = runner_.iter();
    call(Stage::kAfterTrainIter, [&] { hook_.after_train_iter(runner_, iter); });
    runner_.set_counters(runner_.epoch(), iter + 1);

    const int64_t completed = runner_.iter();
    if (validation_due(options_, completed, max_iters_)) {
      current_call_ = "validate";
      const Metrics metrics = options_.validate(completed);
      call(Stage::kAfterValEpoch, [&] { hook_.after_val_epoch(runner_, metrics); });
    }
  }
  call(Stage::kAfterTrainEpoch, [&] { hook_.after_train_epoch(runner_); });
  call(Stage::kAfterTrain, [&] { hook_.after_train(runner_); });
  current_call_ = "after_run";
  hook_.after_run(runner_);
}

}  // namespace ckptledger
