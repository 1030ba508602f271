// TorchRunner: a complete Runner over a libtorch module and optimizer, so that a plain libtorch
// loop needs no checkpoint code of its own (docs/torch-state.md).
//
//   ckptledger::TorchRunner runner("work_dirs/mlp", *model, optimizer);
//   runner.add_scheduler(step_lr);                  // param_schedulers[0]
//   runner.add_stateful("data_loader", loader);     // any ckptledger::Stateful
//   ckptledger::EpochLoop(runner, hook, epochs, iters_per_epoch, train_step, options).run();
//
// A checkpoint it writes holds, in PyTorch's layout (torch_state.h):
//   "state_dict"        model_state_dict(model)
//   "optimizer"         optimizer_state_dict(optimizer), with "initial_lr" once a StepLR is added
//   "param_schedulers"  each scheduler's state_dict(), in the order added
//   "rng_state"         rng_state(): CPU (and CUDA) generators
//   <key>               each Stateful's state_dict(), under the key it was added with
// plus the hook's "meta" (with meta() merged in) and "message_hub".
//
// Loading: the weights always (checkpoint_weights(): "state_dict", "model" or the bare dict,
// without DDP's "module." prefix), strictly unless set_strict(false) (then mismatches are logged
// as a warning and the rest loads, as MMEngine does). On resume also the counters (meta.epoch and
// meta.iter), the optimizer, every added scheduler and Stateful (each must be in the checkpoint:
// a missing one is an error naming its key, unless the Stateful was added as optional) and the RNG
// state (a checkpoint without one, such as MMEngine's, leaves the generators as they are, with a
// warning). All keys are checked to be present before anything is loaded; each part validates
// itself before it changes anything.
//
// Lifetime: the model, optimizer, schedulers and statefuls are the caller's and must outlive the
// runner. Thread safety: the hook calls the runner on the training thread only.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/schedulers/step_lr.h>

#include <memory>
#include <string>
#include <vector>

#include "ckptledger/log.h"
#include "ckptledger/loops.h"
#include "ckptledger/stateful.h"

namespace ckptledger {

class TorchRunner : public LoopRunner {
 public:
  // `work_dir` is made absolute and created when missing.
  TorchRunner(const std::string& work_dir, torch::nn::Module& model,
              torch::optim::Optimizer& optimizer);
  ~TorchRunner() override;
  TorchRunner(const TorchRunner&) = delete;
  TorchRunner& operator=(const TorchRunner&) = delete;

  // Add schedulers before the first optimizer step: the groups' learning rates then are the
  // schedulers' base_lrs.
  TorchRunner& add_scheduler(torch::optim::StepLR& scheduler);
  // A scheduler of your own (or another libtorch scheduler, wrapped): its state_dict() goes into
  // param_schedulers at this position.
  TorchRunner& add_scheduler(Stateful& scheduler);
  // `key` must not be one of the checkpoint's own keys (meta, state_dict, optimizer,
  // param_schedulers, message_hub, rng_state) or taken: Error(kInvalidArgument). A resume from a
  // checkpoint without `key` is an error, unless `optional`: then the object is left as it is
  // and a warning logged (a file written by another program, e.g. MMEngine's).
  TorchRunner& add_stateful(const std::string& key, Stateful& object, bool optional = false);
  TorchRunner& set_strict(bool strict);      // default true
  TorchRunner& set_save_rng(bool save_rng);  // default true
  TorchRunner& set_log(LogSink log);         // warnings of loads; default: stderr
  Dict& meta();                              // extra meta keys (seed, experiment_name, ...)

  std::string work_dir() const override;
  Dict checkpoint_state(bool with_optimizer, bool with_schedulers) override;
  bool has_param_schedulers() const override;
  Dict meta_extra() const override;
  void load_checkpoint(const Dict& ckpt, bool resume) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckptledger
