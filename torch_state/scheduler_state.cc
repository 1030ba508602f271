// StepLR's state in PyTorch's layout (torch_state.h).
//
// libtorch 1.13's StepLR keeps its step count (LRScheduler::step_count_, protected) and its
// step_size_ and gamma_ (private) without accessors. They are reached here by the two means the
// language allows without changing libtorch: a protected member through a pointer to member taken
// in a derived class, and private members through pointers to members named in an explicit
// template instantiation (where access checks do not apply, [temp.explicit]/14 in C++17). Both are
// checked at compile time against the members' declared types, so a libtorch that renames them
// fails to build rather than misbehave.
#include <torch/optim/optimizer.h>
#include <torch/optim/schedulers/step_lr.h>

#include <cmath>
#include <string>
#include <vector>

#include "ckptledger/torch_state.h"
#include "torch_state/ivalue_read.h"

namespace ckptledger {
namespace {

using namespace torch_state;  // NOLINT: the checked readers

// The step count: protected in LRScheduler.
struct StepCount : torch::optim::LRScheduler {
  static unsigned& of(torch::optim::LRScheduler& s) { return s.*(&StepCount::step_count_); }
};

// Private members: an explicit instantiation of Rob defines the friend get(Tag), which returns
// the pointer to member named in the instantiation's arguments.
template <class Tag, typename Tag::type Member>
struct Rob {
  friend typename Tag::type get(Tag) { return Member; }
};
struct StepSizeTag {
  using type = const unsigned torch::optim::StepLR::*;
  friend type get(StepSizeTag);
};
struct GammaTag {
  using type = const double torch::optim::StepLR::*;
  friend type get(GammaTag);
};
template struct Rob<StepSizeTag, &torch::optim::StepLR::step_size_>;
template struct Rob<GammaTag, &torch::optim::StepLR::gamma_>;

unsigned step_size(const torch::optim::StepLR& s) { return s.*get(StepSizeTag{}); }
double gamma_of(const torch::optim::StepLR& s) { return s.*get(GammaTag{}); }

std::vector<double> current_lrs(torch::optim::Optimizer& optimizer) {
  std::vector<double> lrs;
  for (auto& g : optimizer.param_groups()) lrs.push_back(g.options().get_lr());
  return lrs;
}

}  // namespace

Dict step_lr_state_dict(torch::optim::StepLR& scheduler, torch::optim::Optimizer& optimizer,
                        const std::vector<double>& base_lrs) {
  const int64_t count = StepCount::of(scheduler);
  Dict d = str_dict();
  d.insert("step_size", static_cast<int64_t>(step_size(scheduler)));
  d.insert("gamma", gamma_of(scheduler));
  d.insert("base_lrs", double_list(base_lrs));
  d.insert("last_epoch", count - 1);
  d.insert("verbose", false);
  d.insert("_step_count", count);
  d.insert("_get_lr_called_within_step", false);
  d.insert("_last_lr", double_list(current_lrs(optimizer)));
  return d;
}

std::vector<double> load_step_lr_state_dict(torch::optim::StepLR& scheduler, const Dict& state) {
  const std::string w = "param_schedulers.StepLR";
  const int64_t saved_step_size = as_int(require(state, "step_size", w), w + ".step_size");
  if (saved_step_size != static_cast<int64_t>(step_size(scheduler))) {
    refuse(w + ".step_size", std::to_string(saved_step_size) + " in the checkpoint, " +
                                 std::to_string(step_size(scheduler)) + " in the scheduler");
  }
  const double saved_gamma = as_double(require(state, "gamma", w), w + ".gamma");
  if (saved_gamma != gamma_of(scheduler)) {
    refuse(w + ".gamma", std::to_string(saved_gamma) + " in the checkpoint, " +
                             std::to_string(gamma_of(scheduler)) + " in the scheduler");
  }
  const int64_t last_epoch = as_int(require(state, "last_epoch", w), w + ".last_epoch");
  // PyTorch's own files may lack _step_count; last_epoch + 1 is what it counts.
  int64_t count = last_epoch + 1;
  if (std::optional<c10::IValue> v = find(state, "_step_count")) {
    count = as_int(*v, w + "._step_count");
    if (count != last_epoch + 1) {
      refuse(w + "._step_count", std::to_string(count) + " is not last_epoch + 1 (" +
                                     std::to_string(last_epoch + 1) + ")");
    }
  }
  if (count < 0 || count > static_cast<int64_t>(~0u)) {
    refuse(w + ".last_epoch", "out of range: " + std::to_string(last_epoch));
  }
  std::vector<double> base_lrs = as_doubles(require(state, "base_lrs", w), w + ".base_lrs");
  StepCount::of(scheduler) = static_cast<unsigned>(count);
  return base_lrs;
}

}  // namespace ckptledger
