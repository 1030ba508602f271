// Optimizer state in PyTorch's layout (torch_state.h). One OptimizerLayout per torch::optim
// optimizer says how its group options and its per-parameter state are named in PyTorch 1.13's
// `state_dict()`, in PyTorch's key order; save and load are written once over the layouts.
#include <ATen/ops/scalar_tensor.h>
#include <c10/util/string_utils.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/lbfgs.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <tuple>
#include <typeinfo>
#include <utility>

#include "ckptledger/error.h"
#include "ckptledger/torch_state.h"
#include "torch_state/ivalue_read.h"

namespace ckptledger {
namespace {

using namespace torch_state;  // NOLINT: the checked readers
using torch::optim::OptimizerOptions;
using torch::optim::OptimizerParamState;

// libtorch keys an optimizer's state by the parameter's TensorImpl address.
std::string state_key(const at::Tensor& p) { return c10::guts::to_string(p.unsafeGetTensorImpl()); }

// Options PyTorch has and libtorch 1.13 does not: written with the value libtorch's behaviour
// equals, refused on load when a file asks for another (libtorch cannot honour it).
struct PythonFlag {
  const char* key;
  bool none_is_default;  // foreach: None (or False) is libtorch's behaviour
};

// A state tensor for `param`: its shape must be the parameter's (unless `any_shape`); it is
// copied to the parameter's dtype and device.
at::Tensor state_tensor(const GenericDict& e, const std::string& key, const at::Tensor& param,
                        const std::string& where, bool any_shape = false) {
  at::Tensor t = as_tensor(require(e, key, where), where + "." + key);
  if (!any_shape && t.sizes() != param.sizes()) {
    refuse(where + "." + key, "shape " + shape_string(t.sizes()) + ", the parameter's is " +
                                  shape_string(param.sizes()));
  }
  return t.to(param.device(), param.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
}

at::Tensor step_tensor(int64_t step) { return at::scalar_tensor(double(step), at::kFloat); }

class OptimizerLayout {
 public:
  OptimizerLayout(const char* name, std::vector<PythonFlag> flags)
      : name_(name), flags_(std::move(flags)) {}
  virtual ~OptimizerLayout() = default;
  const char* name() const { return name_; }
  // PyTorch's options that libtorch lacks, written as libtorch behaves and checked on load.
  void write_flags(GenericDict& g) const;
  void check_flags(const GenericDict& g, const std::string& where) const;
  virtual bool matches(const OptimizerOptions& o) const = 0;
  // The group's hyper-parameters, in PyTorch's order ("params" is added by the caller).
  virtual void write_group(const OptimizerOptions& o, GenericDict& g) const = 0;
  // New options from a saved group; `current` supplies what the group does not say.
  virtual std::unique_ptr<OptimizerOptions> read_group(const GenericDict& g,
                                                       const OptimizerOptions& current,
                                                       const std::string& where) const = 0;
  virtual void write_state(const OptimizerParamState& s, GenericDict& e) const = 0;
  // The keys a state entry may hold under `o`, and those it must hold.
  virtual std::vector<std::string> state_keys(const OptimizerOptions& o, bool required) const = 0;
  // nullptr: the entry holds no state (SGD's `momentum_buffer: None`).
  virtual std::unique_ptr<OptimizerParamState> read_state(const GenericDict& e,
                                                          const at::Tensor& param,
                                                          const OptimizerOptions& o,
                                                          const std::string& where) const = 0;
  // LBFGS keeps one state for all parameters, under the first.
  virtual bool one_state() const { return false; }
  // Adagrad creates every parameter's state with the optimizer: a file without one is damaged.
  virtual bool state_for_every_param() const { return false; }

 private:
  const char* name_;
  std::vector<PythonFlag> flags_;
};

void OptimizerLayout::write_flags(GenericDict& g) const {
  for (const PythonFlag& f : flags_) {
    if (f.none_is_default) {
      g.insert(f.key, c10::IValue());
    } else {
      g.insert(f.key, false);
    }
  }
}

void OptimizerLayout::check_flags(const GenericDict& g, const std::string& where) const {
  for (const PythonFlag& f : flags_) {
    std::optional<c10::IValue> v = find(g, f.key);
    if (!v || v->isNone()) continue;
    if (as_bool(*v, where + "." + f.key)) {
      refuse(where + "." + f.key, std::string("True is not supported by libtorch's ") + name_);
    }
  }
}

// One group option: its PyTorch key, how it is written from libtorch's options and read back.
template <class Opt>
struct Option {
  const char* key;
  c10::IValue (*write)(const Opt& o);
  void (*read)(Opt& o, const GenericDict& g, const std::string& where);
};
// The common case: an option libtorch names as PyTorch does, read as `getter` converts it.
// clang-format off
#define CKPT_OPTION(Opt, name, getter)                                              \
  Option<Opt> {                                                                     \
    #name,                                                                          \
    [](const Opt& o) { return c10::IValue(o.name()); },                             \
    [](Opt& o, const GenericDict& g, const std::string& w) { o.name(getter(g, #name, w)); } \
  }
// clang-format on

// The layouts of one libtorch options class: the group options are its table, in PyTorch's order,
// followed by the PyTorch-only flags.
template <class Opt>
class TypedLayout : public OptimizerLayout {
 public:
  TypedLayout(const char* name, std::vector<PythonFlag> flags, std::vector<Option<Opt>> options)
      : OptimizerLayout(name, std::move(flags)), options_(std::move(options)) {}
  bool matches(const OptimizerOptions& o) const override {
    return dynamic_cast<const Opt*>(&o) != nullptr;
  }
  void write_group(const OptimizerOptions& base, GenericDict& g) const override {
    for (const Option<Opt>& option : options_) {
      g.insert(option.key, option.write(static_cast<const Opt&>(base)));
    }
    this->write_flags(g);
  }
  std::unique_ptr<OptimizerOptions> read_group(const GenericDict& g, const OptimizerOptions& cur,
                                               const std::string& w) const override {
    this->check_flags(g, w);
    auto o = std::make_unique<Opt>(static_cast<const Opt&>(cur));
    for (const Option<Opt>& option : options_) option.read(*o, g, w);
    return o;
  }

 private:
  std::vector<Option<Opt>> options_;
};

// ---- SGD
// -----------------------------------------------------------------------------------------

class SgdLayout final : public TypedLayout<torch::optim::SGDOptions> {
  using Opt = torch::optim::SGDOptions;
  using State = torch::optim::SGDParamState;

 public:
  SgdLayout()
      : TypedLayout(
            "SGD", {{"maximize", false}, {"foreach", true}, {"differentiable", false}},
            {CKPT_OPTION(Opt, lr, get_double), CKPT_OPTION(Opt, momentum, get_double),
             CKPT_OPTION(Opt, dampening, get_double), CKPT_OPTION(Opt, weight_decay, get_double),
             CKPT_OPTION(Opt, nesterov, get_bool)}) {}
  void write_state(const OptimizerParamState& base, GenericDict& e) const override {
    e.insert("momentum_buffer", static_cast<const State&>(base).momentum_buffer());
  }
  std::vector<std::string> state_keys(const OptimizerOptions&, bool) const override {
    return {"momentum_buffer"};
  }
  std::unique_ptr<OptimizerParamState> read_state(const GenericDict& e, const at::Tensor& p,
                                                  const OptimizerOptions&,
                                                  const std::string& w) const override {
    if (require(e, "momentum_buffer", w).isNone()) return nullptr;
    auto s = std::make_unique<State>();
    s->momentum_buffer(state_tensor(e, "momentum_buffer", p, w));
    return s;
  }
};

// ---- Adam and AdamW (one state layout; the options differ in PyTorch's flags)
// --------------------

template <class Opt, class State>
class AdamFamilyLayout final : public TypedLayout<Opt> {
 public:
  AdamFamilyLayout(const char* name, std::vector<PythonFlag> flags)
      : TypedLayout<Opt>(
            name, std::move(flags),
            {CKPT_OPTION(Opt, lr, get_double),
             Option<Opt>{"betas",
                         [](const Opt& o) {
                           return c10::IValue(c10::ivalue::Tuple::create(std::get<0>(o.betas()),
                                                                         std::get<1>(o.betas())));
                         },
                         [](Opt& o, const GenericDict& g, const std::string& w) {
                           std::vector<double> b = as_doubles(require(g, "betas", w), w + ".betas");
                           if (b.size() != 2) refuse(w + ".betas", "expected 2 values");
                           o.betas(std::make_tuple(b[0], b[1]));
                         }},
             CKPT_OPTION(Opt, eps, get_double), CKPT_OPTION(Opt, weight_decay, get_double),
             CKPT_OPTION(Opt, amsgrad, get_bool)}) {}
  void write_state(const OptimizerParamState& base, GenericDict& e) const override {
    const auto& s = static_cast<const State&>(base);
    e.insert("step", step_tensor(s.step()));
    e.insert("exp_avg", s.exp_avg());
    e.insert("exp_avg_sq", s.exp_avg_sq());
    if (s.max_exp_avg_sq().defined()) e.insert("max_exp_avg_sq", s.max_exp_avg_sq());
  }
  std::vector<std::string> state_keys(const OptimizerOptions& base, bool) const override {
    std::vector<std::string> keys = {"step", "exp_avg", "exp_avg_sq"};
    if (static_cast<const Opt&>(base).amsgrad()) keys.push_back("max_exp_avg_sq");
    return keys;
  }
  std::unique_ptr<OptimizerParamState> read_state(const GenericDict& e, const at::Tensor& p,
                                                  const OptimizerOptions& base,
                                                  const std::string& w) const override {
    auto s = std::make_unique<State>();
    s->step(get_int(e, "step", w));
    s->exp_avg(state_tensor(e, "exp_avg", p, w));
    s->exp_avg_sq(state_tensor(e, "exp_avg_sq", p, w));
    if (static_cast<const Opt&>(base).amsgrad()) {
      s->max_exp_avg_sq(state_tensor(e, "max_exp_avg_sq", p, w));
    }
    return s;
  }
};

// ---- RMSprop
// -------------------------------------------------------------------------------------

class RmspropLayout final : public TypedLayout<torch::optim::RMSpropOptions> {
  using Opt = torch::optim::RMSpropOptions;
  using State = torch::optim::RMSpropParamState;

 public:
  RmspropLayout()
      : TypedLayout(
            "RMSprop", {{"foreach", true}, {"maximize", false}, {"differentiable", false}},
            {CKPT_OPTION(Opt, lr, get_double), CKPT_OPTION(Opt, momentum, get_double),
             CKPT_OPTION(Opt, alpha, get_double), CKPT_OPTION(Opt, eps, get_double),
             CKPT_OPTION(Opt, centered, get_bool), CKPT_OPTION(Opt, weight_decay, get_double)}) {}
  void write_state(const OptimizerParamState& base, GenericDict& e) const override {
    const auto& s = static_cast<const State&>(base);
    e.insert("step", s.step());
    e.insert("square_avg", s.square_avg());
    if (s.momentum_buffer().defined()) e.insert("momentum_buffer", s.momentum_buffer());
    if (s.grad_avg().defined()) e.insert("grad_avg", s.grad_avg());
  }
  std::vector<std::string> state_keys(const OptimizerOptions& base, bool) const override {
    const auto& o = static_cast<const Opt&>(base);
    std::vector<std::string> keys = {"step", "square_avg"};
    if (o.momentum() > 0) keys.push_back("momentum_buffer");
    if (o.centered()) keys.push_back("grad_avg");
    return keys;
  }
  std::unique_ptr<OptimizerParamState> read_state(const GenericDict& e, const at::Tensor& p,
                                                  const OptimizerOptions& base,
                                                  const std::string& w) const override {
    const auto& o = static_cast<const Opt&>(base);
    auto s = std::make_unique<State>();
    s->step(get_int(e, "step", w));
    s->square_avg(state_tensor(e, "square_avg", p, w));
    if (o.momentum() > 0) s->momentum_buffer(state_tensor(e, "momentum_buffer", p, w));
    if (o.centered()) s->grad_avg(state_tensor(e, "grad_avg", p, w));
    return s;
  }
};

// ---- Adagrad
// -------------------------------------------------------------------------------------

class AdagradLayout final : public TypedLayout<torch::optim::AdagradOptions> {
  using Opt = torch::optim::AdagradOptions;
  using State = torch::optim::AdagradParamState;

 public:
  AdagradLayout()
      : TypedLayout("Adagrad", {{"foreach", true}, {"maximize", false}},
                    {CKPT_OPTION(Opt, lr, get_double), CKPT_OPTION(Opt, lr_decay, get_double),
                     CKPT_OPTION(Opt, eps, get_double), CKPT_OPTION(Opt, weight_decay, get_double),
                     CKPT_OPTION(Opt, initial_accumulator_value, get_double)}) {}
  bool state_for_every_param() const override { return true; }
  void write_state(const OptimizerParamState& base, GenericDict& e) const override {
    const auto& s = static_cast<const State&>(base);
    e.insert("step", step_tensor(s.step()));
    e.insert("sum", s.sum());
  }
  std::vector<std::string> state_keys(const OptimizerOptions&, bool) const override {
    return {"step", "sum"};
  }
  std::unique_ptr<OptimizerParamState> read_state(const GenericDict& e, const at::Tensor& p,
                                                  const OptimizerOptions&,
                                                  const std::string& w) const override {
    auto s = std::make_unique<State>();
    s->step(get_int(e, "step", w));
    s->sum(state_tensor(e, "sum", p, w));
    return s;
  }
};

// ---- LBFGS
// ---------------------------------------------------------------------------------------

class LbfgsLayout final : public TypedLayout<torch::optim::LBFGSOptions> {
  using Opt = torch::optim::LBFGSOptions;
  using State = torch::optim::LBFGSParamState;

  static GenericList tensors(const std::deque<at::Tensor>& d) {
    GenericList l = any_list();
    for (const at::Tensor& t : d) l.push_back(t);
    return l;
  }
  static std::deque<at::Tensor> read_tensors(const GenericDict& e, const std::string& key,
                                             const at::Tensor& p, const std::string& w) {
    std::deque<at::Tensor> out;
    std::vector<c10::IValue> items = as_list(require(e, key, w), w + "." + key);
    for (size_t i = 0; i < items.size(); ++i) {
      out.push_back(as_tensor(items[i], w + "." + key + "." + std::to_string(i))
                        .to(p.device(), p.scalar_type(), false, true));
    }
    return out;
  }

 public:
  LbfgsLayout()
      : TypedLayout("LBFGS", {},
                    {CKPT_OPTION(Opt, lr, get_double), CKPT_OPTION(Opt, max_iter, get_int),
                     // PyTorch's default max_eval, as libtorch computes it when unset.
                     Option<Opt>{"max_eval",
                                 [](const Opt& o) {
                                   return c10::IValue(o.max_eval().value_or(o.max_iter() * 5 / 4));
                                 },
                                 [](Opt& o, const GenericDict& g, const std::string& w) {
                                   o.max_eval(get_int(g, "max_eval", w));
                                 }},
                     CKPT_OPTION(Opt, tolerance_grad, get_double),
                     CKPT_OPTION(Opt, tolerance_change, get_double),
                     CKPT_OPTION(Opt, history_size, get_int),
                     Option<Opt>{"line_search_fn",
                                 [](const Opt& o) {
                                   return o.line_search_fn() ? c10::IValue(*o.line_search_fn())
                                                             : c10::IValue();
                                 },
                                 [](Opt& o, const GenericDict& g, const std::string& w) {
                                   c10::IValue ls = require(g, "line_search_fn", w);
                                   if (ls.isNone()) {
                                     o.line_search_fn(c10::nullopt);
                                   } else if (ls.isString() && ls.toStringRef() == "strong_wolfe") {
                                     o.line_search_fn(ls.toStringRef());
                                   } else {
                                     refuse(w + ".line_search_fn",
                                            "expected None or \"strong_wolfe\"");
                                   }
                                 }}}) {}
  bool one_state() const override { return true; }
  void write_state(const OptimizerParamState& base, GenericDict& e) const override {
    const auto& s = static_cast<const State&>(base);
    e.insert("func_evals", s.func_evals());
    e.insert("n_iter", s.n_iter());
    if (s.al()) {
      GenericList al = any_list();
      for (const at::Tensor& t : *s.al())
        al.push_back(t.defined() ? c10::IValue(t) : c10::IValue());
      e.insert("al", al);
    }
    // The rest exists once a step ran past its first evaluation (PyTorch writes it then too).
    if (!s.d().defined()) return;
    e.insert("d", s.d());
    e.insert("t", s.t());
    e.insert("old_dirs", tensors(s.old_dirs()));
    e.insert("old_stps", tensors(s.old_stps()));
    e.insert("ro", tensors(s.ro()));
    e.insert("H_diag", s.H_diag());
    e.insert("prev_flat_grad", s.prev_flat_grad());
    e.insert("prev_loss", s.prev_loss());
  }
  std::vector<std::string> state_keys(const OptimizerOptions&, bool required) const override {
    if (required) return {"func_evals", "n_iter"};
    return {"func_evals", "n_iter", "d",  "t",         "old_dirs",      "old_stps",
            "ro",         "H_diag", "al", "prev_loss", "prev_flat_grad"};
  }
  std::unique_ptr<OptimizerParamState> read_state(const GenericDict& e, const at::Tensor& p,
                                                  const OptimizerOptions&,
                                                  const std::string& w) const override {
    auto s = std::make_unique<State>();
    s->func_evals(get_int(e, "func_evals", w));
    s->n_iter(get_int(e, "n_iter", w));
    if (std::optional<c10::IValue> al = find(e, "al")) {
      std::vector<at::Tensor> out;
      std::vector<c10::IValue> items = as_list(*al, w + ".al");
      for (size_t i = 0; i < items.size(); ++i) {
        out.push_back(items[i].isNone() ? at::Tensor()
                                        : as_tensor(items[i], w + ".al." + std::to_string(i))
                                              .to(p.device(), p.scalar_type(), false, true));
      }
      s->al(std::move(out));
    }
    // After its first step PyTorch's LBFGS always holds the rest; before it, nothing else.
    if (s->n_iter() == 0) return s;
    s->d(state_tensor(e, "d", p, w, /*any_shape=*/true));
    s->t(get_double(e, "t", w));
    s->old_dirs(read_tensors(e, "old_dirs", p, w));
    s->old_stps(read_tensors(e, "old_stps", p, w));
    s->ro(read_tensors(e, "ro", p, w));
    c10::IValue h = require(e, "H_diag", w);
    s->H_diag(h.isTensor() ? h.toTensor().to(p.device(), p.scalar_type(), false, true)
                           : at::scalar_tensor(as_double(h, w + ".H_diag"), p.options()));
    s->prev_flat_grad(state_tensor(e, "prev_flat_grad", p, w, /*any_shape=*/true));
    s->prev_loss(get_double(e, "prev_loss", w));
    return s;
  }
};

const std::vector<std::unique_ptr<OptimizerLayout>>& layouts() {
  static const auto* all = [] {
    auto* v = new std::vector<std::unique_ptr<OptimizerLayout>>();
    v->push_back(std::make_unique<SgdLayout>());
    v->push_back(
        std::make_unique<AdamFamilyLayout<torch::optim::AdamOptions, torch::optim::AdamParamState>>(
            "Adam", std::vector<PythonFlag>{{"maximize", false},
                                            {"foreach", true},
                                            {"capturable", false},
                                            {"differentiable", false},
                                            {"fused", false}}));
    v->push_back(std::make_unique<
                 AdamFamilyLayout<torch::optim::AdamWOptions, torch::optim::AdamWParamState>>(
        "AdamW",
        std::vector<PythonFlag>{{"foreach", true}, {"maximize", false}, {"capturable", false}}));
    v->push_back(std::make_unique<RmspropLayout>());
    v->push_back(std::make_unique<AdagradLayout>());
    v->push_back(std::make_unique<LbfgsLayout>());
    return v;
  }();
  return *all;
}

const OptimizerLayout& layout_of(torch::optim::Optimizer& optimizer) {
  if (optimizer.param_groups().empty()) {
    throw_error(ErrorCode::kInvalidArgument, "optimizer: it has no param groups");
  }
  const OptimizerOptions& o = optimizer.param_groups().front().options();
  for (const auto& l : layouts()) {
    if (l->matches(o)) return *l;
  }
  throw_error(ErrorCode::kInvalidArgument,
              std::string("optimizer: ") + typeid(optimizer).name() +
                  " is not supported (supported: SGD, Adam, AdamW, RMSprop, Adagrad, LBFGS); "
                  "save and load its state in a Runner or Stateful of your own");
}

}  // namespace

std::string optimizer_kind(torch::optim::Optimizer& optimizer) {
  return layout_of(optimizer).name();
}

Dict optimizer_state_dict(torch::optim::Optimizer& optimizer,
                          const std::vector<double>& initial_lrs) {
  const OptimizerLayout& layout = layout_of(optimizer);
  auto& groups = optimizer.param_groups();
  if (!initial_lrs.empty() && initial_lrs.size() != groups.size()) {
    throw_error(ErrorCode::kInvalidArgument,
                "optimizer_state_dict: " + std::to_string(initial_lrs.size()) +
                    " initial_lrs for " + std::to_string(groups.size()) + " param groups");
  }
  GenericDict state(c10::IntType::get(), c10::AnyType::get());
  GenericList param_groups = any_list();
  int64_t index = 0;
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    GenericList ids = any_list();
    for (const at::Tensor& p : groups[gi].params()) {
      auto it = optimizer.state().find(state_key(p));
      if (it != optimizer.state().end() && (!layout.one_state() || index == 0)) {
        GenericDict entry = str_dict();
        layout.write_state(*it->second, entry);
        state.insert(index, entry);
      }
      ids.push_back(index++);
    }
    GenericDict g = str_dict();
    layout.write_group(groups[gi].options(), g);
    if (!initial_lrs.empty()) g.insert("initial_lr", initial_lrs[gi]);
    g.insert("params", ids);
    param_groups.push_back(g);
  }
  Dict out = str_dict();
  out.insert("state", state);
  out.insert("param_groups", param_groups);
  return out;
}

void load_optimizer_state_dict(torch::optim::Optimizer& optimizer, const Dict& sd) {
  const OptimizerLayout& layout = layout_of(optimizer);
  const std::string where = "optimizer";
  auto& groups = optimizer.param_groups();
  std::vector<c10::IValue> saved_groups =
      as_list(require(sd, "param_groups", where), where + ".param_groups");
  if (saved_groups.size() != groups.size()) {
    refuse(where + ".param_groups", std::to_string(saved_groups.size()) + " groups, the " +
                                        std::string(layout.name()) + " has " +
                                        std::to_string(groups.size()));
  }
  // Everything is read and checked first; the optimizer changes only once all of it is valid.
  std::vector<std::unique_ptr<OptimizerOptions>> options;
  std::vector<std::pair<const at::Tensor*, size_t>> params;  // by index: the tensor, its group
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const std::string w = where + ".param_groups." + std::to_string(gi);
    GenericDict g = as_dict(saved_groups[gi], w);
    std::vector<c10::IValue> ids = as_list(require(g, "params", w), w + ".params");
    if (ids.size() != groups[gi].params().size()) {
      refuse(w + ".params", std::to_string(ids.size()) + " parameters, the group has " +
                                std::to_string(groups[gi].params().size()));
    }
    options.push_back(layout.read_group(g, groups[gi].options(), w));
    for (const at::Tensor& p : groups[gi].params()) params.emplace_back(&p, gi);
  }
  // Saved indices map to parameters in order, as PyTorch's load_state_dict maps them.
  std::map<int64_t, size_t> index_of;
  {
    size_t k = 0;
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      const std::string w = where + ".param_groups." + std::to_string(gi) + ".params";
      GenericDict g = as_dict(saved_groups[gi], w);
      std::vector<c10::IValue> ids = as_list(require(g, "params", w), w);
      for (size_t j = 0; j < ids.size(); ++j, ++k) {
        const int64_t id = as_int(ids[j], w + "." + std::to_string(j));
        if (!index_of.emplace(id, k).second) refuse(w, "index " + std::to_string(id) + " twice");
      }
    }
  }
  GenericDict saved_state = as_dict(require(sd, "state", where), where + ".state");
  std::vector<std::pair<std::string, std::unique_ptr<OptimizerParamState>>> states;
  for (const auto& item : saved_state) {
    const std::string key_name =
        item.key().isInt() ? std::to_string(item.key().toInt()) : item.key().tagKind();
    const std::string w = where + ".state." + key_name;
    if (!item.key().isInt()) refuse(w, "state keys must be parameter indices");
    auto at_index = index_of.find(item.key().toInt());
    if (at_index == index_of.end()) refuse(w, "no parameter has this index");
    const auto& [param, gi] = params[at_index->second];
    if (layout.one_state() && at_index->second != 0) refuse(w, "LBFGS keeps its state under 0");
    GenericDict entry = as_dict(item.value(), w);
    const OptimizerOptions& o = *options[gi];
    std::vector<std::string> allowed = layout.state_keys(o, false);
    for (const auto& kv : entry) {
      std::string k = kv.key().isString() ? kv.key().toStringRef() : kv.key().tagKind();
      if (std::find(allowed.begin(), allowed.end(), k) == allowed.end()) {
        refuse(w + "." + k, std::string("unexpected in a ") + layout.name() +
                                " state (a state of another optimizer, or other options?)");
      }
    }
    for (const std::string& k : layout.state_keys(o, true)) require(entry, k, w);
    std::unique_ptr<OptimizerParamState> s = layout.read_state(entry, *param, o, w);
    if (s) states.emplace_back(state_key(*param), std::move(s));
  }
  if (layout.state_for_every_param() && states.size() != params.size()) {
    refuse(where + ".state", std::to_string(states.size()) + " entries; " + layout.name() +
                                 " has a state for each of its " + std::to_string(params.size()) +
                                 " parameters");
  }
  for (size_t gi = 0; gi < groups.size(); ++gi) groups[gi].set_options(std::move(options[gi]));
  optimizer.state().clear();
  for (auto& [key, s] : states) optimizer.state()[key] = std::move(s);
}

}  // namespace ckptledger
