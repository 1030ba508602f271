#include "tools/train/torch_state.h"

#include <memory>

#include <torch/csrc/autograd/grad_mode.h>

namespace ckptledger::torch_state {
namespace {

std::string state_key(const at::Tensor& p) { return c10::guts::to_string(p.unsafeGetTensorImpl()); }

}  // namespace

GenericDict str_dict() { return GenericDict(c10::StringType::get(), c10::AnyType::get()); }

GenericList double_list(const std::vector<double>& v) {
  GenericList l(c10::AnyType::get());
  for (double x : v) l.push_back(x);
  return l;
}

std::vector<double> to_doubles(const c10::IValue& v) {
  std::vector<double> out;
  if (!v.isList()) return out;
  for (const c10::IValue& x : v.toListRef())
    out.push_back(x.isInt() ? double(x.toInt()) : x.toDouble());
  return out;
}

std::optional<c10::IValue> get(const GenericDict& d, const std::string& key) {
  if (!d.contains(key)) return std::nullopt;
  return d.at(key);
}

void load_weights(torch::nn::Module& model, const GenericDict& ckpt) {
  auto sd = get(ckpt, "state_dict");
  if (!sd || !sd->isGenericDict()) return;
  const GenericDict weights_in = sd->toGenericDict();
  torch::NoGradGuard no_grad;
  for (auto& item : model.named_parameters()) {
    auto t = get(weights_in, item.key());
    if (t && t->isTensor() && t->toTensor().sizes() == item.value().sizes()) {
      item.value().copy_(t->toTensor());
    }
  }
}

torch::optim::SGDOptions& sgd_options(torch::optim::SGD& opt) {
  return static_cast<torch::optim::SGDOptions&>(opt.param_groups().at(0).options());
}

GenericDict sgd_state_dict(torch::optim::SGD& opt, std::optional<double> initial_lr) {
  GenericDict state(c10::IntType::get(), c10::AnyType::get());
  const std::vector<at::Tensor>& params = opt.param_groups().at(0).params();
  GenericList param_ids(c10::AnyType::get());
  for (size_t i = 0; i < params.size(); ++i) {
    param_ids.push_back(static_cast<int64_t>(i));
    auto it = opt.state().find(state_key(params[i]));
    if (it == opt.state().end()) continue;
    const auto& s = static_cast<const torch::optim::SGDParamState&>(*it->second);
    if (!s.momentum_buffer().defined()) continue;
    GenericDict entry = str_dict();
    entry.insert("momentum_buffer", s.momentum_buffer());
    state.insert(static_cast<int64_t>(i), entry);
  }
  const torch::optim::SGDOptions& o = sgd_options(opt);
  GenericDict group = str_dict();
  group.insert("lr", o.lr());
  group.insert("momentum", o.momentum());
  group.insert("dampening", o.dampening());
  group.insert("weight_decay", o.weight_decay());
  group.insert("nesterov", o.nesterov());
  group.insert("maximize", false);
  group.insert("foreach", c10::IValue());
  group.insert("differentiable", false);
  if (initial_lr) group.insert("initial_lr", *initial_lr);
  group.insert("params", param_ids);
  GenericList groups(c10::AnyType::get());
  groups.push_back(group);
  GenericDict out = str_dict();
  out.insert("state", state);
  out.insert("param_groups", groups);
  return out;
}

void load_sgd_state_dict(torch::optim::SGD& opt, const GenericDict& sd) {
  const std::vector<at::Tensor>& params = opt.param_groups().at(0).params();
  opt.state().clear();
  if (auto st = get(sd, "state"); st && st->isGenericDict()) {
    for (const auto& entry : st->toGenericDict()) {
      if (!entry.key().isInt() || !entry.value().isGenericDict()) continue;
      const int64_t idx = entry.key().toInt();
      if (idx < 0 || idx >= static_cast<int64_t>(params.size())) continue;
      auto buf = get(entry.value().toGenericDict(), "momentum_buffer");
      if (!buf || !buf->isTensor()) continue;
      auto s = std::make_unique<torch::optim::SGDParamState>();
      s->momentum_buffer(buf->toTensor().clone());
      opt.state()[state_key(params[static_cast<size_t>(idx)])] = std::move(s);
    }
  }
  if (auto groups = get(sd, "param_groups"); groups && groups->isList()) {
    const auto& list = groups->toListRef();
    if (!list.empty() && list[0].isGenericDict()) {
      if (auto lr = get(list[0].toGenericDict(), "lr"); lr && lr->isDouble()) {
        sgd_options(opt).lr(lr->toDouble());
      }
    }
  }
}

}  // namespace ckptledger::torch_state
