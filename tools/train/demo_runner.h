// DemoRunner: the training job of `ckptledger demo`: a real (small) classification problem.
//
// Data: a 3-arm 2-D spiral (CS231n's), generated from the seed alone, shuffled once and split 80/20
// into train / validation. Model: MLP 2 -> H -> H -> 3 (ReLU). Optimizer: SGD, momentum 0.9,
// Nesterov, weight decay. LR: cosine annealing per epoch (PyTorch's CosineAnnealingLR, closed
// form), stepped at the end of each epoch's last batch (MMEngine's ParamSchedulerHook runs before
// the CheckpointHook, so a checkpoint holds the stepped scheduler). Validation: accuracy and mean
// cross-entropy on the validation split.
//
// Determinism: torch uses one thread; the weights come from the seed; the batch order of epoch E
// is a permutation drawn from (seed, E) alone, so no RNG state needs saving. A run resumed from an
// epoch checkpoint (weights, momentum buffers, scheduler, counters) continues bitwise-identically
// to the uninterrupted run.
// Thread safety: one thread (the loop's).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "ckptledger/loops.h"

namespace ckptledger {

struct DemoSize {
  std::string name;  // "small" | "full"
  int64_t points_per_class = 0;
  int64_t hidden = 0;
  int64_t epochs = 0;
  int64_t batch_size = 0;
  int64_t kill_epoch = 0;  // 1-based: the demo SIGKILLs its training in the middle of this epoch
};
// "small" or "full"; throws Error(kInvalidArgument) otherwise.
DemoSize demo_size(const std::string& name);

class DemoRunner : public LoopRunner {
 public:
  DemoRunner(std::string work_dir, const DemoSize& size, int64_t seed);
  ~DemoRunner() override;

  int64_t iters_per_epoch() const;
  int64_t train_count() const;
  int64_t val_count() const;
  std::string describe() const;  // one line: data, model, optimizer, schedule

  // One forward / backward / optimizer step on batch `batch_idx` of the current epoch (the
  // scheduler steps after the epoch's last batch). Returns the batch's training loss.
  double train_step(int64_t batch_idx);
  // Accuracy and loss on the validation split, in that order ("acc", "loss").
  Metrics validate();
  double lr() const;

  std::string work_dir() const override { return work_dir_; }
  c10::impl::GenericDict checkpoint_state(bool with_optimizer, bool with_schedulers) override;
  bool has_param_schedulers() const override { return true; }
  c10::impl::GenericDict meta_extra() const override;
  void load_checkpoint(const c10::impl::GenericDict& ckpt, bool resume) override;

 private:
  struct Impl;
  std::string work_dir_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckptledger
