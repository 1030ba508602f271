#include "ckptledger/ledger.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>

#include <fmt/format.h>

#include "ledger/migrations.h"

namespace ckptledger {
namespace {

constexpr int32_t kApplicationId = 0x636B706C;  // 'ckpl', set by migration 0001
// The writer lock is an OFD lock on one byte far beyond SQLite's own lock bytes (at 1 GiB).
constexpr off_t kWriterLockOffset = off_t{1} << 62;

int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "unknown-host";
  return buf;
}

std::string fresh_run_id() {
  std::random_device rd;
  return fmt::format("{}-{}-{:08x}", now_us(), ::getpid(), rd());
}

ErrorCode code_for(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return ErrorCode::kBusy;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return ErrorCode::kCorruption;
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
      return ErrorCode::kInvalidArgument;
    default:
      return ErrorCode::kIOError;
  }
}

[[noreturn]] void fail(sqlite3* db, int rc, const std::string& path, const std::string& what) {
  std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  throw_error(code_for(rc), fmt::format("ledger {}: {}: {}", path, what, msg));
}

// RAII prepared statement.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql, const std::string& path) : db_(db) {
    int rc = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr);
    if (rc != SQLITE_OK) fail(db, rc, path, std::string("prepare ") + sql);
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  sqlite3_stmt* get() const { return s_; }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
};

void exec(sqlite3* db, const std::string& sql, const std::string& path, const std::string& what) {
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    throw_error(code_for(rc), fmt::format("ledger {}: {}: {}", path, what, msg));
  }
}

int64_t query_int(sqlite3* db, const char* sql, const std::string& path) {
  Stmt s(db, sql, path);
  int rc = sqlite3_step(s.get());
  if (rc == SQLITE_ROW) return sqlite3_column_int64(s.get(), 0);
  if (rc == SQLITE_DONE) return 0;
  fail(db, rc, path, sql);
}

bool table_exists(sqlite3* db, const char* name, const std::string& path) {
  Stmt s(db, "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", path);
  sqlite3_bind_text(s.get(), 1, name, -1, SQLITE_STATIC);
  int rc = sqlite3_step(s.get());
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  fail(db, rc, path, "read schema");
}

uint32_t be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

// Damage detection before SQLite sees the file (LevelDB: detection separate from policy).
// Refuses files that are not SQLite or are shorter than their own header says, without writing.
void probe_header(const std::string& path, off_t size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw_error(ErrorCode::kIOError,
                fmt::format("ledger {}: cannot open for reading: {}", path, std::strerror(errno)));
  }
  unsigned char h[100] = {};
  ssize_t n = ::pread(fd, h, sizeof(h), 0);
  ::close(fd);
  if (n < 16 || std::memcmp(h, "SQLite format 3", 16) != 0) {
    throw_error(ErrorCode::kInvalidArgument,
                fmt::format("ledger {}: not an SQLite database (bad header, {} bytes); refusing to "
                            "touch it",
                            path, static_cast<int64_t>(size)));
  }
  if (n < 100) {
    throw_error(ErrorCode::kCorruption,
                fmt::format("ledger {}: truncated ({} bytes, shorter than the 100-byte header)",
                            path, static_cast<int64_t>(size)));
  }
  uint32_t page_size = (uint32_t{h[16]} << 8) | h[17];
  if (page_size == 1) page_size = 65536;
  uint32_t change_counter = be32(h + 24), pages = be32(h + 28), valid_for = be32(h + 92);
  // A crash in the middle of a WAL checkpoint can leave page 1 ahead of the file's length; the WAL
  // still holds the pages then, so the size check only applies when there is no WAL content.
  struct stat wal {};
  bool wal_has_content = ::stat((path + "-wal").c_str(), &wal) == 0 && wal.st_size > 0;
  if (!wal_has_content && change_counter == valid_for && pages > 0 &&
      static_cast<uint64_t>(size) < uint64_t{page_size} * pages) {
    throw_error(ErrorCode::kCorruption,
                fmt::format("ledger {}: truncated: the header says {} pages of {} bytes ({} bytes) "
                            "but the file has {} bytes",
                            path, pages, page_size, uint64_t{page_size} * pages,
                            static_cast<int64_t>(size)));
  }
}

void read_event(sqlite3_stmt* s, Event& e, const std::string& path) {
  auto text = [&](int col, std::string& out) {
    const unsigned char* t = sqlite3_column_text(s, col);
    if (t) {
      out.assign(reinterpret_cast<const char*>(t),
                 static_cast<size_t>(sqlite3_column_bytes(s, col)));
    } else {
      out.clear();
    }
  };
  auto opt_int = [&](int col, std::optional<int64_t>& out) {
    if (sqlite3_column_type(s, col) == SQLITE_NULL) {
      out.reset();
    } else {
      out = sqlite3_column_int64(s, col);
    }
  };
  e.seq = sqlite3_column_int64(s, 0);
  text(1, e.run_id);
  e.ts_us = sqlite3_column_int64(s, 2);
  const char* kind = reinterpret_cast<const char*>(sqlite3_column_text(s, 3));
  auto k = event_kind_from_name(kind ? kind : "");
  if (!k) {
    throw_error(ErrorCode::kCorruption, fmt::format("ledger {}: event seq {} has unknown kind '{}'",
                                                    path, e.seq, kind ? kind : "(null)"));
  }
  e.kind = *k;
  opt_int(4, e.step);
  opt_int(5, e.epoch);
  opt_int(6, e.iter);
  text(7, e.path);
  text(8, e.metric);
  if (sqlite3_column_type(s, 9) == SQLITE_NULL) {
    e.score.reset();
  } else {
    e.score = sqlite3_column_double(s, 9);
  }
  opt_int(10, e.bytes);
  text(11, e.digest);
  text(12, e.detail);
  if (sqlite3_column_count(s) > 13) {
    e.prev_hash.swap(e.hash);  // the row before's hash (for_each starts it at the genesis hash)
    text(13, e.hash);
  }
}

constexpr const char* kSelectEvents =
    "SELECT seq, run_id, ts_us, kind, step, epoch, iter, path, metric, score, bytes, digest, "
    "detail, hash FROM events WHERE seq > ? AND seq <= ? ORDER BY seq";
// Folds never look at the chain columns: leaving them out is a third less to decode.
constexpr const char* kSelectEventsNoHashes =
    "SELECT seq, run_id, ts_us, kind, step, epoch, iter, path, metric, score, bytes, digest, "
    "detail FROM events WHERE seq > ? AND seq <= ? ORDER BY seq";

}  // namespace

std::string resolve_ledger_path(const std::string& file_or_work_dir) {
  struct stat st {};
  if (::stat(file_or_work_dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    std::string dir = file_or_work_dir;
    if (!dir.empty() && dir.back() != '/') dir += '/';
    return dir + kDefaultLedgerName;
  }
  return file_or_work_dir;
}

std::unique_ptr<Ledger> Ledger::open(const std::string& path, const LedgerOptions& options) {
  std::unique_ptr<Ledger> l(new Ledger());
  l->path_ = path;
  l->read_only_ = options.mode == OpenMode::kReadOnly;
  l->run_id_ = options.run_id.empty() ? fresh_run_id() : options.run_id;

  struct stat st {};
  bool exists = ::stat(path.c_str(), &st) == 0;
  if (exists && S_ISDIR(st.st_mode)) {
    throw_error(ErrorCode::kInvalidArgument,
                fmt::format("ledger {}: is a directory, not a ledger file (the ledger of a run is "
                            "<work_dir>/{})",
                            path, kDefaultLedgerName));
  }
  if (exists && !S_ISREG(st.st_mode)) {
    throw_error(ErrorCode::kInvalidArgument, fmt::format("ledger {}: not a regular file", path));
  }
  if (!exists && (l->read_only_ || !options.create_if_missing)) {
    throw_error(ErrorCode::kNotFound, fmt::format("ledger {}: no such file", path));
  }
  l->created_ = !exists;
  // A hot rollback journal means a transaction (often the very first, creating the schema) died
  // half-way: page 1 may be zeros until SQLite rolls the journal back, so the header probe and the
  // immutable connection (which ignores journals) are skipped and SQLite recovers the file.
  struct stat journal {};
  const bool hot_journal =
      ::stat((path + "-journal").c_str(), &journal) == 0 && journal.st_size > 0;
  if (exists && st.st_size > 0 && !hot_journal) probe_header(path, st.st_size);

  if (!l->read_only_) {
    // The lock comes first: migrations and the writer row are written under it.
    l->lock_fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (l->lock_fd_ < 0) {
      throw_error(ErrorCode::kIOError, fmt::format("ledger {}: cannot open for writing: {}", path,
                                                   std::strerror(errno)));
    }
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = kWriterLockOffset;
    fl.l_len = 1;
    if (::fcntl(l->lock_fd_, F_OFD_SETLK, &fl) != 0) {
      int err = errno;
      std::string holder = "another process";
      if (err == EAGAIN || err == EACCES) {
        try {
          LedgerOptions ro;
          ro.mode = OpenMode::kReadOnly;
          if (auto w = Ledger::open(path, ro)->writer_info()) {
            holder =
                fmt::format("pid {} on host {} since {} (unix us)", w->pid, w->host, w->since_us);
          }
        } catch (const Error&) {
          // The holder may be creating the schema right now: no details to give yet.
        }
        throw_error(ErrorCode::kBusy,
                    fmt::format("ledger {}: already open for writing by {}; one writer at a time",
                                path, holder));
      }
      throw_error(ErrorCode::kIOError,
                  fmt::format("ledger {}: cannot lock: {}", path, std::strerror(err)));
    }
  }

  // Identity checks are reads only, on a probe connection: a foreign, newer or tampered file is
  // refused before any byte changes. Without a -wal file the main file holds everything, so the
  // probe opens it immutable and SQLite creates no -wal/-shm beside a file we may refuse.
  struct stat wal {};
  bool has_wal = ::stat((path + "-wal").c_str(), &wal) == 0;
  std::string probe_uri = "file:";
  for (char c : path) {
    if (c == '%' || c == '?' || c == '#') {
      probe_uri += fmt::format("%{:02X}", static_cast<unsigned char>(c));
    } else {
      probe_uri += c;
    }
  }
  const bool recover = hot_journal && !l->read_only_;
  probe_uri += recover ? "?mode=rw" : has_wal ? "?mode=ro" : "?immutable=1";
  int rc = sqlite3_open_v2(probe_uri.c_str(), &l->db_,
                           (recover ? SQLITE_OPEN_READWRITE : SQLITE_OPEN_READONLY) |
                               SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) fail(l->db_, rc, path, "open");
  sqlite3_extended_result_codes(l->db_, 1);
  sqlite3_busy_timeout(l->db_, options.busy_timeout_ms);
  int64_t app_id = 0, version = 0, tables = 0;
  if (exists && st.st_size > 0) {
    app_id = query_int(l->db_, "PRAGMA application_id", path);
    version = query_int(l->db_, "PRAGMA user_version", path);
    tables = query_int(l->db_, "SELECT count(*) FROM sqlite_master", path);
  }
  if (app_id != kApplicationId && (app_id != 0 || tables > 0 || version > 0)) {
    throw_error(ErrorCode::kInvalidArgument,
                fmt::format("ledger {}: an SQLite database of another application "
                            "(application_id {}, {} schema objects, no ckptledger events); "
                            "refusing to touch it",
                            path, app_id, tables));
  }
  int latest = latest_schema_version();
  if (version > latest) {
    throw_error(ErrorCode::kVersion,
                fmt::format("ledger {}: schema version {} is newer than this ckptledger supports "
                            "({}); use a newer ckptledger (ledgers are never downgraded)",
                            path, version, latest));
  }
  if (l->read_only_ && version == 0) {
    throw_error(ErrorCode::kNotFound, fmt::format("ledger {}: empty, not yet initialised", path));
  }
  if (version > 0) l->refresh_tail();
  sqlite3_close_v2(l->db_);
  l->db_ = nullptr;

  int flags = l->read_only_ ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE;
  rc = sqlite3_open_v2(path.c_str(), &l->db_, flags | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) fail(l->db_, rc, path, "open");
  sqlite3_extended_result_codes(l->db_, 1);
  sqlite3_busy_timeout(l->db_, options.busy_timeout_ms);
  // Replays scan the whole table: reading pages through mmap saves a copy per page.
  exec(l->db_, "PRAGMA mmap_size = 1073741824", path, "enable mmap");

  if (!l->read_only_) {
    // Every append writes its dirty pages (table leaf, index leaves) into the WAL and fdatasyncs
    // it: 1 KiB pages keep that to a few KiB, close to the cost of one small fdatasync.
    if (version == 0) exec(l->db_, "PRAGMA page_size = 1024", path, "set page size");
    exec(l->db_, "PRAGMA journal_mode=WAL", path, "enable WAL");
    exec(l->db_, "PRAGMA synchronous=FULL", path, "set synchronous=FULL");
    int target = options.migrate_to < 0 ? latest : std::min(options.migrate_to, latest);
    if (version < target) {
      exec(l->db_, "BEGIN IMMEDIATE", path, "begin migration");
      try {
        for (const Migration& m : embedded_migrations()) {
          if (m.version <= version || m.version > target) continue;
          exec(l->db_, m.sql, path, fmt::format("migration {:04d}_{}", m.version, m.name));
          exec(l->db_, fmt::format("PRAGMA user_version = {}", m.version), path,
               "record schema version");
        }
        exec(l->db_, "COMMIT", path, "commit migration");
      } catch (...) {
        sqlite3_exec(l->db_, "ROLLBACK", nullptr, nullptr, nullptr);
        throw;
      }
    }
    if (table_exists(l->db_, "writer", path)) {
      Stmt s(l->db_,
             "INSERT OR REPLACE INTO writer (id, pid, host, since_us, run_id) VALUES (1,?,?,?,?)",
             path);
      sqlite3_bind_int64(s.get(), 1, ::getpid());
      std::string host = host_name();
      sqlite3_bind_text(s.get(), 2, host.c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_int64(s.get(), 3, now_us());
      sqlite3_bind_text(s.get(), 4, l->run_id_.c_str(), -1, SQLITE_TRANSIENT);
      rc = sqlite3_step(s.get());
      if (rc != SQLITE_DONE) fail(l->db_, rc, path, "record writer");
    }
  }
  if (!table_exists(l->db_, "events", path)) {
    throw_error(ErrorCode::kCorruption, fmt::format("ledger {}: no events table", path));
  }
  l->refresh_tail();
  return l;
}

Ledger::~Ledger() {
  if (db_) sqlite3_close_v2(db_);
  // Closed after SQLite's own descriptors: closing any fd of the file drops this process's POSIX
  // locks on it, including SQLite's.
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

int Ledger::schema_version() const {
  return static_cast<int>(query_int(db_, "PRAGMA user_version", path_));
}

// Reads the chain's tail and checks that its last link recomputes (cheap tamper check at open;
// verify() checks the whole chain).
void Ledger::refresh_tail() {
  last_seq_ = 0;
  last_hash_ = kGenesisHash;
  Stmt s(db_,
         "SELECT seq, run_id, ts_us, kind, step, epoch, iter, path, metric, score, bytes, digest, "
         "detail, hash FROM events ORDER BY seq DESC LIMIT 2",
         path_);
  int rc = sqlite3_step(s.get());
  if (rc == SQLITE_DONE) return;
  if (rc != SQLITE_ROW) fail(db_, rc, path_, "read the last event");
  Event e;
  read_event(s.get(), e, path_);
  Event before;  // the link before the last one, for the last one's prev_hash
  before.hash = kGenesisHash;
  rc = sqlite3_step(s.get());
  if (rc == SQLITE_ROW) {
    read_event(s.get(), before, path_);
  } else if (rc != SQLITE_DONE) {
    fail(db_, rc, path_, "read the last events");
  }
  e.prev_hash = before.hash;
  if (chain_hash(e.prev_hash, e) != e.hash) {
    throw_error(ErrorCode::kCorruption,
                fmt::format("ledger {}: hash chain broken at seq {} (the last event was edited)",
                            path_, e.seq));
  }
  last_seq_ = e.seq;
  last_hash_ = e.hash;
}

void Ledger::append_batch(std::vector<Event>& events) {
  if (read_only_) {
    throw_error(ErrorCode::kInvalidArgument, fmt::format("ledger {}: opened read-only", path_));
  }
  if (events.empty()) return;
  const int64_t saved_seq = last_seq_;
  const std::string saved_hash = last_hash_;
  const bool batch = events.size() > 1;
  if (batch) exec(db_, "BEGIN IMMEDIATE", path_, "begin append");
  try {
    Stmt s(db_,
           "INSERT INTO events (seq, run_id, ts_us, kind, step, epoch, iter, path, metric, score, "
           "bytes, digest, detail, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
           path_);
    const int64_t ts = now_us();
    for (Event& e : events) {
      e.seq = last_seq_ + 1;
      if (e.run_id.empty()) e.run_id = run_id_;
      if (e.ts_us == 0) e.ts_us = ts;
      e.prev_hash = last_hash_;
      e.hash = chain_hash(e.prev_hash, e);
      sqlite3_stmt* st = s.get();
      auto opt_int = [&](int col, const std::optional<int64_t>& v) {
        if (v) {
          sqlite3_bind_int64(st, col, *v);
        } else {
          sqlite3_bind_null(st, col);
        }
      };
      auto opt_text = [&](int col, const std::string& v) {
        if (v.empty()) {
          sqlite3_bind_null(st, col);
        } else {
          sqlite3_bind_text(st, col, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
        }
      };
      sqlite3_bind_int64(st, 1, e.seq);
      sqlite3_bind_text(st, 2, e.run_id.data(), static_cast<int>(e.run_id.size()), SQLITE_STATIC);
      sqlite3_bind_int64(st, 3, e.ts_us);
      sqlite3_bind_text(st, 4, event_kind_name(e.kind), -1, SQLITE_STATIC);
      opt_int(5, e.step);
      opt_int(6, e.epoch);
      opt_int(7, e.iter);
      opt_text(8, e.path);
      opt_text(9, e.metric);
      if (e.score) {
        sqlite3_bind_double(st, 10, *e.score);
      } else {
        sqlite3_bind_null(st, 10);
      }
      opt_int(11, e.bytes);
      opt_text(12, e.digest);
      opt_text(13, e.detail);
      sqlite3_bind_text(st, 14, e.hash.data(), static_cast<int>(e.hash.size()), SQLITE_STATIC);
      int rc = sqlite3_step(st);
      if (rc != SQLITE_DONE) {
        fail(db_, rc, path_, fmt::format("append {} (seq {})", event_kind_name(e.kind), e.seq));
      }
      sqlite3_reset(st);
      last_seq_ = e.seq;
      last_hash_ = e.hash;
    }
    if (batch) exec(db_, "COMMIT", path_, "commit append");
  } catch (...) {
    if (batch) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    last_seq_ = saved_seq;
    last_hash_ = saved_hash;
    throw;
  }
}

int64_t Ledger::append(Event& e) {
  // A one-element batch runs in autocommit mode: one WAL commit, one fsync.
  std::vector<Event> one(1);
  one[0] = std::move(e);
  try {
    append_batch(one);
  } catch (...) {
    e = std::move(one[0]);
    throw;
  }
  e = std::move(one[0]);
  return e.seq;
}

void Ledger::for_each(const std::function<bool(const Event&)>& fn, int64_t after_seq,
                      int64_t up_to_seq, bool with_hashes) const {
  Stmt s(db_, with_hashes ? kSelectEvents : kSelectEventsNoHashes, path_);
  sqlite3_bind_int64(s.get(), 1, after_seq);
  sqlite3_bind_int64(s.get(), 2, up_to_seq);
  Event e;
  if (with_hashes && after_seq > 0) {
    Stmt h(db_, "SELECT hash FROM events WHERE seq = ?", path_);
    sqlite3_bind_int64(h.get(), 1, after_seq);
    if (sqlite3_step(h.get()) == SQLITE_ROW) {
      e.hash = reinterpret_cast<const char*>(sqlite3_column_text(h.get(), 0));
    }
  } else {
    e.hash = kGenesisHash;
  }
  for (;;) {
    int rc = sqlite3_step(s.get());
    if (rc == SQLITE_DONE) return;
    if (rc != SQLITE_ROW) fail(db_, rc, path_, "read events");
    read_event(s.get(), e, path_);
    if (!fn(e)) return;
  }
}

// A fold over a gap (or over rows out of order) is a state the writer never had. SQLite cannot
// see it when the main file and the -wal come from different moments (a copy taken while the
// ledger was written, a -wal copied later or deleted mid-checkpoint): pages of two moments then
// form valid b-trees whose scan skips or repeats rows. Checking that seqs run 1, 2, 3 ... up to the
// tail read at open turns that into an error (issue 5).
int64_t Ledger::replay(EventHandler& handler, int64_t up_to_seq) const {
  return replay_range(handler, 0, up_to_seq);
}

int64_t Ledger::replay_range(EventHandler& handler, int64_t after_seq, int64_t up_to_seq) const {
  int64_t n = after_seq;
  for_each(
      [&](const Event& e) {
        if (e.seq != n + 1) {
          throw_error(ErrorCode::kCorruption,
                      fmt::format("ledger {}: seq {} follows seq {}: events are missing or out of "
                                  "order (a copy of the ledger taken while it was written, or its "
                                  "-wal from another moment?); `ckptledger verify` checks the "
                                  "whole chain",
                                  path_, e.seq, n));
        }
        dispatch(e, handler);
        ++n;
        return true;
      },
      after_seq, up_to_seq, /*with_hashes=*/false);
  // Fewer events than the tail read at open: the scan lost some. (More is fine: a reader's tail
  // is from its open, and a writer may have appended since.)
  const int64_t expected = std::min(up_to_seq, last_seq_);
  if (n < expected) {
    throw_error(ErrorCode::kCorruption,
                fmt::format("ledger {}: {} events read in order, but the last event is seq {} "
                            "(a copy of the ledger taken while it was written, or its -wal from "
                            "another moment?)",
                            path_, n, expected));
  }
  return n - after_seq;
}

void Ledger::put_snapshot(int64_t seq, const std::string& format, const std::string& blob) {
  if (read_only_) {
    throw_error(ErrorCode::kInvalidArgument,
                fmt::format("ledger {}: put_snapshot on a read-only ledger", path_));
  }
  if (!table_exists(db_, "snapshots", path_)) return;  // a schema older than 0004 (migrate_to)
  std::string hash;
  {
    Stmt h(db_, "SELECT hash FROM events WHERE seq = ?", path_);
    sqlite3_bind_int64(h.get(), 1, seq);
    int rc = sqlite3_step(h.get());
    if (rc == SQLITE_DONE) {
      throw_error(ErrorCode::kInvalidArgument,
                  fmt::format("ledger {}: snapshot at seq {}: no such event", path_, seq));
    }
    if (rc != SQLITE_ROW) fail(db_, rc, path_, "read event hash");
    hash = reinterpret_cast<const char*>(sqlite3_column_text(h.get(), 0));
  }
  exec(db_, "BEGIN IMMEDIATE", path_, "begin snapshot");
  try {
    {
      Stmt s(db_, "INSERT OR REPLACE INTO snapshots (seq, hash, format, state) VALUES (?,?,?,?)",
             path_);
      sqlite3_bind_int64(s.get(), 1, seq);
      sqlite3_bind_text(s.get(), 2, hash.c_str(), static_cast<int>(hash.size()), SQLITE_STATIC);
      sqlite3_bind_text(s.get(), 3, format.c_str(), static_cast<int>(format.size()), SQLITE_STATIC);
      sqlite3_bind_blob64(s.get(), 4, blob.data(), blob.size(), SQLITE_STATIC);
      int rc = sqlite3_step(s.get());
      if (rc != SQLITE_DONE) fail(db_, rc, path_, "write snapshot");
    }
    {
      Stmt d(db_,
             "DELETE FROM snapshots WHERE format = ?1 AND seq NOT IN "
             "(SELECT seq FROM snapshots WHERE format = ?1 ORDER BY seq DESC LIMIT ?2)",
             path_);
      sqlite3_bind_text(d.get(), 1, format.c_str(), static_cast<int>(format.size()), SQLITE_STATIC);
      sqlite3_bind_int(d.get(), 2, kKeptSnapshots);
      int rc = sqlite3_step(d.get());
      if (rc != SQLITE_DONE) fail(db_, rc, path_, "trim snapshots");
    }
    exec(db_, "COMMIT", path_, "commit snapshot");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

std::optional<Snapshot> Ledger::latest_snapshot(const std::string& format,
                                                int64_t up_to_seq) const {
  if (!table_exists(db_, "snapshots", path_)) return std::nullopt;
  // Only a snapshot of a prefix of this chain: the hash recorded with it must be the hash of its
  // event here (each hash covers every event before it).
  Stmt s(db_,
         "SELECT s.seq, s.state FROM snapshots s JOIN events e ON e.seq = s.seq "
         "WHERE s.format = ? AND s.seq <= ? AND e.hash = s.hash ORDER BY s.seq DESC LIMIT 1",
         path_);
  sqlite3_bind_text(s.get(), 1, format.c_str(), static_cast<int>(format.size()), SQLITE_STATIC);
  sqlite3_bind_int64(s.get(), 2, std::min(up_to_seq, last_seq_));
  int rc = sqlite3_step(s.get());
  if (rc == SQLITE_DONE) return std::nullopt;
  if (rc != SQLITE_ROW) fail(db_, rc, path_, "read snapshot");
  Snapshot snap;
  snap.seq = sqlite3_column_int64(s.get(), 0);
  snap.format = format;
  const void* p = sqlite3_column_blob(s.get(), 1);
  const int n = sqlite3_column_bytes(s.get(), 1);
  if (p && n > 0) snap.blob.assign(static_cast<const char*>(p), static_cast<size_t>(n));
  return snap;
}

VerifyReport Ledger::verify() const {
  VerifyReport r;
  std::string prev = kGenesisHash;
  int64_t expected_seq = 1;
  for_each([&](const Event& e) {
    ++r.events_checked;
    if (e.seq != expected_seq) {
      r.first_bad_seq = e.seq;
      r.problem = fmt::format("seq {} follows seq {}: events are missing", e.seq, expected_seq - 1);
      return false;
    }
    if (chain_hash(prev, e) != e.hash) {
      r.first_bad_seq = e.seq;
      r.problem = fmt::format("seq {} ({}): content does not match its hash (edited by hand?)",
                              e.seq, event_kind_name(e.kind));
      return false;
    }
    prev = e.hash;
    ++expected_seq;
    return true;
  });
  return r;
}

bool Ledger::names(const std::string& path, std::initializer_list<EventKind> kinds) const {
  Stmt s(db_, "SELECT kind FROM events WHERE path = ?", path_);
  sqlite3_bind_text(s.get(), 1, path.data(), static_cast<int>(path.size()), SQLITE_STATIC);
  for (;;) {
    int rc = sqlite3_step(s.get());
    if (rc == SQLITE_DONE) return false;
    if (rc != SQLITE_ROW) fail(db_, rc, path_, "look up events of " + path);
    const char* kind = reinterpret_cast<const char*>(sqlite3_column_text(s.get(), 0));
    for (EventKind k : kinds) {
      if (kind && std::strcmp(kind, event_kind_name(k)) == 0) return true;
    }
  }
}

std::optional<WriterInfo> Ledger::writer_info() const {
  if (!table_exists(db_, "writer", path_)) return std::nullopt;
  Stmt s(db_, "SELECT pid, host, since_us FROM writer WHERE id = 1", path_);
  int rc = sqlite3_step(s.get());
  if (rc == SQLITE_DONE) return std::nullopt;
  if (rc != SQLITE_ROW) fail(db_, rc, path_, "read writer");
  WriterInfo w;
  w.pid = sqlite3_column_int64(s.get(), 0);
  const unsigned char* h = sqlite3_column_text(s.get(), 1);
  w.host = h ? reinterpret_cast<const char*>(h) : "";
  w.since_us = sqlite3_column_int64(s.get(), 2);
  return w;
}

}  // namespace ckptledger
