// Checked reads of checkpoint values for the torch-state loaders: each names the key it reads
// (`optimizer.param_groups.0.lr`) when the value is missing or of the wrong type, as
// Error(kInvalidArgument).
#pragma once

#include <ATen/core/Dict.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ckptledger::torch_state {

using GenericDict = c10::impl::GenericDict;
using GenericList = c10::impl::GenericList;

GenericDict str_dict();  // Dict[str, Any]
GenericList any_list();
GenericList double_list(const std::vector<double>& v);

[[noreturn]] void refuse(const std::string& key, const std::string& why);

// The value of `key` in `d`, or nullopt; `d` must have string keys.
std::optional<c10::IValue> find(const GenericDict& d, const std::string& key);
// As find(), but a missing key throws naming `where.key`.
c10::IValue require(const GenericDict& d, const std::string& key, const std::string& where);

// Python numbers: an int or a float (or a bool, which Python's int is), as double.
double as_double(const c10::IValue& v, const std::string& key);
// An int, an integral float, or a one-element tensor holding an integral value (PyTorch keeps
// some step counters as 0-dim float tensors).
int64_t as_int(const c10::IValue& v, const std::string& key);
bool as_bool(const c10::IValue& v, const std::string& key);
GenericDict as_dict(const c10::IValue& v, const std::string& key);
std::vector<c10::IValue> as_list(const c10::IValue& v, const std::string& key);  // list or tuple
at::Tensor as_tensor(const c10::IValue& v, const std::string& key);
std::vector<double> as_doubles(const c10::IValue& v, const std::string& key);

// require() and the conversion, naming `where.key`.
double get_double(const GenericDict& d, const std::string& key, const std::string& where);
int64_t get_int(const GenericDict& d, const std::string& key, const std::string& where);
bool get_bool(const GenericDict& d, const std::string& key, const std::string& where);

// "[2, 3]"
std::string shape_string(at::IntArrayRef sizes);

}  // namespace ckptledger::torch_state
