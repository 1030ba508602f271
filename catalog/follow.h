// LedgerFollower: reads a ledger's committed events as they commit, for `ckptledger watch` and the
// HTTP server's event stream (docs/serve.md).
//
// Contract:
//  - Read-only: events are read through a Catalog (never the writer's lock, never a byte written).
//  - A cursor is the last seq a consumer has seen; `events_after(cursor)` returns the history rows
//    with seq > cursor in seq order. Seqs are dense and events are never updated or deleted, so a
//    consumer that advances its cursor to each row it handled misses nothing and sees nothing
//    twice, across its own restarts and across the writer's crashes and restarts (the file stays; a
//    new writer appends to it).
//  - Waiting is not polling: an inotify watch on the ledger's directory (the ledger file and its
//    -wal) wakes `wait()`; a wake re-reads only when `PRAGMA data_version` (or the first open) says
//    the database changed. `wait()` also returns after its timeout, so a filesystem without inotify
//    (a network mount) is still followed, at that period.
//  - The ledger need not exist yet when the follower is made on a work_dir: `ready()` stays false
//    until a writer creates it.
// Thread safety: one follower per thread (it owns a Catalog). `notify_fd()` may be handed to an
// event loop (readable = something changed; call `drain()` then).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "catalog/catalog.h"

namespace ckptledger {

class LedgerFollower {
 public:
  // `ledger_or_work_dir`: the ledger file, or a work_dir holding (or about to hold)
  // ckptledger.sqlite. Throws Error(kNotFound) when neither the file nor its directory exists.
  // `notify`: false makes a follower that never waits (no inotify instance: the server's query
  // threads read through such followers; the per-user inotify limit is small).
  explicit LedgerFollower(const std::string& ledger_or_work_dir, bool notify = true);
  ~LedgerFollower();
  LedgerFollower(const LedgerFollower&) = delete;
  LedgerFollower& operator=(const LedgerFollower&) = delete;

  const std::string& ledger_path() const { return ledger_path_; }

  // True once the ledger is open (opens it when it has appeared). A ledger that exists but cannot
  // be opened (corrupt, foreign, newer) throws; one being created right now is retried for up to
  // `kCreateGrace` before its error is thrown.
  bool ready();
  Catalog& catalog();  // requires ready()

  // The newest committed seq (0: none, or no ledger yet).
  int64_t last_seq();
  // History rows (catalog/report.h's history_rows form) with seq > cursor, of the given kinds
  // (empty: all), at most `batch` of them (the oldest).
  nlohmann::ordered_json events_after(int64_t cursor, const std::vector<std::string>& kinds,
                                      int64_t batch = 1000);

  // Blocks until the ledger may have changed, or `timeout` passed. Returns true when the database
  // changed since the previous call (or the ledger appeared).
  bool wait(std::chrono::milliseconds timeout);
  // For event loops: readable when the ledger's directory saw a change; `drain()` consumes what
  // is pending and says whether any of it was about the ledger or its -wal (other files written
  // beside the ledger, such as checkpoints, are no reason to look). -1 without inotify.
  int notify_fd() const { return inotify_fd_; }
  bool drain();
  // True when the database changed since the previous call (PRAGMA data_version, or a first open,
  // or a ledger replaced by another file under its name, which is then followed from its start).
  bool changed();

  static constexpr std::chrono::milliseconds kCreateGrace{5000};

 private:
  std::string ledger_path_;
  std::string dir_;
  std::unique_ptr<Catalog> catalog_;
  dev_t dev_ = 0;  // the file catalog_ reads
  ino_t ino_ = 0;
  int inotify_fd_ = -1;
  int64_t data_version_ = -1;
  std::chrono::steady_clock::time_point first_failure_{};
  bool failing_ = false;
};

}  // namespace ckptledger
