// The ledger's unit of record: one immutable event.
//
// FORMAT (frozen once released; see README "Ledger schema"):
//   kind        name and number below; never renumbered, never reused; a new need is a new kind.
//   step/epoch/iter  the hook's counters when the event was decided (NULL when not meaningful).
//   path        absolute path of the file the event is about (NULL when none).
//   metric/score     metric key and value for best/validation events.
//   bytes/digest     size and SHA-256 (lowercase hex) of the file, for committed saves/publishes.
//   detail      a JSON object: the kind's typed payload, serialised with cereal (ledger/payload.h),
//               readable with SQLite's json_extract().
//   hash        SHA-256(prev_hash || canonical(event)) as lowercase hex, where prev_hash is the
//   hash
//               of seq-1 (64 '0' for seq 1; not stored: it is the previous row's hash).
//               canonical() is defined in event.cc and is part of the frozen format.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ckptledger {

enum class EventKind : int32_t {
  kRunStarted = 1,      // a process opened the ledger for writing (config in detail)
  kSaveBegun = 2,       // a checkpoint write was decided; its temp file may exist
  kSaveCommitted = 3,   // the file is durable under its final name (bytes, digest)
  kSaveFailed = 4,      // the write failed; nothing was pruned on its behalf
  kPruned = 5,          // a file was removed (reason in detail: rotation, best_replaced, ...)
  kBestUpdated = 6,     // a metric improved; path names the new best file
  kPublished = 7,       // a slim copy was written (path, digest; source in detail)
  kResumed = 8,         // the process resumed from a checkpoint (path)
  kRecovered = 9,       // reconciliation finding at open (what, path, action in detail)
  kRunFinished = 10,    // the process finished training normally
  kValidated = 11,      // a validation ran; the metrics dict is in detail
  kConfigChanged = 12,  // the hook config differs from the previous run's (diff in detail)
  // A save is about to replace an existing file under its name: the new bytes (bytes, digest)
  // are durable under the temp name (docs/crash-safety.md).
  kSavePrepared = 13,
};

inline constexpr int32_t kMaxEventKind = 13;

// Frozen names, as stored in events.kind and in the event_kinds table.
const char* event_kind_name(EventKind kind);
std::optional<EventKind> event_kind_from_name(std::string_view name);

struct Event {
  int64_t seq = 0;     // assigned by Ledger::append
  std::string run_id;  // assigned by Ledger::append when empty
  int64_t ts_us = 0;   // microseconds since the Unix epoch; assigned when 0
  EventKind kind = EventKind::kRunStarted;
  std::optional<int64_t> step;
  std::optional<int64_t> epoch;
  std::optional<int64_t> iter;
  std::string path;    // empty = NULL
  std::string metric;  // empty = NULL
  std::optional<double> score;
  std::optional<int64_t> bytes;
  std::string digest;     // empty = NULL
  std::string detail;     // JSON object text; empty = NULL
  std::string prev_hash;  // assigned by Ledger::append; filled by for_each(with_hashes)
  std::string hash;       // assigned by Ledger::append
};

// The canonical byte string hashed into the chain (frozen).
std::string canonical_event(const Event& e);
// SHA-256(prev_hash || canonical_event(e)) as lowercase hex.
std::string chain_hash(const std::string& prev_hash, const Event& e);

inline const std::string kGenesisHash(64, '0');

}  // namespace ckptledger
