#include "ledger/sqlite.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <map>
#include <mutex>
#include <utility>

#include <fmt/format.h>

namespace ckptledger::internal {

ErrorCode sqlite_error_code(int rc) {
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

bool sql_statement_complete(const std::string& sql) { return sqlite3_complete(sql.c_str()) != 0; }

Database::Database(const std::string& filename, int flags, std::string path, int busy_timeout_ms)
    : path_(std::move(path)) {
  int rc = sqlite3_open_v2(filename.c_str(), &db_, flags, nullptr);
  if (rc != SQLITE_OK) {
    // The handle exists even when the open failed (it carries the message): close it here, the
    // destructor does not run.
    std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    sqlite3_close_v2(db_);
    db_ = nullptr;
    throw_error(sqlite_error_code(rc), fmt::format("ledger {}: open: {}", path_, msg));
  }
  sqlite3_extended_result_codes(db_, 1);
  sqlite3_busy_timeout(db_, busy_timeout_ms);
}

Database::~Database() {
  if (db_) sqlite3_close_v2(db_);
}

void Database::fail(int rc, const std::string& what) const {
  throw_error(sqlite_error_code(rc), fmt::format("ledger {}: {}: {}", path_, what,
                                                 db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc)));
}

void Database::exec(const std::string& sql, const std::string& what) const {
  char* err = nullptr;
  int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    throw_error(sqlite_error_code(rc), fmt::format("ledger {}: {}: {}", path_,
                                                   what.empty() ? sql.substr(0, 40) : what, msg));
  }
}

int64_t Database::query_int(const char* sql) const {
  Statement s(*this, sql);
  return s.step(sql) ? s.column_int(0) : 0;
}

bool Database::table_exists(const char* name) const {
  Statement s(*this, "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?");
  s.bind_text(1, name, /*copy=*/false);
  return s.step("read schema");
}

bool Database::in_transaction() const { return sqlite3_get_autocommit(db_) == 0; }

Statement::Statement(const Database& db, const char* sql) : db_(db) {
  int rc = sqlite3_prepare_v2(db.handle(), sql, -1, &s_, nullptr);
  if (rc != SQLITE_OK) db.fail(rc, std::string("prepare ") + sql);
}

Statement::~Statement() { sqlite3_finalize(s_); }

void Statement::bind_null(int col) { sqlite3_bind_null(s_, col); }
void Statement::bind_int(int col, int64_t v) { sqlite3_bind_int64(s_, col, v); }
void Statement::bind_int(int col, const std::optional<int64_t>& v) {
  if (v) {
    bind_int(col, *v);
  } else {
    bind_null(col);
  }
}
void Statement::bind_double(int col, double v) { sqlite3_bind_double(s_, col, v); }
void Statement::bind_text(int col, std::string_view v, bool copy) {
  sqlite3_bind_text(s_, col, v.data(), static_cast<int>(v.size()),
                    copy ? SQLITE_TRANSIENT : SQLITE_STATIC);
}
void Statement::bind_text_or_null(int col, std::string_view v, bool copy) {
  if (v.empty()) {
    bind_null(col);
  } else {
    bind_text(col, v, copy);
  }
}
void Statement::bind_blob(int col, const void* data, size_t n, bool copy) {
  sqlite3_bind_blob64(s_, col, data, n, copy ? SQLITE_TRANSIENT : SQLITE_STATIC);
}

bool Statement::step(const std::string& what) {
  int rc = sqlite3_step(s_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  db_.fail(rc, what);
}

void Statement::run(const std::string& what) {
  int rc = sqlite3_step(s_);
  if (rc != SQLITE_DONE && rc != SQLITE_ROW) db_.fail(rc, what);
}

void Statement::reset() { sqlite3_reset(s_); }

int Statement::column_count() const { return sqlite3_column_count(s_); }
std::string Statement::column_name(int col) const { return sqlite3_column_name(s_, col); }
int Statement::column_type(int col) const { return sqlite3_column_type(s_, col); }
bool Statement::is_null(int col) const { return column_type(col) == SQLITE_NULL; }
int64_t Statement::column_int(int col) const { return sqlite3_column_int64(s_, col); }
double Statement::column_double(int col) const { return sqlite3_column_double(s_, col); }
std::string Statement::column_text(int col) const {
  const unsigned char* t = sqlite3_column_text(s_, col);
  if (!t) return {};
  return std::string(reinterpret_cast<const char*>(t),
                     static_cast<size_t>(sqlite3_column_bytes(s_, col)));
}
std::optional<int64_t> Statement::column_opt_int(int col) const {
  if (is_null(col)) return std::nullopt;
  return column_int(col);
}
std::string Statement::column_blob(int col) const {
  const void* p = sqlite3_column_blob(s_, col);
  const int n = sqlite3_column_bytes(s_, col);
  if (!p || n <= 0) return {};
  return std::string(static_cast<const char*>(p), static_cast<size_t>(n));
}

int shared_read_fd(const std::string& path) {
  static std::mutex mu;
  static std::map<std::pair<dev_t, ino_t>, int> fds;
  struct stat st {};
  std::lock_guard<std::mutex> lk(mu);
  if (::stat(path.c_str(), &st) == 0) {
    auto it = fds.find({st.st_dev, st.st_ino});
    if (it != fds.end()) return it->second;
  }
  // O_NONBLOCK: a FIFO named like the ledger must not hang the open.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return -1;
  // Even a descriptor just opened is never closed (closing it would drop the process's locks on
  // the file): where it cannot be kept (fstat failed; the path was replaced by a file already
  // known between the stat and the open) it is left open, unused.
  if (::fstat(fd, &st) != 0) return fd;
  return fds.emplace(std::make_pair(st.st_dev, st.st_ino), fd).first->second;
}

Transaction::Transaction(const Database& db, Mode mode, std::string what)
    : db_(db), what_(std::move(what)) {
  db_.exec(mode == Mode::kImmediate ? "BEGIN IMMEDIATE" : "BEGIN", "begin " + what_);
}

Transaction::~Transaction() {
  // Best effort: the statement that failed already raised; a failed ROLLBACK (the connection is
  // gone) leaves SQLite to roll back the journal at the next open.
  if (!done_) sqlite3_exec(db_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void Transaction::commit() {
  db_.exec("COMMIT", "commit " + what_);
  done_ = true;
}

}  // namespace ckptledger::internal
