#include "ckptledger/hook_state.h"

#include <algorithm>
#include <sstream>

#include <cereal/archives/binary.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/vector.hpp>

#include "ledger/sha256.h"
#include "policy/hook_events.h"

namespace ckptledger {

// Every field of HookState, in declaration order (kHookStateFormat names this layout).
template <class A>
void serialize(A& ar, BestState& b) {
  ar(b.score, b.path);
}
template <class A>
void serialize(A& ar, LiveFile& f) {
  ar(f.role, f.step, f.epoch, f.iter, f.bytes, f.digest, f.seq, f.layout, f.world_size,
     f.part_paths, f.part_bytes, f.part_sha256);
}
template <class A>
void serialize(A& ar, HookState::Begun& b) {
  ar(b.step, b.epoch, b.iter, b.prepared_bytes, b.prepared_digest, b.prepared_detail);
}
template <class A>
void serialize(A& ar, HookState& s) {
  ar(s.best, s.auto_key, s.keep_tracked, s.keep_ckpt_ids, s.last_ckpt, s.live,
     s.regular_path_by_step, s.regular_order, s.config, s.runs, s.in_flight, s.pruned_pending,
     s.validated, s.reported_unknown, s.retired, s.retired_parts);
}

namespace {
constexpr size_t kDigestChars = 64;
}  // namespace

std::string serialize_state(const HookState& state) {
  std::ostringstream os;
  {
    cereal::BinaryOutputArchive ar(os);
    ar(const_cast<HookState&>(state));  // cereal's serialize() is non-const by convention
  }
  std::string body = os.str();
  return Sha256::hex(body) + body;
}

std::optional<HookState> deserialize_state(const std::string& blob) {
  // The digest first: cereal trusts the sizes it reads, so damaged bytes never reach it.
  if (blob.size() < kDigestChars) return std::nullopt;
  std::string_view body(blob.data() + kDigestChars, blob.size() - kDigestChars);
  if (Sha256::hex(body) != std::string_view(blob.data(), kDigestChars)) return std::nullopt;
  try {
    std::istringstream is{std::string(body)};
    HookState s;
    {
      cereal::BinaryInputArchive ar(is);
      ar(s);
    }
    if (is.peek() != std::char_traits<char>::eof()) return std::nullopt;  // bytes left over
    return s;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

nlohmann::json HookState::hub_info(bool single, const std::vector<std::string>& keys) const {
  nlohmann::json j = nlohmann::json::object();
  for (const std::string& indicator : keys) {
    std::string key = indicator == "auto" ? auto_key : indicator;
    auto it = best.find(key);
    if (key.empty() || it == best.end()) continue;
    j[single ? "best_score" : "best_score_" + key] = it->second.score;
    j[single ? "best_ckpt" : "best_ckpt_" + key] = it->second.path;
  }
  if (keep_tracked) j["keep_ckpt_ids"] = keep_ckpt_ids;
  if (!last_ckpt.empty()) j["last_ckpt"] = last_ckpt;
  return j;
}

bool operator==(const HookState& a, const HookState& b) {
  auto best_eq = [](const std::map<std::string, BestState>& x,
                    const std::map<std::string, BestState>& y) {
    return x.size() == y.size() &&
           std::equal(x.begin(), x.end(), y.begin(), [](const auto& p, const auto& q) {
             return p.first == q.first && p.second.score == q.second.score &&
                    p.second.path == q.second.path;
           });
  };
  auto live_eq = [](const std::map<std::string, LiveFile>& x,
                    const std::map<std::string, LiveFile>& y) {
    return x.size() == y.size() &&
           std::equal(x.begin(), x.end(), y.begin(), [](const auto& p, const auto& q) {
             return p.first == q.first && p.second.role == q.second.role &&
                    p.second.step == q.second.step && p.second.digest == q.second.digest &&
                    p.second.bytes == q.second.bytes &&
                    p.second.part_paths == q.second.part_paths &&
                    p.second.part_sha256 == q.second.part_sha256;
           });
  };
  return best_eq(a.best, b.best) && a.auto_key == b.auto_key && a.keep_tracked == b.keep_tracked &&
         a.keep_ckpt_ids == b.keep_ckpt_ids && a.last_ckpt == b.last_ckpt &&
         live_eq(a.live, b.live) && a.regular_path_by_step == b.regular_path_by_step &&
         a.regular_order == b.regular_order && a.config == b.config && a.runs == b.runs &&
         a.in_flight.size() == b.in_flight.size() && a.pruned_pending == b.pruned_pending &&
         a.validated == b.validated && a.reported_unknown == b.reported_unknown &&
         a.retired == b.retired && a.retired_parts == b.retired_parts;
}

void reroot_parts(HookState& s, const std::function<std::string(const std::string&)>& f) {
  for (auto& [path, lf] : s.live) {
    for (std::string& part : lf.part_paths) part = f(part);
  }
  for (auto& [path, parts] : s.retired_parts) {
    for (std::string& part : parts) part = f(part);
  }
}

void reroot_paths(HookState& s, const std::function<std::string(const std::string&)>& f) {
  for (auto& [key, b] : s.best) b.path = f(b.path);
  if (!s.last_ckpt.empty()) s.last_ckpt = f(s.last_ckpt);
  auto keys = [&](auto& m) {
    std::remove_reference_t<decltype(m)> out;
    for (auto& kv : m) out.emplace(f(kv.first), std::move(kv.second));
    m = std::move(out);
  };
  auto set = [&](std::set<std::string>& in) {
    std::set<std::string> out;
    for (const std::string& p : in) out.insert(f(p));
    in = std::move(out);
  };
  keys(s.live);
  keys(s.retired_parts);
  reroot_parts(s, f);
  keys(s.in_flight);
  for (auto& [step, path] : s.regular_path_by_step) path = f(path);
  for (std::string& p : s.regular_order) p = f(p);
  set(s.pruned_pending);
  set(s.reported_unknown);
  set(s.retired);
}

void HookStateFold::on_run_started(const Event& e) {
  auto p = from_detail<RunStartedPayload>(e.detail, e.seq);
  ++s_.runs;
  s_.config = p.config;
  if (!p.resume) {
    // MMEngine without resume starts with an empty message hub; the files stay known.
    s_.best.clear();
    s_.auto_key.clear();
    s_.keep_tracked = false;
    s_.keep_ckpt_ids.clear();
    s_.last_ckpt.clear();
  }
}

// A file that is gone (pruned) or unusable (lost, corrupt): no longer live, never resumed from,
// never rotated.
void HookStateFold::forget(const std::string& path) {
  s_.live.erase(path);
  s_.regular_order.erase(std::remove(s_.regular_order.begin(), s_.regular_order.end(), path),
                         s_.regular_order.end());
  for (auto it = s_.regular_path_by_step.begin(); it != s_.regular_path_by_step.end();) {
    it = it->second == path ? s_.regular_path_by_step.erase(it) : std::next(it);
  }
}

void HookStateFold::on_save_begun(const Event& e) {
  HookState::Begun b;
  b.step = e.step.value_or(0);
  b.epoch = e.epoch.value_or(0);
  b.iter = e.iter.value_or(0);
  s_.in_flight[e.path] = b;
}

void HookStateFold::on_save_prepared(const Event& e) {
  HookState::Begun& b = s_.in_flight[e.path];
  b.step = e.step.value_or(0);
  b.epoch = e.epoch.value_or(0);
  b.iter = e.iter.value_or(0);
  b.prepared_bytes = e.bytes.value_or(0);
  b.prepared_digest = e.digest;
  b.prepared_detail = e.detail;
}

void HookStateFold::on_save_failed(const Event& e) {
  // A save that failed after its save_prepared may have renamed its bytes into place (a failed
  // directory fsync, a failed commit): reconciliation decides from the file, as after a crash.
  auto it = s_.in_flight.find(e.path);
  if (it != s_.in_flight.end() && it->second.prepared_bytes < 0) s_.in_flight.erase(it);
}

void HookStateFold::on_recovered(const Event& e) {
  auto p = from_detail<RecoveredPayload>(e.detail, e.seq);
  if (p.finding == "torn_save") {
    s_.in_flight.erase(e.path);
    if (!s_.live.count(e.path)) s_.retired.insert(e.path);
    // A validation whose best save was torn did not complete: it is due again.
    s_.validated.erase({e.epoch.value_or(-1), e.iter.value_or(-1)});
  } else if (p.finding == "prune_completed") {
    s_.pruned_pending.erase(e.path);
  } else if (p.finding == "lost" || p.finding == "corrupt") {
    // Never chosen for resume again, never deleted by rotation; its other parts stay with it.
    auto live = s_.live.find(e.path);
    if (live != s_.live.end() && live->second.part_paths.size() > 1) {
      s_.retired_parts[e.path].assign(live->second.part_paths.begin() + 1,
                                      live->second.part_paths.end());
    }
    forget(e.path);
    s_.retired.insert(e.path);
  } else if (p.finding == "unknown_file") {
    s_.reported_unknown.insert(e.path);
  }
}

void HookStateFold::on_save_committed(const Event& e) {
  auto p = from_detail<SavePayload>(e.detail, e.seq);
  s_.in_flight.erase(e.path);
  s_.pruned_pending.erase(e.path);
  s_.retired.erase(e.path);
  s_.retired_parts.erase(e.path);
  LiveFile f;
  f.role = p.role;
  f.step = e.step.value_or(0);
  f.epoch = e.epoch.value_or(0);
  f.iter = e.iter.value_or(0);
  f.bytes = e.bytes.value_or(0);
  f.digest = e.digest;
  f.seq = e.seq;
  f.layout = p.layout;
  f.world_size = p.world_size;
  f.part_paths = p.part_paths;
  f.part_bytes = p.part_bytes;
  f.part_sha256 = p.part_sha256;
  s_.live[e.path] = f;
  if (p.role == "regular") {
    s_.last_ckpt = e.path;
    s_.regular_path_by_step[f.step] = e.path;
    s_.regular_order.erase(std::remove(s_.regular_order.begin(), s_.regular_order.end(), e.path),
                           s_.regular_order.end());
    s_.regular_order.push_back(e.path);
    if (p.keep_tracked) {
      s_.keep_tracked = true;
      s_.keep_ckpt_ids = p.keep_ckpt_ids;
    }
  }
}

void HookStateFold::on_pruned(const Event& e) {
  auto p = from_detail<PrunePayload>(e.detail, e.seq);
  if (!e.path.empty()) s_.pruned_pending.insert(e.path);
  forget(e.path);
  if (p.keep_tracked) {
    s_.keep_tracked = true;
    s_.keep_ckpt_ids = p.keep_ckpt_ids;
  }
}

void HookStateFold::on_best_updated(const Event& e) {
  s_.best[e.metric] = BestState{e.score.value_or(0), e.path};
}

void HookStateFold::on_published(const Event& e) {
  LiveFile f;
  f.role = "published";
  f.bytes = e.bytes.value_or(0);
  f.digest = e.digest;
  f.seq = e.seq;
  s_.live[e.path] = f;
}

void HookStateFold::on_validated(const Event& e) {
  auto p = from_detail<ValidatedPayload>(e.detail, e.seq);
  if (!p.auto_key.empty()) s_.auto_key = p.auto_key;
  s_.validated.insert({e.epoch.value_or(-1), e.iter.value_or(-1)});
}

}  // namespace ckptledger
