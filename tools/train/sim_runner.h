// SimRunner: the training job `ckptledger simulate` drives (docs/behaviour.md: simulate traces): a
// tiny real libtorch model (Linear 4->3, ReLU, Linear 3->2), SGD with momentum, a StepLR-equivalent
// scheduler stepped per iteration, and deterministic synthetic data.
//
// Determinism: the weights come from a fixed seed; the batch of iteration I is generated from
// (seed, I) alone, so no RNG state needs saving. A run resumed from a checkpoint (weights,
// momentum buffers, scheduler, counters) continues bitwise-identically to the uninterrupted run.
// Thread safety: one thread (the loop's).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ckptledger/loops.h"

namespace ckptledger {

struct SimRunnerOptions {
  std::string work_dir;  // absolute; created when missing
  bool param_scheduler = true;
  int64_t seed = 0;
  std::string experiment_name = "simulate";
  std::string cfg;  // recorded as meta.cfg
};

// A StepLR-equivalent: lr = base_lr * gamma ** (last_epoch // step_size), stepped once per
// iteration. state_dict() has PyTorch's keys.
struct StepLRState {
  int64_t step_size = 4;
  double gamma = 0.9;
  std::vector<double> base_lrs;
  int64_t last_epoch = 0;
  std::vector<double> last_lr;
};

class SimRunner : public LoopRunner {
 public:
  explicit SimRunner(SimRunnerOptions options);
  ~SimRunner() override;

  // One forward / backward / optimizer step (and a scheduler step) on the batch of iteration
  // iter().
  void train_step();

  std::string work_dir() const override { return options_.work_dir; }
  c10::impl::GenericDict checkpoint_state(bool with_optimizer, bool with_schedulers) override;
  bool has_param_schedulers() const override { return options_.param_scheduler; }
  c10::impl::GenericDict meta_extra() const override;
  void load_checkpoint(const c10::impl::GenericDict& ckpt, bool resume) override;

  // The model's weights, name -> tensor (for tests).
  c10::impl::GenericDict weights() const;

 private:
  struct Impl;
  SimRunnerOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckptledger
