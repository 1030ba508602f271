// Torch-native state in PyTorch's layout: a module's state_dict, any torch::optim optimizer's
// state_dict(), StepLR's state_dict() and the generators' RNG state, as the values of a checkpoint
// that Python's torch.load opens and torch.optim / torch.optim.lr_scheduler load as they are
// (docs/torch-state.md). TorchRunner (torch_runner.h) puts them together; use these functions
// directly in a Runner of your own.
//
// Every load validates the whole input before it changes anything: a state whose layout does not
// match the object (another optimizer, other group sizes, other shapes, a missing key) throws
// Error(kInvalidArgument) naming the key (e.g. `optimizer.state.3.exp_avg`) and leaves the object
// as it was — never a silent partial restore.
//
// Thread safety: none of their own; call them on the thread that owns the objects.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/schedulers/step_lr.h>

#include <string>
#include <vector>

#include "ckptledger/runner.h"

namespace ckptledger {

// ---- model
// ---------------------------------------------------------------------------------------

// Python's `model.state_dict()`: module by module, each one's parameters then its buffers, under
// the dotted names of named_parameters() / named_buffers(); detached, the live tensors.
Dict model_state_dict(const torch::nn::Module& model);

// What a load found that did not fit, each as PyTorch names it.
struct ModelLoadReport {
  std::vector<std::string> missing;     // the module's keys the state lacks
  std::vector<std::string> unexpected;  // the state's keys the module lacks
  std::vector<std::string> mismatched;  // "name: checkpoint [2, 3], model [3, 3]"
  bool clean() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
  std::string describe() const;  // one line listing all three; "" when clean
};

// Copies `state` into the module's parameters and buffers (in place, without autograd; the
// tensors' dtype is converted to the parameter's). strict: anything in the report throws
// Error(kInvalidArgument) listing it all and nothing is copied; not strict: the keys that fit are
// copied, the rest reported (MMEngine's load_state_dict(strict=False), which warns).
ModelLoadReport load_model_state_dict(torch::nn::Module& model, const Dict& state,
                                      bool strict = true);

// The weights of a checkpoint as MMEngine's loader finds them: its "state_dict", else its "model",
// else the dict itself (a bare `torch.save(model.state_dict())`), with a leading "module." (DDP's
// wrapper) removed from every key.
Dict checkpoint_weights(const Dict& checkpoint);

// ---- optimizer
// -----------------------------------------------------------------------------------

// PyTorch's `optimizer.state_dict()`: "state" maps the parameter's index (counted across the param
// groups, in order) to its state under PyTorch's names; "param_groups" lists each group's
// hyper-parameters under PyTorch's names (with Python's defaults for the options libtorch does not
// have: foreach None, maximize False, ...) and "params", its index list. `initial_lrs` (one per
// group, or empty) adds the "initial_lr" a PyTorch scheduler sets. Supported: SGD, Adam, AdamW,
// RMSprop, Adagrad, LBFGS; another optimizer throws Error(kInvalidArgument) naming it.
// The state tensors are the live ones.
Dict optimizer_state_dict(torch::optim::Optimizer& optimizer,
                          const std::vector<double>& initial_lrs = {});

// Restores what optimizer_state_dict wrote, or Python's `optimizer.state_dict()` of the same
// optimizer: every group's hyper-parameters (as Python's load_state_dict does) and every
// parameter's state (cloned, converted to the parameter's dtype). Refuses, naming the key: another
// group count or group sizes, a state entry for an index that does not exist, a missing or
// unexpected state key (an SGD state loaded into Adam), a shape that is not the parameter's, an
// option libtorch cannot honour (maximize, foreach true, capturable, fused, differentiable).
void load_optimizer_state_dict(torch::optim::Optimizer& optimizer, const Dict& state);

// The optimizer's class as PyTorch names it ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad",
// "LBFGS"); throws Error(kInvalidArgument) for any other optimizer.
std::string optimizer_kind(torch::optim::Optimizer& optimizer);

// ---- learning-rate schedulers
// --------------------------------------------------------------------

// PyTorch's StepLR `state_dict()` (step_size, gamma, base_lrs, last_epoch, verbose, _step_count,
// _get_lr_called_within_step, _last_lr). libtorch counts steps as PyTorch does less the step that
// PyTorch's constructor takes: libtorch's step count N is PyTorch's `_step_count` N and
// `last_epoch` N - 1, which give the same learning rates. `base_lrs`: the groups' learning rates
// before the first step (TorchRunner records them).
Dict step_lr_state_dict(torch::optim::StepLR& scheduler, torch::optim::Optimizer& optimizer,
                        const std::vector<double>& base_lrs);
// Restores the step count from `state` ("_step_count", checked against "last_epoch"); refuses a
// state whose step_size or gamma differ from the scheduler's, naming both values. Returns the
// state's base_lrs.
std::vector<double> load_step_lr_state_dict(torch::optim::StepLR& scheduler, const Dict& state);

// ---- random number generators
// --------------------------------------------------------------------

// {"torch": torch.get_rng_state(), "cuda": [torch.cuda.get_rng_state(i) per device]} as uint8
// tensors ("cuda" only when CUDA is available at run time).
Dict rng_state();
// Restores what rng_state() wrote (the "cuda" entries where there are as many devices); refuses
// a state of the wrong size or dtype.
void load_rng_state(const Dict& state);

}  // namespace ckptledger
