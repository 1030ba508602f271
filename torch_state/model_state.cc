// A module's state_dict in PyTorch's layout and MMEngine's weight lookup (torch_state.h).
#include <torch/csrc/autograd/grad_mode.h>

#include <map>
#include <string>
#include <utility>

#include "ckptledger/error.h"
#include "ckptledger/torch_state.h"
#include "torch_state/ivalue_read.h"

namespace ckptledger {
namespace {

using namespace torch_state;  // NOLINT: the checked readers

constexpr std::string_view kDdpPrefix = "module.";

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

Dict model_state_dict(const torch::nn::Module& model) {
  // PyTorch's order: module by module (pre-order), each one's parameters, then its buffers.
  Dict sd(c10::StringType::get(), c10::TensorType::get());
  for (const auto& m : model.named_modules("", /*include_self=*/true)) {
    const std::string prefix = m.key().empty() ? "" : m.key() + ".";
    for (const auto& item : m.value()->named_parameters(/*recurse=*/false)) {
      sd.insert(prefix + item.key(), item.value().detach());
    }
    for (const auto& item : m.value()->named_buffers(/*recurse=*/false)) {
      sd.insert(prefix + item.key(), item.value().detach());
    }
  }
  return sd;
}

std::string ModelLoadReport::describe() const {
  std::string s;
  auto add = [&](const char* what, const std::vector<std::string>& keys) {
    if (keys.empty()) return;
    s += (s.empty() ? "" : "; ") + std::string(what) + ": " + join(keys);
  };
  add("missing keys in source state_dict", missing);
  add("unexpected key in source state_dict", unexpected);
  add("size mismatch", mismatched);
  return s;
}

ModelLoadReport load_model_state_dict(torch::nn::Module& model, const Dict& state, bool strict) {
  // The module's own keys, in its state_dict order (the report lists them so).
  std::vector<std::string> order;
  std::map<std::string, at::Tensor> targets;
  for (const auto& kv : model_state_dict(model)) {
    order.push_back(kv.key().toStringRef());
    targets.emplace(kv.key().toStringRef(), kv.value().toTensor());
  }
  ModelLoadReport report;
  std::vector<std::pair<at::Tensor, at::Tensor>> copies;  // (target, source)
  std::map<std::string, bool> seen;
  for (const auto& kv : state) {
    const std::string key = kv.key().isString() ? kv.key().toStringRef() : kv.key().tagKind();
    auto it = targets.find(key);
    if (it == targets.end() || !kv.value().isTensor()) {
      report.unexpected.push_back(key);
      continue;
    }
    seen[key] = true;
    const at::Tensor& src = kv.value().toTensor();
    if (src.sizes() != it->second.sizes()) {
      report.mismatched.push_back(key + ": checkpoint " + shape_string(src.sizes()) + ", model " +
                                  shape_string(it->second.sizes()));
      continue;
    }
    copies.emplace_back(it->second, src);
  }
  for (const std::string& key : order) {
    if (!seen.count(key)) report.missing.push_back(key);
  }
  if (strict && !report.clean()) {
    throw_error(ErrorCode::kInvalidArgument,
                "state_dict does not fit the model (strict load): " + report.describe());
  }
  torch::NoGradGuard no_grad;
  for (auto& [target, src] : copies) target.copy_(src);
  return report;
}

Dict checkpoint_weights(const Dict& checkpoint) {
  Dict weights = checkpoint;
  for (const char* key : {"state_dict", "model"}) {
    if (std::optional<c10::IValue> v = find(checkpoint, key)) {
      weights = as_dict(*v, std::string("checkpoint.") + key);
      break;
    }
  }
  bool prefixed = false;
  for (const auto& kv : weights) {
    if (kv.key().isString() && kv.key().toStringRef().rfind(kDdpPrefix, 0) == 0) prefixed = true;
  }
  if (!prefixed) return weights;
  Dict out(weights.keyType(), weights.valueType());
  for (const auto& kv : weights) {
    std::string key = kv.key().isString() ? kv.key().toStringRef() : kv.key().tagKind();
    if (key.rfind(kDdpPrefix, 0) == 0) key.erase(0, kDdpPrefix.size());
    out.insert(key, kv.value());
  }
  return out;
}

}  // namespace ckptledger
