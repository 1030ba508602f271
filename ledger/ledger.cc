#include "ckptledger/ledger.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>

#include <fmt/format.h>

#include "ledger/migrations.h"
#include "ledger/sqlite.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;
using internal::Database;
using internal::Statement;
using internal::Transaction;

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

uint32_t be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

// Damage detection before SQLite sees the file (LevelDB: detection separate from policy).
// Refuses files that are not SQLite or are shorter than their own header says, without writing.
void probe_header(const std::string& path, off_t size) {
  // The process's shared descriptor, never closed: closing one would drop the locks of this
  // process's other connections to the file (internal::shared_read_fd).
  const int fd = internal::shared_read_fd(path);
  if (fd < 0) {
    throw_error(ErrorCode::kIOError,
                fmt::format("ledger {}: cannot open for reading: {}", path, std::strerror(errno)));
  }
  unsigned char h[100] = {};
  ssize_t n = ::pread(fd, h, sizeof(h), 0);
  if (n < 16 || std::memcmp(h, "SQLite format 3", 16) != 0) {
    throw_error(ErrorCode::kForeign,
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

void read_event(const Statement& s, Event& e, const std::string& path) {
  e.seq = s.column_int(0);
  e.run_id = s.column_text(1);
  e.ts_us = s.column_int(2);
  const std::string kind = s.column_text(3);
  auto k = event_kind_from_name(kind);
  if (!k) {
    throw_error(ErrorCode::kCorruption, fmt::format("ledger {}: event seq {} has unknown kind '{}'",
                                                    path, e.seq, s.is_null(3) ? "(null)" : kind));
  }
  e.kind = *k;
  e.step = s.column_opt_int(4);
  e.epoch = s.column_opt_int(5);
  e.iter = s.column_opt_int(6);
  e.path = s.column_text(7);
  e.metric = s.column_text(8);
  if (s.is_null(9)) {
    e.score.reset();
  } else {
    e.score = s.column_double(9);
  }
  e.bytes = s.column_opt_int(10);
  e.digest = s.column_text(11);
  e.detail = s.column_text(12);
  if (s.column_count() > 13) {
    e.prev_hash.swap(e.hash);  // the row before's hash (for_each starts it at the genesis hash)
    e.hash = s.column_text(13);
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

bool writer_lock_held(const std::string& path) {
  const int fd = internal::shared_read_fd(path);
  if (fd < 0) return false;
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = kWriterLockOffset;
  fl.l_len = 1;
  if (::fcntl(fd, F_OFD_GETLK, &fl) != 0) return false;
  return fl.l_type != F_UNLCK;
}

std::unique_ptr<Ledger> Ledger::open(const std::string& path, const LedgerOptions& options) {
  std::unique_ptr<Ledger> l(new Ledger());
  l->path_ = path;
  l->read_only_ = options.mode == OpenMode::kReadOnly;
  l->run_id_ = options.run_id.empty() ? fresh_run_id() : options.run_id;

  struct stat st {};
  bool exists = ::stat(path.c_str(), &st) == 0;
  if (!exists && errno != ENOENT && errno != ENOTDIR) {
    // Permission denied on a directory of the path, a name too long, ...: not "no such file".
    throw_error(ErrorCode::kIOError,
                fmt::format("ledger {}: cannot look at it: {}", path, std::strerror(errno)));
  }
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
  int64_t app_id = 0, version = 0, tables = 0;
  {
    l->db_ = std::make_unique<Database>(probe_uri,
                                        (recover ? SQLITE_OPEN_READWRITE : SQLITE_OPEN_READONLY) |
                                            SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX,
                                        path, options.busy_timeout_ms);
    if (exists && st.st_size > 0) {
      app_id = l->db_->query_int("PRAGMA application_id");
      version = l->db_->query_int("PRAGMA user_version");
      tables = l->db_->query_int("SELECT count(*) FROM sqlite_master");
    }
    if (app_id != kApplicationId && (app_id != 0 || tables > 0 || version > 0)) {
      throw_error(ErrorCode::kForeign,
                  fmt::format("ledger {}: an SQLite database of another application "
                              "(application_id {}, {} schema objects, no ckptledger events); "
                              "refusing to touch it",
                              path, app_id, tables));
    }
    int latest = latest_schema_version();
    if (version > latest) {
      throw_error(ErrorCode::kVersion,
                  fmt::format("ledger {}: schema version {} is newer than this ckptledger "
                              "supports ({}); use a newer ckptledger (ledgers are never "
                              "downgraded)",
                              path, version, latest));
    }
    if (l->read_only_ && version == 0) {
      throw_error(ErrorCode::kNotFound, fmt::format("ledger {}: empty, not yet initialised", path));
    }
    if (version > 0) l->refresh_tail();
    l->db_.reset();
  }

  const int latest = latest_schema_version();
  if (l->read_only_ && options.one_look && !has_wal && !writer_lock_held(path)) {
    // A finished ledger, read once: immutable, nothing created beside it (read-only storage).
    l->db_ = std::make_unique<Database>(
        probe_uri, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX, path,
        options.busy_timeout_ms);
  } else {
    l->db_ = std::make_unique<Database>(
        path, (l->read_only_ ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX,
        path, options.busy_timeout_ms);
  }
  const Database& db = *l->db_;
  // Replays scan the whole table: reading pages through mmap saves a copy per page.
  db.exec("PRAGMA mmap_size = 1073741824", "enable mmap");

  if (!l->read_only_) {
    // Every append writes its dirty pages (table leaf, index leaves) into the WAL and fdatasyncs
    // it: 1 KiB pages keep that to a few KiB, close to the cost of one small fdatasync.
    if (version == 0) db.exec("PRAGMA page_size = 1024", "set page size");
    db.exec("PRAGMA journal_mode=WAL", "enable WAL");
    db.exec("PRAGMA synchronous=FULL", "set synchronous=FULL");
    int target = options.migrate_to < 0 ? latest : std::min(options.migrate_to, latest);
    if (version < target) {
      Transaction txn(db, Transaction::Mode::kImmediate, "migration");
      for (const Migration& m : embedded_migrations()) {
        if (m.version <= version || m.version > target) continue;
        db.exec(m.sql, fmt::format("migration {:04d}_{}", m.version, m.name));
        db.exec(fmt::format("PRAGMA user_version = {}", m.version), "record schema version");
      }
      txn.commit();
    }
    if (db.table_exists("writer")) {
      Statement s(db,
                  "INSERT OR REPLACE INTO writer (id, pid, host, since_us, run_id) "
                  "VALUES (1,?,?,?,?)");
      s.bind_int(1, ::getpid());
      s.bind_text(2, host_name());
      s.bind_int(3, now_us());
      s.bind_text(4, l->run_id_);
      s.run("record writer");
    }
  }
  if (!db.table_exists("events")) {
    throw_error(ErrorCode::kCorruption, fmt::format("ledger {}: no events table", path));
  }
  l->refresh_tail();
  l->find_moved_roots();
  return l;
}

void Ledger::find_moved_roots() {
  moved_.clear();
  const fs::path here = fs::path(path_).lexically_normal();
  if (here.filename() != kDefaultLedgerName) return;  // not at a default place: nothing to infer
  std::string dir = here.parent_path().string();
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  // A run recorded its work_dir; its ledger was <work_dir>/ckptledger.sqlite unless its config
  // named a ledger_path.
  Statement s(*db_,
              "SELECT DISTINCT json_extract(detail, '$.work_dir') FROM events "
              "WHERE kind = 'run_started' AND json_valid(json_extract(detail, '$.config')) AND "
              "json_type(json_extract(detail, '$.config'), '$.ledger_path') "
              "IS NOT 'text'");
  auto under = [](const std::string& p, const std::string& root) {
    return p.size() > root.size() && p.compare(0, root.size(), root) == 0 && p[root.size()] == '/';
  };
  std::vector<std::string> froms;
  bool trained_here = false;  // a run already wrote this ledger here: it belongs to this dir
  while (s.step("read the runs' work_dirs")) {
    if (s.column_type(0) != SQLITE_TEXT) continue;
    std::string from = s.column_text(0);
    while (from.size() > 1 && from.back() == '/') from.pop_back();
    trained_here = trained_here || from == dir;
    if (from.empty() || from == dir || from == "/") continue;
    // Moved into its own subdirectory or its parent: a path under both roots would be ambiguous.
    if (under(dir, from) || under(from, dir)) continue;
    froms.push_back(from);
  }
  for (const std::string& from : froms) {
    if (trained_here) {
      moved_.push_back({from, dir});
      continue;
    }
    // Not yet trained here: the directory moved with its files, or only the ledger was copied (a
    // backup beside other files)? The newest files the run committed decide: moved when one is
    // here, or when none is at the old place either.
    Statement f(*db_,
                "SELECT path FROM events WHERE kind = 'save_committed' AND "
                "substr(path, 1, length(?1) + 1) = ?1 || '/' ORDER BY seq DESC LIMIT 16");
    f.bind_text(1, from);
    bool at_new = false, at_old = false;
    while (f.step("read the run's files") && !at_new) {
      const std::string p = f.column_text(0);
      std::error_code ec;
      at_new = fs::exists(dir + p.substr(from.size()), ec);
      at_old = at_old || fs::exists(p, ec);
    }
    if (at_new || !at_old) moved_.push_back({from, dir});
  }
}

std::string Ledger::reroot(const std::string& path) const {
  for (const MovedRoot& m : moved_) {
    // Written since the move (or by a run of the present directory): already there.
    if (path == m.to || (path.size() > m.to.size() && path.compare(0, m.to.size(), m.to) == 0 &&
                         path[m.to.size()] == '/')) {
      return path;
    }
  }
  for (const MovedRoot& m : moved_) {
    if (path == m.from) return m.to;
    if (path.size() > m.from.size() && path.compare(0, m.from.size(), m.from) == 0 &&
        path[m.from.size()] == '/') {
      return m.to + path.substr(m.from.size());
    }
  }
  return path;
}

std::string Ledger::recorded_form(const std::string& path) const {
  const std::vector<std::string> forms = recorded_as(path);
  for (size_t i = 1; i < forms.size(); ++i) {
    Statement s(*db_, "SELECT 1 FROM events WHERE path = ? LIMIT 1");
    s.bind_text(1, forms[i], /*copy=*/false);
    if (s.step("look up " + forms[i])) return forms[i];
  }
  return path;
}

std::vector<std::string> Ledger::recorded_as(const std::string& path) const {
  std::vector<std::string> out{path};
  for (const MovedRoot& m : moved_) {
    if (path.size() > m.to.size() && path.compare(0, m.to.size(), m.to) == 0 &&
        path[m.to.size()] == '/') {
      out.push_back(m.from + path.substr(m.to.size()));
    }
  }
  return out;
}

Ledger::~Ledger() {
  db_.reset();
  // Closed after SQLite's own descriptors: closing any fd of the file drops this process's POSIX
  // locks on it, including SQLite's.
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

const internal::Database& Ledger::database() const { return *db_; }

int Ledger::schema_version() const {
  return static_cast<int>(db_->query_int("PRAGMA user_version"));
}

// Reads the chain's tail and checks that its last link recomputes (cheap tamper check at open;
// verify() checks the whole chain).
void Ledger::refresh_tail() {
  last_seq_ = 0;
  last_hash_ = kGenesisHash;
  Statement s(*db_,
              "SELECT seq, run_id, ts_us, kind, step, epoch, iter, path, metric, score, bytes, "
              "digest, detail, hash FROM events ORDER BY seq DESC LIMIT 2");
  if (!s.step("read the last event")) return;
  Event e;
  read_event(s, e, path_);
  Event before;  // the link before the last one, for the last one's prev_hash
  before.hash = kGenesisHash;
  if (s.step("read the last events")) read_event(s, before, path_);
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
  try {
    // A one-element batch runs in autocommit mode: one WAL commit, one fsync.
    std::optional<Transaction> txn;
    if (events.size() > 1) txn.emplace(*db_, Transaction::Mode::kImmediate, "append");
    Statement s(*db_,
                "INSERT INTO events (seq, run_id, ts_us, kind, step, epoch, iter, path, metric, "
                "score, bytes, digest, detail, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
    const int64_t ts = now_us();
    for (Event& e : events) {
      e.seq = last_seq_ + 1;
      if (e.run_id.empty()) e.run_id = run_id_;
      if (e.ts_us == 0) e.ts_us = ts;
      e.prev_hash = last_hash_;
      // A file of a moved work_dir keeps the path it was first recorded under, so that every row
      // about it names it alike (the catalog's views pair a file's rows by path); the caller's
      // event keeps the present form.
      std::string present;
      if (!moved_.empty()) {
        std::string recorded = recorded_form(e.path);
        if (recorded != e.path) {
          present = std::move(e.path);
          e.path = std::move(recorded);
        }
      }
      e.hash = chain_hash(e.prev_hash, e);
      s.bind_int(1, e.seq);
      s.bind_text(2, e.run_id, /*copy=*/false);
      s.bind_int(3, e.ts_us);
      s.bind_text(4, event_kind_name(e.kind), /*copy=*/false);
      s.bind_int(5, e.step);
      s.bind_int(6, e.epoch);
      s.bind_int(7, e.iter);
      s.bind_text_or_null(8, e.path, /*copy=*/false);
      s.bind_text_or_null(9, e.metric, /*copy=*/false);
      if (e.score) {
        s.bind_double(10, *e.score);
      } else {
        s.bind_null(10);
      }
      s.bind_int(11, e.bytes);
      s.bind_text_or_null(12, e.digest, /*copy=*/false);
      s.bind_text_or_null(13, e.detail, /*copy=*/false);
      s.bind_text(14, e.hash, /*copy=*/false);
      s.run(fmt::format("append {} (seq {})", event_kind_name(e.kind), e.seq));
      s.reset();
      if (!present.empty()) e.path = std::move(present);
      last_seq_ = e.seq;
      last_hash_ = e.hash;
    }
    if (txn) txn->commit();
  } catch (...) {
    last_seq_ = saved_seq;
    last_hash_ = saved_hash;
    throw;
  }
}

int64_t Ledger::append(Event& e) {
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
  Statement s(*db_, with_hashes ? kSelectEvents : kSelectEventsNoHashes);
  s.bind_int(1, after_seq);
  s.bind_int(2, up_to_seq);
  Event e;
  if (with_hashes && after_seq > 0) {
    Statement h(*db_, "SELECT hash FROM events WHERE seq = ?");
    h.bind_int(1, after_seq);
    if (h.step("read event hash")) e.hash = h.column_text(0);
  } else {
    e.hash = kGenesisHash;
  }
  while (s.step("read events")) {
    read_event(s, e, path_);
    if (!fn(e)) return;
  }
}

// A fold over a gap (or over rows out of order) is a state the writer never had. SQLite cannot
// see it when the main file and the -wal come from different moments (a copy taken while the
// ledger was written, a -wal copied later or deleted mid-checkpoint): pages of two moments then
// form valid b-trees whose scan skips or repeats rows. Checking that seqs run 1, 2, 3 ... up to the
// tail read at open turns that into an error instead of a silently wrong state.
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
        if (moved_.empty()) {
          dispatch(e, handler);
        } else {
          Event here = e;
          here.path = reroot(e.path);
          dispatch(here, handler);
        }
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
  if (!db_->table_exists("snapshots")) return;  // a schema older than 0004 (migrate_to)
  std::string hash;
  {
    Statement h(*db_, "SELECT hash FROM events WHERE seq = ?");
    h.bind_int(1, seq);
    if (!h.step("read event hash")) {
      throw_error(ErrorCode::kInvalidArgument,
                  fmt::format("ledger {}: snapshot at seq {}: no such event", path_, seq));
    }
    hash = h.column_text(0);
  }
  Transaction txn(*db_, Transaction::Mode::kImmediate, "snapshot");
  {
    Statement s(*db_,
                "INSERT OR REPLACE INTO snapshots (seq, hash, format, state) VALUES (?,?,?,?)");
    s.bind_int(1, seq);
    s.bind_text(2, hash, /*copy=*/false);
    s.bind_text(3, format, /*copy=*/false);
    s.bind_blob(4, blob.data(), blob.size(), /*copy=*/false);
    s.run("write snapshot");
  }
  {
    Statement d(*db_,
                "DELETE FROM snapshots WHERE format = ?1 AND seq NOT IN "
                "(SELECT seq FROM snapshots WHERE format = ?1 ORDER BY seq DESC LIMIT ?2)");
    d.bind_text(1, format, /*copy=*/false);
    d.bind_int(2, kKeptSnapshots);
    d.run("trim snapshots");
  }
  txn.commit();
}

std::optional<Snapshot> Ledger::latest_snapshot(const std::string& format,
                                                int64_t up_to_seq) const {
  if (!db_->table_exists("snapshots")) return std::nullopt;
  // Only a snapshot of a prefix of this chain: the hash recorded with it must be the hash of its
  // event here (each hash covers every event before it).
  Statement s(*db_,
              "SELECT s.seq, s.state FROM snapshots s JOIN events e ON e.seq = s.seq "
              "WHERE s.format = ? AND s.seq <= ? AND e.hash = s.hash ORDER BY s.seq DESC LIMIT 1");
  s.bind_text(1, format, /*copy=*/false);
  s.bind_int(2, std::min(up_to_seq, last_seq_));
  if (!s.step("read snapshot")) return std::nullopt;
  Snapshot snap;
  snap.seq = s.column_int(0);
  snap.format = format;
  snap.blob = s.column_blob(1);
  return snap;
}

VerifyReport Ledger::verify() const { return verify_from(0); }

VerifyReport Ledger::verify_from(int64_t after_seq) const {
  VerifyReport r;
  std::string prev = kGenesisHash;
  if (after_seq > 0) {
    Statement s(*db_, "SELECT hash FROM events WHERE seq = ?");
    s.bind_int(1, after_seq);
    if (!s.step("read the hash of seq " + std::to_string(after_seq))) {
      r.first_bad_seq = after_seq;
      r.problem = fmt::format("seq {} is missing", after_seq);
      return r;
    }
    prev = s.column_text(0);
  }
  int64_t expected_seq = after_seq + 1;
  for_each(
      [&](const Event& e) {
        ++r.events_checked;
        if (e.seq != expected_seq) {
          r.first_bad_seq = e.seq;
          r.problem =
              fmt::format("seq {} follows seq {}: events are missing", e.seq, expected_seq - 1);
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
      },
      after_seq);
  return r;
}

bool Ledger::names(const std::string& path, std::initializer_list<EventKind> kinds) const {
  for (const std::string& recorded : recorded_as(path)) {
    Statement s(*db_, "SELECT kind FROM events WHERE path = ?");
    s.bind_text(1, recorded, /*copy=*/false);
    while (s.step("look up events of " + recorded)) {
      const std::string kind = s.column_text(0);
      for (EventKind k : kinds) {
        if (kind == event_kind_name(k)) return true;
      }
    }
  }
  return false;
}

std::optional<WriterInfo> Ledger::writer_info() const {
  if (!db_->table_exists("writer")) return std::nullopt;
  Statement s(*db_, "SELECT pid, host, since_us FROM writer WHERE id = 1");
  if (!s.step("read writer")) return std::nullopt;
  WriterInfo w;
  w.pid = s.column_int(0);
  w.host = s.column_text(1);
  w.since_us = s.column_int(2);
  return w;
}

}  // namespace ckptledger
