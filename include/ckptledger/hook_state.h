// HookState: what MMEngine keeps in its message hub for CheckpointHook (docs/behaviour.md: message
// hub values), plus what the ledger knows about files; HookStateFold builds it from events (one
// handler per kind).
//
// The live hook applies the same fold to the events it appends, so "live state == replayed
// state" holds by construction and is checked by a property test.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckptledger/event_handler.h"

namespace ckptledger {

struct BestState {
  double score = 0;
  std::string path;  // the best file
};

struct LiveFile {
  std::string role;  // "regular" | "best" | "published"
  int64_t step = 0;
  int64_t epoch = 0;
  int64_t iter = 0;
  int64_t bytes = 0;
  std::string digest;
  int64_t seq = 0;  // the save_committed / published event
  // A checkpoint of a job of several ranks (docs/distributed.md): its layout, the world size that
  // wrote it, and its parts in rank order (part 0 is the file itself). Empty for one process.
  std::string layout;
  int64_t world_size = 1;
  std::vector<std::string> part_paths;
  std::vector<int64_t> part_bytes;
  std::vector<std::string> part_sha256;
};

struct HookState {
  // --- the message hub ---
  std::map<std::string, BestState> best;  // by metric key
  std::string auto_key;                   // what 'auto' resolved to ("" = not yet)
  bool keep_tracked = false;              // keep_ckpt_ids is in the hub
  std::vector<int64_t> keep_ckpt_ids;
  std::string last_ckpt;  // "" = None
  // --- what the ledger knows ---
  std::map<std::string, LiveFile> live;                 // committed files not pruned
  std::map<int64_t, std::string> regular_path_by_step;  // newest committed regular file per step
  std::vector<std::string> regular_order;               // committed regular files, oldest first
  std::string config;                                   // the current run's config (JSON text)
  int64_t runs = 0;
  // --- what reconciliation at open checks against the disk ---
  struct Begun {
    int64_t step = 0, epoch = 0, iter = 0;
    // save_prepared: the bytes about to replace the file under its name (-1: none recorded), and
    // the save's payload, so that reconciliation can commit a replacement the rename completed.
    int64_t prepared_bytes = -1;
    std::string prepared_digest;
    std::string prepared_detail;
  };
  std::map<std::string, Begun> in_flight;           // save_begun without save_committed/failed
  std::set<std::string> pruned_pending;             // pruned, removal not yet confirmed
  std::set<std::pair<int64_t, int64_t>> validated;  // (epoch, iter) of complete validations
  std::set<std::string> reported_unknown;           // unknown files already reported
  // Written by this ledger, now neither live nor pending (recorded lost, corrupt, or torn): such a
  // file on disk is never reported as unknown.
  std::set<std::string> retired;
  // The other ranks' parts of each checkpoint retired as lost or corrupt: kept with it, never
  // taken for orphans (a commit under the same name drops them).
  std::map<std::string, std::vector<std::string>> retired_parts;

  // The hub values of this state that are set: best_score*, best_ckpt*, keep_ckpt_ids, last_ckpt.
  // `single` selects best_score/best_ckpt naming; `keys` are the indicator keys in order (their
  // entries are shown when set).
  nlohmann::json hub_info(bool single, const std::vector<std::string>& keys) const;
  friend bool operator==(const HookState& a, const HookState& b);
};

// Snapshots of a HookState (Ledger::put_snapshot / latest_snapshot): every field, cereal binary,
// behind the SHA-256 of those bytes. kHookStateFormat names the layout: change it whenever a field
// is added, removed or changes meaning (an old snapshot is then ignored, never misread).
inline constexpr const char* kHookStateFormat = "hook_state/4 cereal-binary-le sha256";
std::string serialize_state(const HookState& state);
// nullopt when the blob is not one serialize_state wrote (damaged, truncated, another layout).
std::optional<HookState> deserialize_state(const std::string& blob);

// Every path of `state` through `f` (a snapshot of a moved work_dir: Ledger::reroot).
void reroot_paths(HookState& state, const std::function<std::string(const std::string&)>& f);
// The parts' paths of `state` through `f`: a replay of a moved work_dir re-roots each event's path,
// not the part paths its payload lists, so every fold of such a ledger calls this after it.
void reroot_parts(HookState& state, const std::function<std::string(const std::string&)>& f);

class HookStateFold : public EventHandler {
 public:
  explicit HookStateFold(HookState& state) : s_(state) {}
  void on_run_started(const Event& e) override;
  void on_save_begun(const Event& e) override;
  void on_save_prepared(const Event& e) override;
  void on_save_failed(const Event& e) override;
  void on_recovered(const Event& e) override;
  void on_save_committed(const Event& e) override;
  void on_pruned(const Event& e) override;
  void on_best_updated(const Event& e) override;
  void on_published(const Event& e) override;
  void on_validated(const Event& e) override;

 private:
  void forget(const std::string& path);
  HookState& s_;
};

}  // namespace ckptledger
