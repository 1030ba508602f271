// The hook's event payloads (the `detail` JSON of each event kind it appends; ledger/payload.h).
//
// FROZEN once released: fields are only added, with a version bump; old rows keep loading.
// json_extract(detail, '$.<field>') reads every field below from SQL.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ledger/payload.h"

namespace ckptledger {

// run_started: a process opened the ledger to train.
struct RunStartedPayload {
  uint32_t v = 1;
  std::string config;  // the hook config as JSON text (HookConfig::to_json)
  std::string work_dir;
  std::string out_dir;
  int64_t pid = 0;
  std::string host;
  bool resume = false;  // false: the hook state starts fresh (MMEngine: a new message hub)
  std::string version;  // ckptledger version
  template <class A>
  void serialize(A& ar) {
    ar(CEREAL_NVP(v), CEREAL_NVP(config), CEREAL_NVP(work_dir), CEREAL_NVP(out_dir),
       CEREAL_NVP(pid), CEREAL_NVP(host), CEREAL_NVP(resume), CEREAL_NVP(version));
  }
};

// config_changed: this run's config differs from the previous run's.
struct ConfigChangedPayload {
  uint32_t v = 1;
  std::vector<std::string> changed;  // option names
  std::string previous;              // JSON text
  std::string current;               // JSON text
  template <class A>
  void serialize(A& ar) {
    ar(CEREAL_NVP(v), CEREAL_NVP(changed), CEREAL_NVP(previous), CEREAL_NVP(current));
  }
};

// save_begun / save_committed / save_failed.
struct SavePayload {
  uint32_t v = 1;
  std::string role;  // "regular" | "best"
  std::string key;   // best: the metric key
  // regular: rotation is on (max_keep_ckpts > 0) and keep_ckpt_ids is the hub list after the save.
  bool keep_tracked = false;
  std::vector<int64_t> keep_ckpt_ids;
  std::string error;  // save_failed
  // Microseconds the training thread waited for a free staging buffer set (back-pressure).
  int64_t stall_us = 0;
  // v2: a save of a job of several ranks (docs/distributed.md). Written only there: a save of one
  // process stays v1. The part lists are in rank order (part 0 is the event's path; "main" has
  // that one part).
  std::string layout;  // "main" | "spread" | "sharded"
  int64_t world_size = 1;
  std::vector<std::string> part_paths;
  std::vector<int64_t> part_bytes;
  std::vector<std::string> part_sha256;
  std::vector<int64_t> part_stall_us;  // each rank's training-thread stall for its part
  int64_t coord_us = 0;                // rank 0: the exchange and the commit (no writes), in us
  template <class A>
  void serialize(A& ar) {
    ar(CEREAL_NVP(v), CEREAL_NVP(role), CEREAL_NVP(key), CEREAL_NVP(keep_tracked),
       CEREAL_NVP(keep_ckpt_ids), CEREAL_NVP(error), CEREAL_NVP(stall_us));
    if (v >= 2) {
      ar(CEREAL_NVP(layout), CEREAL_NVP(world_size), CEREAL_NVP(part_paths), CEREAL_NVP(part_bytes),
         CEREAL_NVP(part_sha256), CEREAL_NVP(part_stall_us), CEREAL_NVP(coord_us));
    }
  }
};

// save_prepared: a save about to replace a file under its name (docs/crash-safety.md). Holds the
// whole commit the save will append, so that reconciliation can append it if the process dies
// between the rename and the commit: the save_committed's payload, and the events committed with
// it (pruned, best_updated).
struct PreparedEvent {
  std::string kind;  // event kind name
  std::string path;
  int64_t step = 0, epoch = 0, iter = 0;
  std::string metric;
  bool has_score = false;
  double score = 0;
  std::string detail;
  template <class A>
  void serialize(A& ar) {
    ar(CEREAL_NVP(kind), CEREAL_NVP(path), CEREAL_NVP(step), CEREAL_NVP(epoch), CEREAL_NVP(iter),
       CEREAL_NVP(metric), CEREAL_NVP(has_score), CEREAL_NVP(score), CEREAL_NVP(detail));
  }
};
struct PreparedPayload {
  uint32_t v = 1;
  std::string commit;             // the save_committed's detail (a SavePayload)
  std::vector<std::string> then;  // the rest of its transaction, in order: PreparedEvent JSON
  template <class A>
  void serialize(A& ar) {
    ar(CEREAL_NVP(v), CEREAL_NVP(commit), CEREAL_NVP(then));
  }
};

// pruned: a file was removed (after what supersedes it was committed).
struct PrunePayload {
  uint32_t v = 1;
  std::string reason;         // "rotation" | "best_replaced" | "keep_trim"
  std::string superseded_by;  // the committed file that made it redundant ("" for keep_trim)
  bool keep_tracked = false;  // keep_trim: keep_ckpt_ids is the hub list after the trim
  std::vector<int64_t> keep_ckpt_ids;
  bool existed = true;  // false: the file was already gone
  template <class A>
  void serialize(A& ar) {
    ar(CEREAL_NVP(v), CEREAL_NVP(reason), CEREAL_NVP(superseded_by), CEREAL_NVP(keep_tracked),
       CEREAL_NVP(keep_ckpt_ids), CEREAL_NVP(existed));
  }
};

// best_updated: metric improved; the event's path is the new best file (committed in the same
// transaction), metric/score its key and value.
struct BestPayload {
  uint32_t v = 1;
  std::string rule;           // "greater" | "less"
  std::string previous_path;  // "" when there was none
  bool had_previous_score = false;
  double previous_score = 0;
  template <class A>
  void serialize(A& ar) {
    ar(CEREAL_NVP(v), CEREAL_NVP(rule), CEREAL_NVP(previous_path), CEREAL_NVP(had_previous_score),
       CEREAL_NVP(previous_score));
  }
};

// validated: a validation ran. metrics: the dict in evaluator order (numbers; None as "None",
// non-finite as "nan"/"inf"/"-inf"). auto_key: what 'auto' resolved to at this validation.
struct ValidatedPayload {
  uint32_t v = 1;
  std::vector<std::pair<std::string, std::optional<double>>> metrics;  // written, not read back
  std::string auto_key;
  template <class A>
  void save(A& ar) const {
    ar(CEREAL_NVP(v));
    ar.setNextName("metrics");
    ar.startNode();
    for (const auto& [key, value] : metrics) {
      if (!value) {
        ar(cereal::make_nvp(key.c_str(), std::string("None")));
      } else if (std::isnan(*value)) {
        ar(cereal::make_nvp(key.c_str(), std::string("nan")));
      } else if (std::isinf(*value)) {
        ar(cereal::make_nvp(key.c_str(), std::string(*value > 0 ? "inf" : "-inf")));
      } else {
        ar(cereal::make_nvp(key.c_str(), *value));
      }
    }
    ar.finishNode();
    ar(CEREAL_NVP(auto_key));
  }
  template <class A>
  void load(A& ar) {
    ar(CEREAL_NVP(v), CEREAL_NVP(auto_key));
  }
  template <class A>
  void serialize(A& ar) {
    if constexpr (A::is_saving::value) {
      save(ar);
    } else {
      load(ar);
    }
  }
};

// resumed: the process loaded this checkpoint (the event's path) to continue training.
struct ResumedPayload {
  uint32_t v = 1;
  std::string source;    // "auto" | "load_from"
  std::string rejected;  // newer candidates that failed verification, and why
  template <class A>
  void serialize(A& ar) {
    ar(CEREAL_NVP(v), CEREAL_NVP(source), CEREAL_NVP(rejected));
  }
};

// recovered: a reconciliation finding at open (RocksDB WalSet::CheckWals): the ledger checked
// against the disk. finding: "torn_save" (save_begun without commit: the process died while
// writing), "prune_completed" (a decided prune whose file was still there), "lost" (a committed
// file is missing), "corrupt" (size or SHA-256 differs from the commit), "stray_temp" (a temp file
// no save accounts for), "unknown_file" (a checkpoint-like file the ledger never wrote; left
// alone), "stale_last_checkpoint" (rewritten to the ledger's last checkpoint).
struct RecoveredPayload {
  uint32_t v = 1;
  std::string finding;
  std::string action;  // what was done: "removed temp file", "removed", "none", ...
  std::string detail;  // human-readable specifics (expected vs found)
  template <class A>
  void serialize(A& ar) {
    ar(CEREAL_NVP(v), CEREAL_NVP(finding), CEREAL_NVP(action), CEREAL_NVP(detail));
  }
};

// published: a slim copy (the event's path) of `source` with only `keys`.
struct PublishedPayload {
  uint32_t v = 1;
  std::string source;
  std::vector<std::string> keys;
  bool already_present = false;  // the same content was published before: no second file
  template <class A>
  void serialize(A& ar) {
    ar(CEREAL_NVP(v), CEREAL_NVP(source), CEREAL_NVP(keys), CEREAL_NVP(already_present));
  }
};

}  // namespace ckptledger
