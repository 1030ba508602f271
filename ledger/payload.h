// Typed event payloads <-> the `detail` column: cereal JSON, one object per payload, readable
// with SQLite's json_extract(detail, '$.field').
//
// A payload is a struct with a `uint32_t v` version field and a cereal serialize() (or save/load)
// that names every field with CEREAL_NVP. Fields are only ever added (with a version bump and a
// default for older rows), never renamed or retyped: they are part of the frozen format.
#pragma once

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <rapidjson/document.h>
#include <cereal/archives/json.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include "ckptledger/error.h"

namespace ckptledger {

template <class Payload>
std::string to_detail(const Payload& p) {
  std::ostringstream os;
  {
    cereal::JSONOutputArchive ar(os, cereal::JSONOutputArchive::Options::NoIndent());
    const_cast<Payload&>(p).serialize(ar);  // cereal's serialize() is non-const by convention
  }
  // One line: JSON never has a raw newline inside a string (it is escaped), so all are layout.
  std::string out = os.str();
  out.erase(std::remove(out.begin(), out.end(), '\n'), out.end());
  return out;
}

// Reads a payload's fields from its detail JSON, parsed in memory. It is the input archive for
// from_detail: the payloads' serialize() only names fields (CEREAL_NVP), which is all it handles
// (numbers, bools, strings and vectors of them), with cereal's JSON semantics: fields are found
// by name, a missing or mistyped one is an error. cereal's own JSONInputArchive reads through
// std::istream one character at a time (istream::peek per character): replaying a long ledger
// spent most of its time there.
class DetailReader {
 public:
  using is_loading = std::true_type;
  using is_saving = std::false_type;

  DetailReader(const std::string& detail, int64_t seq) : seq_(seq) {
    doc_.Parse(detail.empty() ? "{}" : detail.c_str(), detail.empty() ? 2 : detail.size());
    if (doc_.HasParseError() || !doc_.IsObject()) fail("not a JSON object");
  }
  template <class... Items>
  DetailReader& operator()(Items&&... items) {
    (read(items), ...);
    return *this;
  }

 private:
  template <class T>
  void read(const cereal::NameValuePair<T>& nvp) {
    auto it = doc_.FindMember(nvp.name);
    if (it == doc_.MemberEnd()) fail(std::string("no field '") + nvp.name + "'");
    load(it->value, nvp.value, nvp.name);
  }
  void load(const rapidjson::Value& v, std::string& out, const char* name) const {
    if (!v.IsString()) fail(std::string("field '") + name + "' is not a string");
    out.assign(v.GetString(), v.GetStringLength());
  }
  void load(const rapidjson::Value& v, bool& out, const char* name) const {
    if (!v.IsBool()) fail(std::string("field '") + name + "' is not a bool");
    out = v.GetBool();
  }
  void load(const rapidjson::Value& v, double& out, const char* name) const {
    if (!v.IsNumber()) fail(std::string("field '") + name + "' is not a number");
    out = v.GetDouble();
  }
  template <class T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  void load(const rapidjson::Value& v, T& out, const char* name) const {
    if (std::is_signed_v<T> ? !v.IsInt64() : !v.IsUint64()) {
      fail(std::string("field '") + name + "' is not an integer of its type");
    }
    if constexpr (std::is_signed_v<T>) {
      out = static_cast<T>(v.GetInt64());
    } else {
      out = static_cast<T>(v.GetUint64());
    }
  }
  template <class T>
  void load(const rapidjson::Value& v, std::vector<T>& out, const char* name) const {
    if (!v.IsArray()) fail(std::string("field '") + name + "' is not an array");
    out.resize(v.Size());
    for (rapidjson::SizeType i = 0; i < v.Size(); ++i) load(v[i], out[i], name);
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw_error(ErrorCode::kCorruption,
                "event seq " + std::to_string(seq_) + ": unreadable detail: " + what);
  }

  rapidjson::Document doc_;
  int64_t seq_;
};

template <class Payload>
Payload from_detail(const std::string& detail, int64_t seq) {
  Payload p;
  DetailReader ar(detail, seq);
  p.serialize(ar);
  return p;
}

}  // namespace ckptledger
