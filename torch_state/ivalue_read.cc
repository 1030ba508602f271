#include "torch_state/ivalue_read.h"

#include <cmath>

#include "ckptledger/error.h"

namespace ckptledger::torch_state {

GenericDict str_dict() { return GenericDict(c10::StringType::get(), c10::AnyType::get()); }

GenericList any_list() { return GenericList(c10::AnyType::get()); }

GenericList double_list(const std::vector<double>& v) {
  GenericList l = any_list();
  for (double x : v) l.push_back(x);
  return l;
}

void refuse(const std::string& key, const std::string& why) {
  throw_error(ErrorCode::kInvalidArgument, key + ": " + why);
}

std::optional<c10::IValue> find(const GenericDict& d, const std::string& key) {
  auto it = d.find(key);
  if (it == d.end()) return std::nullopt;
  return it->value();
}

c10::IValue require(const GenericDict& d, const std::string& key, const std::string& where) {
  std::optional<c10::IValue> v = find(d, key);
  if (!v) refuse(where + "." + key, "missing");
  return *v;
}

double as_double(const c10::IValue& v, const std::string& key) {
  if (v.isDouble()) return v.toDouble();
  if (v.isInt()) return static_cast<double>(v.toInt());
  if (v.isBool()) return v.toBool() ? 1.0 : 0.0;
  refuse(key, "expected a number, got " + v.tagKind());
}

int64_t as_int(const c10::IValue& v, const std::string& key) {
  if (v.isInt()) return v.toInt();
  double d = 0;
  if (v.isDouble()) {
    d = v.toDouble();
  } else if (v.isTensor() && v.toTensor().numel() == 1) {
    d = v.toTensor().item<double>();
  } else {
    refuse(key, "expected an integer, got " + v.tagKind());
  }
  if (!std::isfinite(d) || d != std::floor(d)) refuse(key, "expected an integer, got a fraction");
  return static_cast<int64_t>(d);
}

bool as_bool(const c10::IValue& v, const std::string& key) {
  if (v.isBool()) return v.toBool();
  if (v.isInt() && (v.toInt() == 0 || v.toInt() == 1)) return v.toInt() == 1;
  refuse(key, "expected a bool, got " + v.tagKind());
}

GenericDict as_dict(const c10::IValue& v, const std::string& key) {
  if (!v.isGenericDict()) refuse(key, "expected a dict, got " + v.tagKind());
  return v.toGenericDict();
}

std::vector<c10::IValue> as_list(const c10::IValue& v, const std::string& key) {
  if (v.isList()) return v.toListRef().vec();
  if (v.isTuple()) return v.toTupleRef().elements().vec();
  refuse(key, "expected a list, got " + v.tagKind());
}

at::Tensor as_tensor(const c10::IValue& v, const std::string& key) {
  if (!v.isTensor()) refuse(key, "expected a tensor, got " + v.tagKind());
  return v.toTensor();
}

std::vector<double> as_doubles(const c10::IValue& v, const std::string& key) {
  std::vector<double> out;
  std::vector<c10::IValue> items = as_list(v, key);
  for (size_t i = 0; i < items.size(); ++i) {
    out.push_back(as_double(items[i], key + "." + std::to_string(i)));
  }
  return out;
}

double get_double(const GenericDict& d, const std::string& key, const std::string& where) {
  return as_double(require(d, key, where), where + "." + key);
}

int64_t get_int(const GenericDict& d, const std::string& key, const std::string& where) {
  return as_int(require(d, key, where), where + "." + key);
}

bool get_bool(const GenericDict& d, const std::string& key, const std::string& where) {
  return as_bool(require(d, key, where), where + "." + key);
}

std::string shape_string(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

}  // namespace ckptledger::torch_state
