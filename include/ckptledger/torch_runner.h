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
// A job of several ranks (data parallelism, docs/distributed.md):
//
//   std::optional<ckptledger::JobGroup> job = ckptledger::join_from_env();  // torchrun's env
//   if (job) runner.set_job(*job);        // every rank: the weights become rank 0's
//   ... loss.backward(); runner.allreduce_gradients(); optimizer.step();
//   ckptledger::IterLoop(runner, hook, ...).run();   // the loop joins the hook to runner.job()
//
// set_job keeps a copy of the job and replaces every rank's parameters and buffers by rank 0's
// (one broadcast, as DDP does at construction), so the replicas start equal; a JobGroup of one
// rank or without a group is no job (job() is nullptr, nothing is exchanged). Every rank calls it,
// with the same model. allreduce_gradients sums every parameter's gradient over the job (one
// all-reduce; with `average`, then divides by the world size: DDP's mean); without a job it does
// nothing. A parameter that does not require grad is left out. A gradient that some ranks lack
// counts as zeros there, and afterwards every rank holds the sum; a parameter that no rank has a
// gradient for keeps none on every rank (DDP's rule for a globally unused parameter), so the
// optimizer skips it everywhere and the replicas stay equal. Buffers are made equal by set_job
// only: ones that training changes (BatchNorm's running statistics) follow each rank's own data
// afterwards (DDP's broadcast_buffers is not done), and a "main" checkpoint holds rank 0's.
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

#include "ckptledger/distributed.h"
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
  // The job of several ranks this runner trains in (see above): every rank calls it, before
  // training. Error(kIOError) when the broadcast fails.
  TorchRunner& set_job(const JobGroup& job);
  // Sums (average: then divides by the world size) every parameter's gradient over the job, in
  // place; a no-op without a job. Call it between backward and the optimizer step, on every rank.
  void allreduce_gradients(bool average = true);

  std::string work_dir() const override;
  Dict checkpoint_state(bool with_optimizer, bool with_schedulers) override;
  bool has_param_schedulers() const override;
  Dict meta_extra() const override;
  void load_checkpoint(const Dict& ckpt, bool resume) override;
  const JobGroup* job() const override;  // nullptr without set_job or with a job of one rank

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckptledger
