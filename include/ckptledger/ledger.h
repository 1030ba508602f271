// Ledger: the append-only, hash-chained SQLite event log of one run directory.
//
// Contract:
//  - open() creates (or initialises a zero-length file), refuses anything that is not a ckptledger
//    ledger (not SQLite, truncated, another application's database, a newer schema) without writing
//    a byte, applies pending migrations in one transaction, and verifies the chain's tail.
//  - One writer at a time: a read-write open takes an exclusive lock that dies with the process
//    (an OFD lock on the database file) and records the holder (pid, host, since) in the `writer`
//    table; a second writer gets Error(kBusy) naming the holder. Read-only opens take no lock and
//    never block the writer (WAL).
//  - append()/append_batch() assign seq, ts_us, run_id, prev_hash and hash, and are durable when
//    they return (WAL, synchronous=FULL). Triggers refuse UPDATE and DELETE on events.
// Thread safety: one Ledger is used by one thread at a time (the caller serialises: the writer
// pool appends from its strand). Distinct read-only Ledgers may live on any threads.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ckptledger/error.h"
#include "ckptledger/event.h"
#include "ckptledger/event_handler.h"

namespace ckptledger {

namespace internal {
class Database;  // ledger/sqlite.h
}  // namespace internal

inline constexpr const char* kDefaultLedgerName = "ckptledger.sqlite";

enum class OpenMode { kReadWrite, kReadOnly };

struct LedgerOptions {
  OpenMode mode = OpenMode::kReadWrite;
  bool create_if_missing = true;  // read-write only
  int busy_timeout_ms = 5000;
  std::string run_id;  // empty: a fresh id (time + pid + random)
  // Stop migrating at this version (tests: build a ledger "as written by" an older binary).
  int migrate_to = -1;
  // Read-only, one look (the CLI's verbs): when the ledger has no -wal file and no process holds
  // the writer's lock, it is opened immutable — nothing is created beside it (no -wal, no -shm), so
  // a finished run can be read on read-only storage. A writer that starts meanwhile is not seen by
  // this connection. Followers (watch, serve) leave it false: they must see later commits.
  bool one_look = false;
};

struct WriterInfo {
  int64_t pid = 0;
  std::string host;
  int64_t since_us = 0;
};

// A snapshot of some fold of the events with seq <= `seq` (opaque bytes: the ledger knows nothing
// of what is folded). Derived data, a cache outside the hash chain (table `snapshots`, migration
// 0004): it may be dropped at any time; a reader without one replays every event.
struct Snapshot {
  int64_t seq = 0;
  std::string format;
  std::string blob;
};

struct VerifyReport {
  int64_t events_checked = 0;
  int64_t first_bad_seq = 0;  // 0 when the chain is intact
  std::string problem;        // empty when the chain is intact
  bool ok() const { return first_bad_seq == 0 && problem.empty(); }
};

// <work_dir>/ckptledger.sqlite when `file_or_work_dir` is a directory, else the path itself.
std::string resolve_ledger_path(const std::string& file_or_work_dir);

// Whether a process holds the writer's lock of the ledger file `path` right now (false when the
// file cannot be opened). Probed through the process's shared descriptor of the file: it takes no
// lock and closes nothing.
bool writer_lock_held(const std::string& path);

// A work_dir moved or copied elsewhere (docs/crash-safety.md: relocatable work dirs): runs whose
// ledger sat at its default place, <work_dir>/ckptledger.sqlite, recorded paths under their
// work_dir `from`; the ledger file is now in `to`, and so are those files.
struct MovedRoot {
  std::string from;
  std::string to;
};

class Ledger {
 public:
  // Opens the ledger file <path> (a directory is refused: see resolve_ledger_path).
  static std::unique_ptr<Ledger> open(const std::string& path, const LedgerOptions& options = {});
  ~Ledger();
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  const std::string& path() const { return path_; }
  const std::string& run_id() const { return run_id_; }
  bool read_only() const { return read_only_; }
  int schema_version() const;

  // Appends durably; fills the assigned fields of `e`. Returns the new seq.
  int64_t append(Event& e);
  // Appends every event in one transaction: all are durable, or none is.
  void append_batch(std::vector<Event>& events);

  // Events with after_seq < seq <= up_to_seq, in order. `fn` returns false to stop. The Event
  // reference is reused between calls (copy what you keep). Without hashes, prev_hash/hash are
  // left empty (faster; folds do not need them).
  void for_each(const std::function<bool(const Event&)>& fn, int64_t after_seq = 0,
                int64_t up_to_seq = std::numeric_limits<int64_t>::max(),
                bool with_hashes = true) const;
  // Folds events with seq <= up_to_seq into `handler` (without hashes); returns the number of
  // events applied.
  int64_t replay(EventHandler& handler,
                 int64_t up_to_seq = std::numeric_limits<int64_t>::max()) const;
  // Folds events with after_seq < seq <= up_to_seq (a fold resumed from a snapshot at after_seq),
  // with replay's checks that seqs run without gaps; returns the number of events applied.
  int64_t replay_range(EventHandler& handler, int64_t after_seq,
                       int64_t up_to_seq = std::numeric_limits<int64_t>::max()) const;

  // Records `blob` as the fold (in `format`) of the events with seq' <= seq, with the hash of event
  // `seq` (which must exist); keeps the newest kKeptSnapshots of each format. Writer only. A ledger
  // whose schema predates the snapshots table (opened with migrate_to) records nothing.
  static constexpr int kKeptSnapshots = 3;
  void put_snapshot(int64_t seq, const std::string& format, const std::string& blob);
  // The newest snapshot in `format` with seq <= up_to_seq whose recorded hash still equals the hash
  // of event `seq` in the events table: a ledger restored from a copy, rewritten, or given another
  // ledger's snapshots never uses one that is not a prefix of its own chain. nullopt when there is
  // none (or no snapshots table). The caller still checks that it can read the blob.
  std::optional<Snapshot> latest_snapshot(
      const std::string& format, int64_t up_to_seq = std::numeric_limits<int64_t>::max()) const;

  int64_t last_seq() const { return last_seq_; }
  // Whether this open created the ledger file (there was no file at the path before).
  bool created() const { return created_; }
  // Whether an event of one of `kinds` names `path` (an index lookup on events.path; `path` as
  // reroot gives it, every recorded form is looked up).
  bool names(const std::string& path, std::initializer_list<EventKind> kinds) const;

  // Relocation. Paths are recorded absolute; a run's paths under its work_dir are read re-rooted
  // into the ledger's present directory when the ledger sat at its default place in that
  // work_dir and has moved since (the whole directory moved or copied). Folds (replay,
  // replay_range) get re-rooted paths; verify() and for_each() see the rows as recorded; append()
  // records a file under the form it was first recorded under (recorded_form).
  const std::vector<MovedRoot>& moved_roots() const { return moved_; }
  // `path` as it is now: under a moved root's `to` instead of its `from`; others unchanged.
  std::string reroot(const std::string& path) const;
  // Every form under which a path that reroot() gives could be recorded (itself first).
  std::vector<std::string> recorded_as(const std::string& path) const;
  // The form `path` was first recorded under (itself when none): what append() records, so that
  // the rows about one file name it alike after a move.
  std::string recorded_form(const std::string& path) const;
  // Recomputes the whole hash chain and checks seq continuity.
  VerifyReport verify() const;
  // The same for the events after `after_seq`, linked to the recorded hash of event `after_seq`
  // (a point already verified, such as a snapshot's: its hash is the one the snapshot recorded).
  VerifyReport verify_from(int64_t after_seq) const;
  // The recorded writer (the current holder while it runs, or the last one after it exits).
  std::optional<WriterInfo> writer_info() const;

  // The connection, for the catalog's queries (internal: ledger/sqlite.h). Owned by the Ledger.
  const internal::Database& database() const;

 private:
  Ledger() = default;
  void refresh_tail();
  void find_moved_roots();

  std::string path_;
  std::string run_id_;
  bool read_only_ = false;
  bool created_ = false;
  std::unique_ptr<internal::Database> db_;
  int lock_fd_ = -1;  // holds the OFD writer lock; closed only after db_ (POSIX lock semantics)
  int64_t last_seq_ = 0;
  std::string last_hash_;
  std::vector<MovedRoot> moved_;
};

}  // namespace ckptledger
