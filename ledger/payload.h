// Typed event payloads <-> the `detail` column: cereal JSON, one object per payload, readable
// with SQLite's json_extract(detail, '$.field').
//
// A payload is a struct with a `uint32_t v` version field and a cereal serialize() (or save/load)
// that names every field with CEREAL_NVP. Fields are only ever added (with a version bump and a
// default for older rows), never renamed or retyped: they are part of the frozen format.
#pragma once

#include <algorithm>
#include <sstream>
#include <string>

#include <cereal/archives/json.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include "ledger/error.h"

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

template <class Payload>
Payload from_detail(const std::string& detail, int64_t seq) {
  Payload p;
  try {
    std::istringstream is(detail.empty() ? std::string("{}") : detail);
    cereal::JSONInputArchive ar(is);
    p.serialize(ar);
  } catch (const cereal::Exception& e) {
    throw_error(ErrorCode::kCorruption,
                "event seq " + std::to_string(seq) + ": unreadable detail: " + e.what());
  }
  return p;
}

}  // namespace ckptledger
