#include "hook/checkpoint_format.h"

#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "ckptledger/error.h"
#include "ledger/sha256.h"
#include "storage/zip_writer.h"

namespace ckptledger {
namespace {

using c10::IValue;
using namespace std::string_literals;
using c10::impl::GenericDict;
using c10::impl::GenericList;
using nlohmann::json;

// ---- helpers ---------------------------------------------------------------------------------

class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base && *base ? base : "/tmp") + "/ckpt_format_XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string to_bytes(const IValue& obj) {
  std::string out;
  const uint64_t n = write_checkpoint(
      obj, [&](const void* p, size_t size) { out.append(static_cast<const char*>(p), size); });
  EXPECT_EQ(n, out.size());
  return out;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f.good()) throw std::runtime_error("cannot write " + path);
}

void write_file(const std::string& path, const IValue& obj) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  write_checkpoint(obj, [&](const void* p, size_t size) {
    f.write(static_cast<const char*>(p), static_cast<std::streamsize>(size));
    if (!f.good()) throw std::runtime_error("cannot write " + path);
  });
}

// Runs tests/python/read_checkpoint.py with /usr/bin/python3 (python3-torch) and parses its JSON.
json run_python(const std::string& args) {
  const std::string cmd = std::string(CKPT_PYTHON3) + " '" + CKPT_READ_CHECKPOINT_PY + "' " + args;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("popen failed: " + cmd);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  const int status = ::pclose(pipe);
  if (status != 0) {
    throw std::runtime_error("`" + cmd + "` exited with status " + std::to_string(status));
  }
  return json::parse(out);
}

GenericDict str_dict() { return GenericDict(c10::StringType::get(), c10::AnyType::get()); }
GenericDict int_dict() { return GenericDict(c10::IntType::get(), c10::AnyType::get()); }
GenericList any_list(std::initializer_list<IValue> items) {
  GenericList list(c10::AnyType::get());
  for (const auto& v : items) list.push_back(v);
  return list;
}

// A checkpoint shaped like MMEngine's Runner.save_checkpoint output, exercising every supported
// kind of value: views sharing a storage, non-contiguous and offset tensors, zero-size, 0-dim,
// float/double/half/int64/bool dtypes, int-keyed dicts, typed and generic lists, tuples, None.
IValue mmengine_like_checkpoint() {
  torch::manual_seed(0);
  GenericDict meta = str_dict();
  meta.insert("epoch", int64_t{2});
  meta.insert("iter", int64_t{200});
  meta.insert("time", "20240102_030405");
  meta.insert("seed", int64_t{1234});
  meta.insert("mmengine_version", "0.10.3");
  meta.insert("dataset_meta", IValue());
  meta.insert("deterministic", false);

  GenericDict state_dict = str_dict();
  state_dict.insert("backbone.conv.weight", torch::randn({4, 3, 3, 3}));
  state_dict.insert("backbone.conv.bias", torch::randn({4}));
  state_dict.insert("backbone.bn.running_mean", torch::zeros({4}));
  state_dict.insert("backbone.bn.num_batches_tracked", torch::tensor(int64_t{7}));
  state_dict.insert("head.fc.weight", torch::randn({2, 4}).t());  // non-contiguous
  state_dict.insert("head.fc.bias", torch::randn({2}));

  GenericDict state = int_dict();
  for (int64_t i = 0; i < 2; ++i) {
    GenericDict s = str_dict();
    s.insert("step", torch::tensor(3.0f));
    s.insert("exp_avg", torch::randn({4, 3}));
    state.insert(i, s);
  }
  GenericDict group = str_dict();
  group.insert("lr", 0.1);
  group.insert("betas", c10::ivalue::Tuple::create(0.9, 0.999));
  group.insert("foreach", IValue());
  group.insert("amsgrad", false);
  group.insert("params", c10::List<int64_t>({0, 1}));  // a typed IntList
  GenericDict optimizer = str_dict();
  optimizer.insert("state", state);
  optimizer.insert("param_groups", any_list({group}));

  GenericDict scheduler = str_dict();
  scheduler.insert("base_lrs", c10::List<double>({0.01}));
  scheduler.insert("last_step", int64_t{2});
  scheduler.insert("by_epoch", true);
  scheduler.insert("eta_min", 0.0);

  GenericDict runtime_info = str_dict();
  runtime_info.insert("best_score", 0.5);
  runtime_info.insert("keep_ckpt_ids", c10::List<int64_t>({1, 2}));
  runtime_info.insert("last_ckpt", "/x/epoch_2.pth");
  GenericDict resumed = str_dict();
  resumed.insert("epoch", true);
  GenericDict hub = str_dict();
  hub.insert("runtime_info", runtime_info);
  hub.insert("resumed_keys", resumed);

  at::Tensor base = torch::arange(12, torch::kFloat32).reshape({3, 4});
  GenericDict extras = str_dict();
  extras.insert("rows", base.slice(0, 1));  // offset 4 into base's storage
  extras.insert("columns", base.t());       // the same storage again
  extras.insert("every_other",
                torch::arange(20, torch::kFloat64).reshape({4, 5}).slice(1, 1, 5, 2));
  extras.insert("half", torch::full({3}, 0.5, torch::kHalf));
  extras.insert("mask", torch::tensor({true, false, true}));
  extras.insert("empty", torch::zeros({0, 3}));
  extras.insert("long", torch::arange(5, torch::kInt64) - 2);
  extras.insert("param", torch::ones({2}).requires_grad_(true));
  extras.insert("big_int", int64_t{1} << 40);
  extras.insert("negative", int64_t{-7});
  extras.insert("tensors", any_list({torch::randn({2}), torch::randn({3})}));  // not in a dict
  extras.insert("mixed", any_list({IValue(), int64_t{1}, 2.5, "s",
                                   c10::ivalue::Tuple::create(std::vector<IValue>{})}));

  GenericDict ckpt = str_dict();
  ckpt.insert("meta", meta);
  ckpt.insert("state_dict", state_dict);
  ckpt.insert("optimizer", optimizer);
  ckpt.insert("param_schedulers", any_list({scheduler}));
  ckpt.insert("message_hub", hub);
  ckpt.insert("extras", extras);
  return ckpt;
}

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "float32";
    case at::kDouble:
      return "float64";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kLong:
      return "int64";
    case at::kInt:
      return "int32";
    case at::kShort:
      return "int16";
    case at::kChar:
      return "int8";
    case at::kByte:
      return "uint8";
    case at::kBool:
      return "bool";
    default:
      return c10::toString(t);
  }
}

// Whether `s` is strict UTF-8, as Python's bytes.decode("utf-8") requires.
bool is_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<uint8_t>(s[i]);
    const size_t n = c < 0x80           ? 1
                     : (c >> 5) == 0x6  ? 2
                     : (c >> 4) == 0xE  ? 3
                     : (c >> 3) == 0x1E ? 4
                                        : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (size_t k = 1; k < n; ++k) {
      const auto d = static_cast<uint8_t>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

std::string hex_of(const std::string& s) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 0xF]);
  }
  return out;
}

std::string label(const IValue& key) {
  if (key.isString()) return key.toStringRef();
  if (key.isInt()) return "#" + std::to_string(key.toInt());
  return "<unsupported key>";
}

// The same summary as tests/python/read_checkpoint.py computes, from an IValue.
json summarize(const IValue& root) {
  json nodes = json::object();
  std::map<const void*, int> storages;
  std::function<void(const IValue&, const std::string&)> walk = [&](const IValue& v,
                                                                    const std::string& path) {
    if (v.isTensor()) {
      const at::Tensor t = v.toTensor();
      int sid = -1;
      if (t.storage().nbytes() > 0) {
        sid =
            storages.emplace(t.storage().unsafeGetStorageImpl(), static_cast<int>(storages.size()))
                .first->second;
      }
      nodes[path] = {{"kind", "tensor"},
                     {"dtype", dtype_name(t.scalar_type())},
                     {"shape", t.sizes().vec()},
                     {"stride", t.strides().vec()},
                     {"offset", t.storage_offset()},
                     {"requires_grad", t.requires_grad()},
                     {"sum", t.detach().to(at::kDouble).sum().item<double>()},
                     {"storage", sid}};
    } else if (v.isGenericDict()) {
      json keys = json::array();
      for (const auto& e : v.toGenericDict()) keys.push_back(label(e.key()));
      nodes[path] = {{"kind", "dict"}, {"keys", keys}};
      for (const auto& e : v.toGenericDict()) walk(e.value(), path + "/" + label(e.key()));
    } else if (v.isList()) {
      const auto items = v.toListRef();
      nodes[path] = {{"kind", "list"}, {"len", items.size()}};
      for (size_t i = 0; i < items.size(); ++i)
        walk(items[i], path + "/[" + std::to_string(i) + "]");
    } else if (v.isTuple()) {
      const auto& items = v.toTupleRef().elements();
      nodes[path] = {{"kind", "tuple"}, {"len", items.size()}};
      for (size_t i = 0; i < items.size(); ++i)
        walk(items[i], path + "/[" + std::to_string(i) + "]");
    } else if (v.isNone()) {
      nodes[path] = {{"kind", "none"}};
    } else if (v.isBool()) {
      nodes[path] = {{"kind", "bool"}, {"value", v.toBool()}};
    } else if (v.isInt()) {
      nodes[path] = {{"kind", "int"}, {"value", v.toInt()}};
    } else if (v.isDouble()) {
      nodes[path] = {{"kind", "float"}, {"value", v.toDouble()}};
    } else if (v.isString()) {
      const std::string& s = v.toStringRef();
      nodes[path] = is_utf8(s) ? json{{"kind", "str"}, {"value", s}}
                               : json{{"kind", "str"}, {"hex", hex_of(s)}};
    } else {
      nodes[path] = {{"kind", std::string("unexpected ") + v.tagKind()}};
    }
  };
  walk(root, "");
  return nodes;
}

bool near(double a, double b) { return std::abs(a - b) <= 1e-9 * std::max(1.0, std::abs(a)); }

// Node by node; sums and float values within 1e-9 relative (summation order may differ).
void ExpectSameNodes(const json& expected, const json& actual) {
  for (const auto& [path, node] : expected.items()) {
    SCOPED_TRACE("path " + path);
    ASSERT_TRUE(actual.contains(path)) << "missing";
    const json& other = actual.at(path);
    if (node.at("kind") == "tensor" && other.at("kind") == "tensor") {
      json a = node, b = other;
      EXPECT_TRUE(near(a["sum"].get<double>(), b["sum"].get<double>()))
          << a["sum"] << " vs " << b["sum"];
      a.erase("sum");
      b.erase("sum");
      EXPECT_EQ(a, b);
    } else if (node.at("kind") == "float" && other.at("kind") == "float") {
      EXPECT_TRUE(near(node["value"].get<double>(), other["value"].get<double>()))
          << node << " vs " << other;
    } else {
      EXPECT_EQ(node, other);
    }
  }
  for (const auto& [path, node] : actual.items()) {
    EXPECT_TRUE(expected.contains(path)) << "unexpected path " << path << ": " << node;
  }
}

// Deep equality: same structure and key order, same tensor dtype/geometry/values/requires_grad.
void ExpectSameValue(const IValue& a, const IValue& b, const std::string& path = "") {
  SCOPED_TRACE("at " + (path.empty() ? std::string("/") : path));
  if (a.isTensor()) {
    ASSERT_TRUE(b.isTensor());
    const at::Tensor x = a.toTensor(), y = b.toTensor();
    EXPECT_EQ(x.scalar_type(), y.scalar_type());
    EXPECT_EQ(x.sizes(), y.sizes());
    EXPECT_EQ(x.strides(), y.strides());
    EXPECT_EQ(x.storage_offset(), y.storage_offset());
    EXPECT_EQ(x.requires_grad(), y.requires_grad());
    EXPECT_TRUE(y.device().is_cpu());
    if (x.scalar_type() == y.scalar_type() && x.sizes() == y.sizes()) {
      EXPECT_TRUE(at::equal(x.detach(), y.detach()));
    }
  } else if (a.isGenericDict()) {
    ASSERT_TRUE(b.isGenericDict());
    const GenericDict x = a.toGenericDict(), y = b.toGenericDict();
    ASSERT_EQ(x.size(), y.size());
    auto it = y.begin();
    for (const auto& e : x) {
      EXPECT_EQ(label(e.key()), label(it->key()));
      ExpectSameValue(e.value(), it->value(), path + "/" + label(e.key()));
      ++it;
    }
  } else if (a.isList() || a.isTuple()) {
    ASSERT_EQ(a.isList(), b.isList());
    ASSERT_EQ(a.isTuple(), b.isTuple());
    const auto x = a.isList() ? a.toListRef().vec() : a.toTupleRef().elements().vec();
    const auto y = b.isList() ? b.toListRef().vec() : b.toTupleRef().elements().vec();
    ASSERT_EQ(x.size(), y.size());
    for (size_t i = 0; i < x.size(); ++i) {
      ExpectSameValue(x[i], y[i], path + "/[" + std::to_string(i) + "]");
    }
  } else if (a.isNone()) {
    EXPECT_TRUE(b.isNone());
  } else if (a.isBool()) {
    ASSERT_TRUE(b.isBool());
    EXPECT_EQ(a.toBool(), b.toBool());
  } else if (a.isInt()) {
    ASSERT_TRUE(b.isInt());
    EXPECT_EQ(a.toInt(), b.toInt());
  } else if (a.isDouble()) {
    ASSERT_TRUE(b.isDouble());
    EXPECT_EQ(a.toDouble(), b.toDouble());
  } else if (a.isString()) {
    ASSERT_TRUE(b.isString());
    EXPECT_EQ(a.toStringRef(), b.toStringRef());
  } else {
    FAIL() << "unexpected value " << a.tagKind();
  }
}

// torch.load(weights_only=True), the default from PyTorch 2.6 on, accepts only allowlisted
// globals: none of the TorchScript ones (torch.jit._pickle.*) the libtorch Pickler can emit.
void ExpectLoadableWithWeightsOnly(const json& py) {
  for (const auto& g : py.at("globals")) {
    const std::string name = g.get<std::string>();
    const bool allowed =
        name == "torch._utils._rebuild_tensor_v2" || name == "collections.OrderedDict" ||
        (name.rfind("torch.", 0) == 0 && name.find("Storage") != std::string::npos);
    EXPECT_TRUE(allowed) << "data.pkl imports " << name;
  }
  // PyTorch 1.13's weights_only unpickler lacks BINFLOAT (opcode 'G' = 71), so no checkpoint
  // holding a float loads that way there, Python's own included; later versions accept it.
  const std::string result = py.at("weights_only").get<std::string>();
  EXPECT_TRUE(result == "ok" || result.find("Unsupported operand 71") != std::string::npos)
      << "torch " << py.at("torch") << ": " << result;
}

template <typename F>
Error CatchError(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no ckptledger::Error thrown";
  return Error(ErrorCode::kBusy, "none");
}

// A PyTorch archive with hand-made records, for malformed inputs the writer cannot produce.
std::string archive_with(const std::vector<std::pair<std::string, std::string>>& records) {
  std::string out;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* p, size_t n) {
    out.append(static_cast<const char*>(p), n);
    return n;
  });
  for (const auto& [name, data] : records) writer.writeRecord(name, data.data(), data.size());
  writer.writeEndOfFile();
  return out;
}

// Protocol-2 pickle of _rebuild_tensor_v2(storage "0" of 4 floats, offset, (size,), (1,), ...).
std::string tensor_pickle(uint8_t offset, uint8_t size) {
  std::string p = "\x80\x02";
  p += "ctorch._utils\n_rebuild_tensor_v2\n(";
  p += std::string("(X\x07\0\0\0storage", 13) + "ctorch\nFloatStorage\n";
  p += std::string(
           "X\x01\0\0\0"
           "0",
           6) +
       std::string("X\x03\0\0\0cpu", 8) + "K\x04tQ";
  p += "K";
  p += static_cast<char>(offset);
  p += "K";
  p += static_cast<char>(size);
  p += "\x85K\x01\x85\x89";
  p += "ccollections\nOrderedDict\n)RtR.";
  return p;
}

std::string four_floats() {
  const float v[4] = {1, 2, 3, 4};
  return std::string(reinterpret_cast<const char*>(v), sizeof(v));
}

// ---- round trip and determinism ----------------------------------------------------------------

TEST(CheckpointFormat, RoundTripPreservesValuesViewsAndKeyTypes) {
  TempDir dir;
  const IValue ckpt = mmengine_like_checkpoint();
  write_file(dir.file("epoch_2.pth"), ckpt);

  const IValue back = read_checkpoint(dir.file("epoch_2.pth"));
  ExpectSameValue(ckpt, back);
  ExpectSameNodes(summarize(ckpt), summarize(back));  // includes which tensors share storage

  const GenericDict top = back.toGenericDict();
  EXPECT_EQ(*top.keyType(), *c10::StringType::get());
  const GenericDict state = top.at("optimizer").toGenericDict().at("state").toGenericDict();
  EXPECT_EQ(*state.keyType(), *c10::IntType::get());
  EXPECT_TRUE(state.contains(int64_t{0}));
  const GenericDict extras = top.at("extras").toGenericDict();
  EXPECT_TRUE(extras.at("rows").toTensor().storage().is_alias_of(
      extras.at("columns").toTensor().storage()));
}

TEST(CheckpointFormat, RewritingAReadCheckpointGivesIdenticalBytes) {
  const std::string bytes = to_bytes(mmengine_like_checkpoint());
  EXPECT_EQ(to_bytes(read_checkpoint_bytes(bytes)), bytes);
}

TEST(CheckpointFormat, EqualContentGivesIdenticalBytes) {
  const IValue first = mmengine_like_checkpoint();
  const std::string bytes = to_bytes(first);
  EXPECT_EQ(to_bytes(first), bytes);

  // Built separately, with every tensor also held elsewhere (as a model holds its parameters):
  // the Pickler memoizes by use_count, which must not leak into the bytes.
  const IValue second = mmengine_like_checkpoint();
  std::vector<at::Tensor> held_by_model;
  std::function<void(const IValue&)> hold = [&](const IValue& v) {
    if (v.isTensor()) held_by_model.push_back(v.toTensor());
    if (v.isGenericDict()) {
      for (const auto& e : v.toGenericDict()) hold(e.value());
    }
    if (v.isList()) {
      for (const auto& e : v.toListRef()) hold(e);
    }
  };
  hold(second);
  ASSERT_GT(held_by_model.size(), 10u);
  EXPECT_TRUE(to_bytes(second) == bytes);

  // No wall clock: the first local header's DOS time and date are zero.
  ASSERT_GT(bytes.size(), 14u);
  EXPECT_EQ(bytes.substr(0, 4), std::string("PK\x03\x04", 4));
  EXPECT_EQ(bytes.substr(10, 4), std::string(4, '\0'));
}

TEST(CheckpointFormat, TypedAndGenericListsWriteTheSameBytes) {
  GenericDict typed = str_dict();
  typed.insert("params", c10::List<int64_t>({0, 1}));
  typed.insert("lrs", c10::List<double>({0.1}));
  GenericDict generic = str_dict();
  generic.insert("params", any_list({int64_t{0}, int64_t{1}}));
  generic.insert("lrs", any_list({0.1}));
  EXPECT_EQ(to_bytes(typed), to_bytes(generic));
}

// ---- streaming ---------------------------------------------------------------------------------

TEST(CheckpointFormat, SinkReceivesTensorBytesStraightFromTensorMemory) {
  GenericDict state_dict = str_dict();
  std::vector<at::Tensor> tensors;
  for (int i = 0; i < 64; ++i) {
    tensors.push_back(torch::full({16 * 1024}, static_cast<float>(i)));  // 64 KiB each
    state_dict.insert("layer" + std::to_string(i) + ".weight", tensors.back());
  }
  struct Call {
    const void* data;
    size_t size;
  };
  std::vector<Call> calls;
  uint64_t seen = 0;
  const uint64_t total = write_checkpoint(state_dict, [&](const void* p, size_t n) {
    calls.push_back({p, n});
    seen += n;
  });
  EXPECT_EQ(seen, total);
  EXPECT_GT(total, 64u * 64 * 1024);

  size_t largest = 0;
  for (const auto& c : calls) largest = std::max(largest, c.size);
  EXPECT_LE(largest, 64u * 1024) << "the sink got a chunk larger than any tensor";
  for (const auto& t : tensors) {
    const bool direct = std::any_of(calls.begin(), calls.end(), [&](const Call& c) {
      return c.data == t.data_ptr() && c.size == t.nbytes();
    });
    EXPECT_TRUE(direct) << "a tensor's bytes were copied before reaching the sink";
  }
}

// What a zip writer hands its sink: small chunks verbatim, large ones (record data, passed
// straight from the caller's memory) as their address and size.
std::string stream_shape(const std::function<void(const ZipSink&)>& write) {
  std::string out;
  write([&](const void* p, size_t n) {
    if (n < (1u << 20)) {
      out.append(static_cast<const char*>(p), n);
    } else {
      out += "<" + std::to_string(reinterpret_cast<uintptr_t>(p)) + "," + std::to_string(n) + ">";
    }
  });
  return out;
}

std::string libtorch_shape(const std::vector<std::pair<std::string, std::string_view>>& records) {
  return stream_shape([&](const ZipSink& sink) {
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* p, size_t n) {
      sink(p, n);
      return n;
    });
    for (const auto& [name, data] : records) writer.writeRecord(name, data.data(), data.size());
    writer.writeEndOfFile();
  });
}

std::string our_shape(const std::vector<std::pair<std::string, std::string_view>>& records) {
  return stream_shape([&](const ZipSink& sink) {
    ZipStreamWriter zip(sink);
    for (const auto& [name, data] : records) zip.record(name, data.data(), data.size());
    zip.finish();
  });
}

// ckptledger's zip writer produces libtorch's archive byte for byte (so files keep their
// SHA-256 across the switch, and Python reads them as it reads torch.save's): empty, tiny and
// large records, long names, every padding length.
TEST(CheckpointFormat, ZipWriterWritesLibtorchsBytes) {
  std::string big(3 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7 + (i >> 9));
  std::vector<std::pair<std::string, std::string_view>> records = {
      {"data.pkl", std::string_view(big.data(), 165)},
      {"byteorder", "little"},
      {"data/0", std::string_view()},
      {"data/1", std::string_view(big.data() + 5, 3)},
      {"data/2", std::string_view(big.data() + 11, (1 << 20) + 13)},
      {std::string(300, 'n'), std::string_view(big.data(), 1000)},
      {"data/3", big}};
  for (int i = 0; i < 70; ++i) {
    records.push_back({"p/" + std::to_string(i), std::string_view(big.data() + i, i * 3)});
  }
  EXPECT_EQ(our_shape(records), libtorch_shape(records));
}

// Records of 4 GiB and more, and records that start past 4 GiB, take zip64 fields (local and
// central), 64-bit data descriptors and capped 32-bit fields exactly as libtorch writes them.
// The 4 GiB of zeros are an untouched anonymous mapping (the zero page: no memory is used).
TEST(CheckpointFormat, ZipWriterWritesLibtorchsZip64Records) {
  const size_t huge = (size_t{4} << 30) + 64;
  void* zeros =
      ::mmap(nullptr, huge, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  ASSERT_NE(zeros, MAP_FAILED);
  const std::string small(100, 's');
  const std::vector<std::pair<std::string, std::string_view>> records = {
      {"data.pkl", small},
      {"data/0", std::string_view(static_cast<const char*>(zeros), huge)},
      {"data/1", small},
      {"data/2", std::string_view()}};
  const std::string ours = our_shape(records);
  EXPECT_EQ(ours, libtorch_shape(records));
  // The zip64 fields: 0x0001 with 16 bytes (sizes of data/0), with 8 (offset of data/1).
  EXPECT_NE(ours.find(std::string("\x01\x00\x10\x00", 4)), std::string::npos)
      << "no zip64 size field: the test did not reach zip64";
  EXPECT_NE(ours.find(std::string("\x01\x00\x08\x00", 4)), std::string::npos)
      << "no zip64 offset field: the test did not reach zip64";
  ::munmap(zeros, huge);
}

struct InjectedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

TEST(CheckpointFormat, SinkExceptionPropagatesAndStopsTheStream) {
  const IValue ckpt = mmengine_like_checkpoint();
  size_t clean_calls = 0;
  write_checkpoint(ckpt, [&](const void*, size_t) { ++clean_calls; });
  ASSERT_GT(clean_calls, 10u);

  for (size_t fail_at = 0; fail_at < clean_calls; ++fail_at) {
    SCOPED_TRACE("sink fails at call " + std::to_string(fail_at));
    size_t calls = 0;
    EXPECT_THROW(write_checkpoint(ckpt,
                                  [&](const void*, size_t) {
                                    if (calls++ == fail_at) throw InjectedError("disk full");
                                  }),
                 InjectedError);
    EXPECT_EQ(calls, fail_at + 1) << "the sink was called after it threw";
  }
}

TEST(CheckpointFormat, UnsupportedValueIsInvalidArgumentNamingItsPath) {
  GenericDict inner = str_dict();
  inner.insert("device", IValue(c10::Device(c10::kCPU)));
  GenericDict ckpt = str_dict();
  ckpt.insert("meta", inner);
  const Error e = CatchError([&] { to_bytes(ckpt); });
  EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(std::string(e.what()).find("/meta/device"), std::string::npos) << e.what();

  GenericDict sparse = str_dict();
  sparse.insert("w", torch::eye(3).to_sparse());
  const Error s = CatchError([&] { to_bytes(sparse); });
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(std::string(s.what()).find("/w"), std::string::npos) << s.what();

  GenericDict complex = str_dict();
  complex.insert("z", torch::zeros({2}, torch::kComplexFloat));
  EXPECT_EQ(CatchError([&] { to_bytes(complex); }).code(), ErrorCode::kInvalidArgument);
}

// ---- Python interop ----------------------------------------------------------------------------

TEST(CheckpointFormat, PythonTorchLoadReadsNestedMmengineShapedDict) {
  TempDir dir;
  const std::string path = dir.file("epoch_2.pth");
  const IValue ckpt = mmengine_like_checkpoint();
  write_file(path, ckpt);

  const json py = run_python("'" + path + "'");
  const json& nodes = py.at("nodes");
  ExpectSameNodes(summarize(ckpt), nodes);
  ExpectLoadableWithWeightsOnly(py);

  // Spot checks of what MMEngine's resume reads.
  EXPECT_EQ(nodes.at("").at("keys"),
            json({"meta", "state_dict", "optimizer", "param_schedulers", "message_hub", "extras"}));
  EXPECT_EQ(nodes.at("/meta/epoch").at("value"), 2);
  EXPECT_EQ(nodes.at("/meta/dataset_meta").at("kind"), "none");
  EXPECT_EQ(nodes.at("/message_hub/runtime_info/best_score").at("value"), 0.5);
  EXPECT_EQ(nodes.at("/message_hub/runtime_info/keep_ckpt_ids"),
            json({{"kind", "list"}, {"len", 2}}));
  EXPECT_EQ(nodes.at("/message_hub/runtime_info/keep_ckpt_ids/[1]").at("value"), 2);
  EXPECT_EQ(nodes.at("/message_hub/runtime_info/last_ckpt").at("value"), "/x/epoch_2.pth");
  EXPECT_EQ(nodes.at("/optimizer/state").at("keys"), json({"#0", "#1"}));
  EXPECT_EQ(nodes.at("/optimizer/param_groups/[0]/betas").at("kind"), "tuple");
  EXPECT_EQ(nodes.at("/state_dict/head.fc.weight").at("stride"), json({1, 4}));
  EXPECT_EQ(nodes.at("/state_dict/backbone.bn.num_batches_tracked").at("shape"), json::array());
  EXPECT_EQ(nodes.at("/extras/rows").at("storage"), nodes.at("/extras/columns").at("storage"));
  EXPECT_EQ(nodes.at("/extras/rows").at("offset"), 4);
  EXPECT_EQ(nodes.at("/extras/half").at("dtype"), "float16");
  EXPECT_EQ(nodes.at("/extras/mask").at("sum"), 2.0);
  EXPECT_EQ(nodes.at("/extras/empty").at("shape"), json({0, 3}));
  EXPECT_EQ(nodes.at("/extras/param").at("requires_grad"), true);
}

TEST(CheckpointFormat, ReadsPythonTorchSaveOfMmengineCheckpoint) {
  TempDir dir;
  const std::string path = dir.file("py_epoch_2.pth");
  const json py = run_python("--save '" + path + "'");

  const IValue ckpt = read_checkpoint(path);
  const json nodes = summarize(ckpt);
  ExpectSameNodes(py.at("nodes"), nodes);

  // A module's state_dict is an OrderedDict with _metadata in Python: a plain dict here, in order.
  EXPECT_EQ(nodes.at("/state_dict").at("keys").front(), "0.weight");
  EXPECT_EQ(nodes.at("/state_dict/1.num_batches_tracked").at("dtype"), "int64");
  EXPECT_EQ(nodes.at("/optimizer/state").at("keys").size(), 6u);
  EXPECT_EQ(nodes.at("/message_hub/resumed_keys/epoch").at("value"), true);
  EXPECT_EQ(nodes.at("/extras/big_int").at("value"), (int64_t{1} << 40) + 3);

  // And it writes back into something Python reads the same.
  const std::string again = dir.file("rewritten.pth");
  write_file(again, ckpt);
  const json reread = run_python("'" + again + "'");
  ExpectSameNodes(py.at("nodes"), reread.at("nodes"));
  ExpectLoadableWithWeightsOnly(reread);
}

// ---- damage ------------------------------------------------------------------------------------

TEST(CheckpointFormat, TruncatedFileIsCorruptionNamingThePath) {
  TempDir dir;
  const std::string bytes = to_bytes(mmengine_like_checkpoint());
  for (size_t keep : {size_t{0}, size_t{10}, size_t{100}, bytes.size() / 2, bytes.size() - 200,
                      bytes.size() - 30, bytes.size() - 1}) {
    SCOPED_TRACE("keeping " + std::to_string(keep) + " of " + std::to_string(bytes.size()));
    const std::string path = dir.file("cut_" + std::to_string(keep) + ".pth");
    write_bytes(path, bytes.substr(0, keep));
    const Error e = CatchError([&] { read_checkpoint(path); });
    EXPECT_EQ(e.code(), ErrorCode::kCorruption) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(CheckpointFormat, NonZipFileIsCorruption) {
  TempDir dir;
  const std::string path = dir.file("notes.txt");
  write_bytes(path, std::string(4096, 'x') + "\nnot a checkpoint\n");
  const Error e = CatchError([&] { read_checkpoint(path); });
  EXPECT_EQ(e.code(), ErrorCode::kCorruption);
  EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
}

TEST(CheckpointFormat, FlippedByteInTensorPayloadIsCorruption) {
  TempDir dir;
  GenericDict ckpt = str_dict();
  ckpt.insert("w", torch::full({1024}, 1234.5f));
  std::string bytes = to_bytes(ckpt);
  const float value = 1234.5f;
  const std::string pattern = [&] {
    std::string s;
    for (int i = 0; i < 4; ++i) s.append(reinterpret_cast<const char*>(&value), sizeof(value));
    return s;
  }();
  const size_t payload = bytes.find(pattern);
  ASSERT_NE(payload, std::string::npos);
  bytes[payload + 2048] ^= 0x01;  // the middle of the 4 KiB record
  const std::string path = dir.file("flipped.pth");
  write_bytes(path, bytes);

  const Error e = CatchError([&] { read_checkpoint(path); });
  EXPECT_EQ(e.code(), ErrorCode::kCorruption);
  EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("data/0"), std::string::npos) << e.what();
}

TEST(CheckpointFormat, FlippedByteInPickleIsCorruption) {
  GenericDict ckpt = str_dict();
  ckpt.insert("a_rather_distinctive_key", int64_t{5});
  std::string bytes = to_bytes(ckpt);
  const size_t at = bytes.find("distinctive");
  ASSERT_NE(at, std::string::npos);
  bytes[at] ^= 0x20;
  const Error e = CatchError([&] { read_checkpoint_bytes(bytes, "mem.pth"); });
  EXPECT_EQ(e.code(), ErrorCode::kCorruption);
  EXPECT_NE(std::string(e.what()).find("data.pkl"), std::string::npos) << e.what();
}

TEST(CheckpointFormat, MissingFileIsNotFound) {
  TempDir dir;
  const std::string path = dir.file("never_written.pth");
  const Error e = CatchError([&] { read_checkpoint(path); });
  EXPECT_EQ(e.code(), ErrorCode::kNotFound);
  EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
}

TEST(CheckpointFormat, ArchiveWithoutDataPklIsCorruption) {
  const std::string bytes = archive_with({{"something_else", "x"}});
  EXPECT_EQ(CatchError([&] { read_checkpoint_bytes(bytes, "other.zip"); }).code(),
            ErrorCode::kCorruption);
}

TEST(CheckpointFormat, TensorReachingPastItsStorageIsCorruption) {
  // The hand-made pickle reads when the tensor fits its storage...
  const IValue fits = read_checkpoint_bytes(
      archive_with({{"data.pkl", tensor_pickle(0, 4)}, {"data/0", four_floats()}}));
  ASSERT_TRUE(fits.isTensor());
  EXPECT_TRUE(at::equal(fits.toTensor(), torch::tensor({1.0f, 2.0f, 3.0f, 4.0f})));

  // ...and is corruption when it reaches past it, or the record is shorter than its numel.
  for (const auto& [offset, size] : {std::pair<uint8_t, uint8_t>{0, 5}, {1, 4}, {200, 1}}) {
    const std::string bytes =
        archive_with({{"data.pkl", tensor_pickle(offset, size)}, {"data/0", four_floats()}});
    EXPECT_EQ(CatchError([&] { read_checkpoint_bytes(bytes); }).code(), ErrorCode::kCorruption);
  }
  const std::string short_record =
      archive_with({{"data.pkl", tensor_pickle(0, 4)}, {"data/0", four_floats().substr(0, 8)}});
  EXPECT_EQ(CatchError([&] { read_checkpoint_bytes(short_record); }).code(),
            ErrorCode::kCorruption);
}

// ---- Python objects: opaque values -------------------------------------------------------------

// A hand-made protocol-2 pickle in an archive, read.
IValue read_pickle(const std::string& pickle) {
  return read_checkpoint_bytes(archive_with({{"data.pkl", "\x80\x02" + pickle}}), "hand.pth");
}

Error pickle_error(const std::string& pickle) {
  return CatchError([&] { read_pickle(pickle); });
}

GenericDict object_at(const IValue& v) {
  EXPECT_TRUE(v.isGenericDict()) << v.tagKind();
  return v.toGenericDict();
}

// The elements of a tuple value.
std::vector<IValue> elements(const IValue& v) {
  EXPECT_TRUE(v.isTuple()) << v.tagKind();
  return v.isTuple() ? v.toTupleRef().elements().vec() : std::vector<IValue>{};
}

// The doubles in a string of little-endian float64 bytes.
std::vector<double> doubles_in(const std::string& bytes) {
  std::vector<double> out(bytes.size() / sizeof(double));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(double));
  return out;
}

TEST(CheckpointReader, MmengineHistoryBufferInHubReadsAsOpaqueValue) {
  TempDir dir;
  const std::string path = dir.file("mmengine_epoch_3.pth");
  const json py = run_python("--save-hub '" + path + "' 2");  // torch.save's default protocol

  const IValue ckpt = read_checkpoint(path);
  ExpectSameNodes(py.at("nodes"), summarize(ckpt));

  // Weights, optimizer and meta read bit for bit as from a file of those alone.
  const GenericDict got = ckpt.toGenericDict();
  const GenericDict plain = read_checkpoint(path + ".plain").toGenericDict();
  for (const char* key : {"meta", "state_dict", "optimizer"}) {
    ExpectSameValue(plain.at(key), got.at(key), std::string("/") + key);
  }
  EXPECT_EQ(got.at("meta").toGenericDict().at("epoch").toInt(), 3);

  // The HistoryBuffer: its class, no arguments, its __dict__ as the state.
  const GenericDict hub = got.at("message_hub").toGenericDict();
  const GenericDict loss = object_at(hub.at("log_scalars").toGenericDict().at("train/loss"));
  std::vector<std::string> keys;
  for (const auto& e : loss) keys.push_back(e.key().toStringRef());
  EXPECT_EQ(keys, (std::vector<std::string>{"__pickled__", "args", "state"}));
  EXPECT_EQ(loss.at("__pickled__").toStringRef(), "mmengine.logging.history_buffer.HistoryBuffer");
  EXPECT_TRUE(elements(loss.at("args")).empty());
  const GenericDict state = object_at(loss.at("state"));
  EXPECT_EQ(state.at("max_length").toInt(), 10);

  // Its numpy array: _reconstruct(ndarray, (0,), b"b") built with (1, shape, dtype, fortran,
  // the bytes).
  const GenericDict history = object_at(state.at("_log_history"));
  EXPECT_EQ(history.at("__pickled__").toStringRef(), "numpy.core.multiarray._reconstruct");
  const std::vector<IValue> args = elements(history.at("args"));
  ASSERT_EQ(args.size(), 3u);
  EXPECT_EQ(object_at(args[0]).at("__global__").toStringRef(), "numpy.ndarray");
  EXPECT_EQ(args[2].toStringRef(), "b");
  const std::vector<IValue> array = elements(history.at("state"));
  ASSERT_EQ(array.size(), 5u);
  EXPECT_EQ(elements(array[1]).at(0).toInt(), 2);  // shape (2,)
  const GenericDict dtype = object_at(array[2]);
  EXPECT_EQ(dtype.at("__pickled__").toStringRef(), "numpy.dtype");
  EXPECT_EQ(elements(dtype.at("args")).at(0).toStringRef(), "f8");
  EXPECT_FALSE(array[3].toBool());
  EXPECT_EQ(doubles_in(array[4].toStringRef()), (std::vector<double>{0.5, 0.25}));

  // numpy scalars of standard dtypes are plain values; others opaque.
  const GenericDict info = hub.at("runtime_info").toGenericDict();
  EXPECT_EQ(info.at("best_score").toDouble(), 0.5);
  EXPECT_EQ(info.at("best_epoch").toInt(), 3);
  EXPECT_EQ(info.at("iter").toInt(), 300);
  const GenericDict extras = got.at("extras").toGenericDict();
  EXPECT_EQ(extras.at("f32").toDouble(), static_cast<double>(0.1f));
  EXPECT_EQ(extras.at("f16").toDouble(), 1.5);
  EXPECT_TRUE(extras.at("flag").toBool());
  EXPECT_EQ(extras.at("u8").toInt(), 200);
  EXPECT_EQ(extras.at("i8").toInt(), -5);
  EXPECT_EQ(object_at(extras.at("u64_big")).at("__pickled__").toStringRef(),
            "numpy.core.multiarray.scalar");
  EXPECT_EQ(object_at(extras.at("complex")).at("__pickled__").toStringRef(),
            "numpy.core.multiarray.scalar");
  // Bytes are strings of their bytes; sets are their class called with a list.
  EXPECT_EQ(extras.at("bytes").toStringRef(), std::string("\x00\xffraw", 5));
  EXPECT_EQ(extras.at("empty_bytes").toStringRef(), "");
  EXPECT_EQ(object_at(extras.at("set")).at("__pickled__").toStringRef(), "builtins.set");
  // The list subclass holds its items in "listitems", once, shared by both references.
  const GenericDict tags = object_at(extras.at("tags"));
  EXPECT_EQ(tags.at("listitems").toListRef().size(), 2u);
  EXPECT_TRUE(extras.at("tags_again").isSameIdentity(extras.at("tags")));
}

TEST(CheckpointReader, EveryPickleProtocolReadsPythonObjectsAsDocumented) {
  TempDir dir;
  for (int protocol : {3, 4, 5}) {  // 2 is above
    SCOPED_TRACE("pickle protocol " + std::to_string(protocol));
    const std::string path = dir.file("hub_p" + std::to_string(protocol) + ".pth");
    const json py = run_python("--save-hub '" + path + "' " + std::to_string(protocol));
    const IValue ckpt = read_checkpoint(path);
    ExpectSameNodes(py.at("nodes"), summarize(ckpt));
    const GenericDict plain = read_checkpoint(path + ".plain").toGenericDict();
    for (const char* key : {"meta", "state_dict", "optimizer"}) {
      ExpectSameValue(plain.at(key), ckpt.toGenericDict().at(key), std::string("/") + key);
    }
  }
}

TEST(CheckpointReader, BareModelStateDictReadsAsDict) {
  TempDir dir;
  const std::string path = dir.file("weights.pth");
  const json py = run_python("--save-state-dict '" + path + "' ''");
  const IValue sd = read_checkpoint(path);
  ASSERT_TRUE(sd.isGenericDict());
  const json nodes = summarize(sd);
  ExpectSameNodes(py.at("nodes"), nodes);
  EXPECT_EQ(nodes.at("").at("keys"),
            json({"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                  "1.num_batches_tracked"}));
  EXPECT_EQ(sd.toGenericDict().keyType()->kind(), c10::TypeKind::StringType);
}

TEST(CheckpointReader, DdpModulePrefixedStateDictReadsWithItsKeys) {
  TempDir dir;
  const std::string path = dir.file("ddp_weights.pth");
  const json py = run_python("--save-state-dict '" + path + "' module.");
  const json nodes = summarize(read_checkpoint(path));
  ExpectSameNodes(py.at("nodes"), nodes);
  EXPECT_EQ(nodes.at("").at("keys").front(), "module.0.weight");
}

TEST(CheckpointReader, UnknownGlobalsReadAsOpaqueValues) {
  // A call of an unknown global, with no arguments: the class and empty "args".
  const GenericDict called =
      object_at(read_pickle("cmmengine.logging.history_buffer\nHistoryBuffer\n)R."s));
  ASSERT_EQ(called.size(), 2u);
  EXPECT_EQ(called.at("__pickled__").toStringRef(),
            "mmengine.logging.history_buffer.HistoryBuffer");
  EXPECT_TRUE(elements(called.at("args")).empty());

  // A class as a value, named as Python 3 names it.
  EXPECT_EQ(object_at(read_pickle("c__builtin__\nlist\n."s)).at("__global__").toStringRef(),
            "builtins.list");

  // NEWOBJ_EX with keywords; BUILD's state; SETITEMS on the object as (key, value) pairs.
  const GenericDict built = object_at(
      read_pickle("cm\nC\nK\x01\x85}X\x01\x00\x00\x00kK\x02s\x92"s  // C.__new__(C, 1, k=2)
                  "}X\x01\x00\x00\x00sK\x03sb"                      // BUILD {"s": 3}
                  "(K\x04K\x05u."));                                // SETITEMS 4: 5
  std::vector<std::string> keys;
  for (const auto& e : built) keys.push_back(e.key().toStringRef());
  EXPECT_EQ(keys,
            (std::vector<std::string>{"__pickled__", "args", "kwargs", "state", "dictitems"}));
  EXPECT_EQ(elements(built.at("args")).at(0).toInt(), 1);
  EXPECT_EQ(built.at("kwargs").toGenericDict().at("k").toInt(), 2);
  EXPECT_EQ(built.at("state").toGenericDict().at("s").toInt(), 3);
  const std::vector<IValue> pair = elements(built.at("dictitems").toListRef().at(0));
  EXPECT_EQ(pair.at(0).toInt(), 4);
  EXPECT_EQ(pair.at(1).toInt(), 5);

  // EMPTY_SET + ADDITEMS and FROZENSET.
  const GenericDict set = object_at(read_pickle("\x8f(K\x01K\x02\x90."s));
  EXPECT_EQ(set.at("__pickled__").toStringRef(), "builtins.set");
  EXPECT_EQ(elements(set.at("args")).at(0).toListRef().size(), 2u);
  EXPECT_EQ(object_at(read_pickle("(K\x01\x91."s)).at("__pickled__").toStringRef(),
            "builtins.frozenset");
}

TEST(CheckpointReader, MalformedObjectOpcodesAreCorruption) {
  for (const std::string& pickle : {
           "](K\x01\x90."s,                               // ADDITEMS to a list
           "K\x01)\x81."s,                                // NEWOBJ of an int
           "cm\nC\nK\x01\x81."s,                          // NEWOBJ arguments not a tuple
           "cm\nC\n)K\x01\x92."s,                         // NEWOBJ_EX keywords not a dict
           "ctorch._utils\n_rebuild_tensor_v2\n)\x81."s,  // NEWOBJ of a function
           "c_codecs\nencode\nX\x02\x00\x00\x00\xc4\x80X\x06\x00\x00\x00latin1\x86R."s,
           "K\x01\x91."s,      // FROZENSET without MARK
           "cm\nC\n)R\x90."s,  // ADDITEMS without MARK
       }) {
    SCOPED_TRACE("pickle " + hex_of(pickle));
    const Error e = pickle_error(pickle);
    EXPECT_EQ(e.code(), ErrorCode::kCorruption) << e.what();
    EXPECT_NE(std::string(e.what()).find("hand.pth"), std::string::npos) << e.what();
  }
}

TEST(CheckpointReader, DeeplyNestedContainersAreCorruptionNotACrash) {
  // 200,000 levels: destroying them by recursion would overflow the stack.
  const size_t n = 200000;
  std::string objects;
  for (size_t i = 0; i < n; ++i) objects += "cm\nC\n";
  objects += ")R";
  for (size_t i = 1; i < n; ++i) objects += "\x85R";  // C((C((...),)),)
  // Top down: each list is appended to its parent (fetched from the memo) before it is filled.
  const auto index = [](size_t i) {
    std::string le(4, '\0');
    for (int b = 0; b < 4; ++b) le[b] = static_cast<char>((i >> (8 * b)) & 0xFF);
    return le;
  };
  std::string top_down = "]r" + index(0);
  for (size_t i = 1; i < n; ++i) top_down += "j" + index(i - 1) + "]r" + index(i) + "a0";
  for (const std::string& pickle :
       {std::string(n, ']') + std::string(n - 1, 'a') + ".", objects + ".", top_down + "."}) {
    const Error e = pickle_error(pickle);
    EXPECT_EQ(e.code(), ErrorCode::kCorruption) << e.what();
  }
  // Built, then dropped (POP; BUILD's state on a dict) by a pickle that is otherwise fine.
  const std::string deep = std::string(n, ']') + std::string(n - 1, 'a');
  EXPECT_TRUE(read_pickle(deep + "0N."s).isNone());
  EXPECT_TRUE(read_pickle("}"s + deep + "b.").isGenericDict());
  EXPECT_TRUE(read_pickle(top_down + "0N."s).isNone());
}

TEST(CheckpointReader, TensorsAndStoragesItCannotBuildAreStillInvalidArgument) {
  for (const auto& [pickle, name] : std::vector<std::pair<std::string, std::string>>{
           {"ctorch._utils\n_rebuild_qtensor\n)R.", "_rebuild_qtensor"},
           {"ctorch\nComplexFloatStorage\n.", "ComplexFloatStorage"},
           {"\x82\x01.", "0x82"},  // EXT1: needs Python's extension registry
       }) {
    const Error e = pickle_error(pickle);
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
}

TEST(CheckpointWriter, OpaqueValueIsInvalidArgumentNamingItsPath) {
  GenericDict ckpt = str_dict();
  GenericDict hub = str_dict();
  GenericDict scalars = str_dict();
  scalars.insert("train/loss",
                 read_pickle("cmmengine.logging.history_buffer\nHistoryBuffer\n)R."s));
  hub.insert("log_scalars", scalars);
  ckpt.insert("message_hub", hub);
  const Error e = CatchError([&] { to_bytes(ckpt); });
  EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(std::string(e.what()).find("/message_hub/log_scalars/train/loss"), std::string::npos)
      << e.what();
  EXPECT_NE(std::string(e.what()).find("HistoryBuffer"), std::string::npos) << e.what();

  GenericList classes(c10::AnyType::get());
  classes.push_back(read_pickle("cnumpy\nndarray\n."s));
  EXPECT_EQ(CatchError([&] { to_bytes(classes); }).code(), ErrorCode::kInvalidArgument);

  // What decodes to plain values writes as usual.
  const IValue scalar = read_pickle(
      "cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nX\x02\x00\x00\x00"
      "f8\x89\x88\x87R"
      "(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
      "C\x08\x00\x00\x00\x00\x00\x00\xe0?\x86R."s);
  ASSERT_TRUE(scalar.isDouble());
  EXPECT_EQ(scalar.toDouble(), 0.5);
  GenericDict info = str_dict();
  info.insert("best_score", scalar);
  EXPECT_EQ(read_checkpoint_bytes(to_bytes(info)).toGenericDict().at("best_score").toDouble(), 0.5);
}

// ---- read_checkpoint_verified: load and SHA-256 in one read (verified resume) -----------------

TEST(CheckpointFormat, VerifiedReadGivesTheCheckpointOnlyWhenTheWholeFileMatches) {
  TempDir dir;
  GenericDict sd = str_dict();
  for (int i = 0; i < 6; ++i) sd.insert("big." + std::to_string(i), torch::randn({600, 1024}));
  for (int i = 0; i < 40; ++i) sd.insert("small." + std::to_string(i), torch::randn({i + 1}));
  sd.insert("empty", torch::zeros({0}));
  GenericDict ckpt = str_dict();
  ckpt.insert("meta", str_dict());
  ckpt.insert("state_dict", sd);
  const std::string path = dir.file("verified.pth");
  write_file(path, ckpt);
  uint64_t size = 0;
  const std::string digest = Sha256::file_hex(path, &size);
  for (int round = 0; round < 3; ++round) {  // the hashing thread races the reader differently
    VerifiedCheckpoint v = read_checkpoint_verified(path, digest);
    EXPECT_TRUE(v.matches);
    EXPECT_EQ(v.sha256, digest);
    EXPECT_EQ(v.bytes, size);
    ExpectSameValue(v.value, read_checkpoint(path));
  }
  VerifiedCheckpoint other = read_checkpoint_verified(path, std::string(64, 'a'));
  EXPECT_FALSE(other.matches);
  EXPECT_EQ(other.sha256, digest);
  EXPECT_TRUE(other.value.isNone()) << "a load that does not verify was handed out";
}

// The digest is of every byte of the file, including those the reader never looks at (here the
// version record): a change there still loads, and must not verify.
TEST(CheckpointFormat, VerifiedReadCoversBytesTheReaderSkips) {
  TempDir dir;
  GenericDict ckpt = str_dict();
  ckpt.insert("w", torch::full({1024}, 3.0f));
  std::string bytes = to_bytes(ckpt);
  const std::string path = dir.file("skipped.pth");
  write_bytes(path, bytes);
  const std::string committed = Sha256::file_hex(path);
  const size_t name = bytes.find("archive/version");
  ASSERT_NE(name, std::string::npos);
  const size_t header = name - 30;  // the local header that names it
  const size_t extra = static_cast<uint8_t>(bytes[header + 28]) |
                       (static_cast<size_t>(static_cast<uint8_t>(bytes[header + 29])) << 8);
  const size_t data = name + std::string("archive/version").size() + extra;
  ASSERT_EQ(bytes[data], '3');
  bytes[data] = '4';
  write_bytes(path, bytes);
  ASSERT_NO_THROW(read_checkpoint(path));  // the reader alone does not notice
  VerifiedCheckpoint v = read_checkpoint_verified(path, committed);
  EXPECT_FALSE(v.matches);
  EXPECT_EQ(v.sha256, Sha256::file_hex(path));
  EXPECT_TRUE(v.value.isNone());
}

// The CRC-32 a plain read checks is left to the digest: a flipped tensor byte does not verify.
TEST(CheckpointFormat, VerifiedReadOfAFlippedTensorByteDoesNotMatch) {
  TempDir dir;
  GenericDict ckpt = str_dict();
  ckpt.insert("w", torch::full({300000}, 1.5f));
  std::string bytes = to_bytes(ckpt);
  const std::string path = dir.file("flipped.pth");
  write_bytes(path, bytes);
  const std::string committed = Sha256::file_hex(path);
  bytes[bytes.size() / 2] ^= 0x10;  // inside the tensor's record
  write_bytes(path, bytes);
  EXPECT_EQ(CatchError([&] { read_checkpoint(path); }).code(), ErrorCode::kCorruption);
  VerifiedCheckpoint v = read_checkpoint_verified(path, committed);
  EXPECT_FALSE(v.matches);
  EXPECT_TRUE(v.value.isNone());
  EXPECT_EQ(
      CatchError([&] { read_checkpoint_verified(dir.file("missing.pth"), committed); }).code(),
      ErrorCode::kNotFound);
}

}  // namespace
}  // namespace ckptledger
