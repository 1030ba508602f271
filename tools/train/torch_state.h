// PyTorch-compatible state dicts for the reference training jobs (SimRunner, DemoRunner): the
// pieces of `optimizer.state_dict()` / `scheduler.state_dict()` that libtorch does not write in
// Python's layout, so that a checkpoint of ours loads in Python and resumes bitwise-identically.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Dict.h>
#include <ATen/core/ivalue.h>
#include <torch/nn/module.h>
#include <torch/optim/sgd.h>

namespace ckptledger::torch_state {

using GenericDict = c10::impl::GenericDict;
using GenericList = c10::impl::GenericList;

GenericDict str_dict();  // Dict[str, Any]
GenericList double_list(const std::vector<double>& v);
std::vector<double> to_doubles(const c10::IValue& v);  // ints and floats; empty if not a list
std::optional<c10::IValue> get(const GenericDict& d, const std::string& key);

// Copies the checkpoint's "state_dict" entries into the model's parameters of the same name and
// shape (in place, without autograd); other entries are ignored.
void load_weights(torch::nn::Module& model, const GenericDict& ckpt);

// The options of the optimizer's only param group.
torch::optim::SGDOptions& sgd_options(torch::optim::SGD& opt);

// PyTorch's `optimizer.state_dict()` of an SGD with one param group: momentum buffers keyed by
// parameter index, the group's options (and `initial_lr` when a scheduler set one).
GenericDict sgd_state_dict(torch::optim::SGD& opt, std::optional<double> initial_lr);
// Restores what sgd_state_dict() wrote (or Python's equivalent): momentum buffers by parameter
// index and the group's lr; unknown or malformed entries are ignored.
void load_sgd_state_dict(torch::optim::SGD& opt, const GenericDict& sd);

}  // namespace ckptledger::torch_state
