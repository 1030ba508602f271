#include "hook/layouts.h"

#include <algorithm>
#include <functional>
#include <numeric>

#include "ckptledger/error.h"

namespace ckptledger {
namespace {

constexpr const char* kPlaceholder = "ckptledger-part:";
constexpr size_t kPlaceholderSize = 16;  // its length

// Copies the containers of `v` (dicts, lists, tuples), passing every other value through `leaf`.
c10::IValue map_leaves(const c10::IValue& v,
                       const std::function<c10::IValue(const c10::IValue&)>& leaf) {
  if (v.isGenericDict()) {
    const c10::impl::GenericDict in = v.toGenericDict();
    c10::impl::GenericDict out(in.keyType(), c10::AnyType::get());
    for (const auto& kv : in) out.insert(kv.key(), map_leaves(kv.value(), leaf));
    return out;
  }
  if (v.isList()) {
    c10::impl::GenericList out(c10::AnyType::get());
    for (const c10::IValue& x : v.toListRef()) out.push_back(map_leaves(x, leaf));
    return out;
  }
  if (v.isTuple()) {
    std::vector<c10::IValue> items;
    for (const c10::IValue& x : v.toTupleRef().elements()) items.push_back(map_leaves(x, leaf));
    return c10::ivalue::Tuple::create(std::move(items));
  }
  return leaf(v);
}

void each_tensor(const c10::IValue& v, const std::function<void(const at::Tensor&)>& f) {
  if (v.isTensor()) {
    f(v.toTensor());
  } else if (v.isGenericDict()) {
    for (const auto& kv : v.toGenericDict()) each_tensor(kv.value(), f);
  } else if (v.isList()) {
    for (const c10::IValue& x : v.toListRef()) each_tensor(x, f);
  } else if (v.isTuple()) {
    for (const c10::IValue& x : v.toTupleRef().elements()) each_tensor(x, f);
  }
}

c10::impl::GenericDict str_dict() {
  return c10::impl::GenericDict(c10::StringType::get(), c10::AnyType::get());
}

}  // namespace

std::vector<int> assign_spread(const c10::IValue& ckpt, int world) {
  std::vector<uint64_t> bytes;
  each_tensor(ckpt, [&](const at::Tensor& t) { bytes.push_back(t.defined() ? t.nbytes() : 0); });
  std::vector<size_t> order(bytes.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return bytes[a] > bytes[b]; });
  std::vector<uint64_t> load(static_cast<size_t>(std::max(world, 1)), 0);
  std::vector<int> owner(bytes.size(), 0);
  for (size_t i : order) {
    const size_t r = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = static_cast<int>(r);
    load[r] += bytes[i];
  }
  return owner;
}

c10::IValue spread_body(const c10::IValue& ckpt, int rank, int world) {
  const std::vector<int> owner = assign_spread(ckpt, world);
  size_t n = 0;
  if (rank == 0) {
    return map_leaves(ckpt, [&](const c10::IValue& t) -> c10::IValue {
      if (!t.isTensor()) return t;
      const size_t i = n++;
      if (owner[i] == 0) return t;
      return std::string(kPlaceholder) + std::to_string(owner[i]) + ":" + std::to_string(i);
    });
  }
  c10::impl::GenericDict tensors = str_dict();
  each_tensor(ckpt, [&](const at::Tensor& t) {
    const size_t i = n++;
    if (owner[i] == rank) tensors.insert(std::to_string(i), t);
  });
  c10::impl::GenericDict meta = str_dict();
  meta.insert("layout", std::string("spread"));
  meta.insert("rank", static_cast<int64_t>(rank));
  meta.insert("world_size", static_cast<int64_t>(world));
  c10::impl::GenericDict body = str_dict();
  body.insert("ckptledger_part", meta);
  body.insert("tensors", tensors);
  return body;
}

bool is_spread_part(const c10::IValue& body) {
  return body.isGenericDict() && body.toGenericDict().contains("ckptledger_part");
}

c10::IValue assemble_spread(const c10::IValue& part0, const std::vector<c10::IValue>& others) {
  return map_leaves(part0, [&](const c10::IValue& v) -> c10::IValue {
    if (!v.isString()) return v;
    const std::string& s = v.toStringRef();
    if (s.compare(0, kPlaceholderSize, kPlaceholder) != 0) return v;
    const size_t colon = s.find(':', kPlaceholderSize);
    int rank = -1;
    std::string number;
    if (colon != std::string::npos) {
      try {
        rank = std::stoi(s.substr(kPlaceholderSize, colon - kPlaceholderSize));
      } catch (const std::exception&) {
        rank = -1;
      }
      number = s.substr(colon + 1);
    }
    if (rank < 1 || static_cast<size_t>(rank) > others.size() ||
        !is_spread_part(others[rank - 1])) {
      throw_error(ErrorCode::kCorruption, "spread checkpoint: " + s +
                                              " names a part that is not there (" +
                                              std::to_string(others.size() + 1) + " parts)");
    }
    const c10::IValue tensors = others[rank - 1].toGenericDict().at("tensors");
    if (!tensors.isGenericDict() || !tensors.toGenericDict().contains(number) ||
        !tensors.toGenericDict().at(number).isTensor()) {
      throw_error(ErrorCode::kCorruption,
                  "spread checkpoint: part " + std::to_string(rank) + " has no tensor " + number);
    }
    return tensors.toGenericDict().at(number);
  });
}

bool has_spread_placeholder(const c10::IValue& body) {
  bool found = false;
  map_leaves(body, [&](const c10::IValue& leaf) {
    if (leaf.isString() && leaf.toStringRef().rfind(kPlaceholder, 0) == 0) found = true;
    return leaf;
  });
  return found;
}

}  // namespace ckptledger
