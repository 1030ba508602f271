#include "ckptledger/event.h"

#include <array>

#include <nlohmann/json.hpp>

#include "ledger/sha256.h"

namespace ckptledger {
namespace {

// Index = kind number. Frozen together with migrations/0001_events.sql.
constexpr std::array<const char*, kMaxEventKind + 1> kKindNames = {"",
                                                                   "run_started",
                                                                   "save_begun",
                                                                   "save_committed",
                                                                   "save_failed",
                                                                   "pruned",
                                                                   "best_updated",
                                                                   "published",
                                                                   "resumed",
                                                                   "recovered",
                                                                   "run_finished",
                                                                   "validated",
                                                                   "config_changed",
                                                                   "save_prepared"};

nlohmann::json opt(const std::optional<int64_t>& v) { return v ? nlohmann::json(*v) : nullptr; }
nlohmann::json opt(const std::string& v) {
  return v.empty() ? nlohmann::json() : nlohmann::json(v);
}

}  // namespace

const char* event_kind_name(EventKind kind) {
  auto i = static_cast<int32_t>(kind);
  return (i >= 1 && i <= kMaxEventKind) ? kKindNames[i] : "unknown";
}

std::optional<EventKind> event_kind_from_name(std::string_view name) {
  for (int32_t i = 1; i <= kMaxEventKind; ++i) {
    if (name == kKindNames[i]) return static_cast<EventKind>(i);
  }
  return std::nullopt;
}

// FROZEN: the canonical form is part of the on-disk format (every stored hash depends on it).
// A JSON array, compact, in column order; NULL columns are JSON null; doubles in nlohmann's
// shortest round-trip form.
std::string canonical_event(const Event& e) {
  nlohmann::json a = nlohmann::json::array();
  a.push_back("ckptledger.event.v1");
  a.push_back(e.seq);
  a.push_back(e.run_id);
  a.push_back(e.ts_us);
  a.push_back(event_kind_name(e.kind));
  a.push_back(opt(e.step));
  a.push_back(opt(e.epoch));
  a.push_back(opt(e.iter));
  a.push_back(opt(e.path));
  a.push_back(opt(e.metric));
  a.push_back(e.score ? nlohmann::json(*e.score) : nlohmann::json());
  a.push_back(opt(e.bytes));
  a.push_back(opt(e.digest));
  a.push_back(opt(e.detail));
  return a.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string chain_hash(const std::string& prev_hash, const Event& e) {
  Sha256 h;
  h.update(prev_hash);
  h.update(canonical_event(e));
  return h.hex_digest();
}

}  // namespace ckptledger
