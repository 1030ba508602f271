// The project's one SQLite layer (internal; SQLiteCpp's shape): a connection, a prepared
// statement, a transaction that rolls back unless committed, and the one mapping of SQLite's
// result codes to ckptledger::ErrorCode. The ledger and the catalog use it; nothing else calls
// sqlite3_* directly.
//
// Every error message names the database file ("ledger <path>: <what>: <sqlite's message>").
// Ownership: Database owns its connection; a Statement and a Transaction borrow one and must not
// outlive it. Thread safety: none (a connection is used by one thread at a time; the ledger's
// callers serialise).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "ckptledger/error.h"

struct sqlite3;
struct sqlite3_stmt;

namespace ckptledger::internal {

// The ErrorCode of an SQLite result code (primary or extended): BUSY/LOCKED -> kBusy,
// CORRUPT/NOTADB -> kCorruption, CONSTRAINT/MISMATCH -> kInvalidArgument, everything else
// (CANTOPEN, READONLY, FULL, IOERR, PERM, ...) -> kIOError.
ErrorCode sqlite_error_code(int rc);
// Whether `sql` ends with a complete statement (sqlite3_complete): splits scripts into statements.
bool sql_statement_complete(const std::string& sql);

// A read-only descriptor of the database file `path`, shared by the whole process and never closed
// (one per file, by device and inode), for reading its header and probing its locks. Closing any
// descriptor of a file drops every POSIX lock this process holds on it — SQLite's shared lock of
// the connections still open included, after which a writer that exits believes it is the last
// connection and deletes the -wal and -shm those connections use. So no code outside SQLite may
// open and close a ledger's file while a connection to it may be open: it uses this descriptor.
// Returns -1 (errno set) when the file cannot be opened.
int shared_read_fd(const std::string& path);

class Database {
 public:
  // sqlite3_open_v2(filename, flags) with extended result codes and a busy timeout. `path` is the
  // file as users name it (for messages); `filename` may be a URI when flags say so.
  Database(const std::string& filename, int flags, std::string path, int busy_timeout_ms);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  sqlite3* handle() const { return db_; }
  const std::string& path() const { return path_; }

  // Runs one or more statements without results; `what` names the step in an error message
  // (default: the start of the SQL).
  void exec(const std::string& sql, const std::string& what = {}) const;
  // The first column of the first row as an integer (0 when there is no row).
  int64_t query_int(const char* sql) const;
  bool table_exists(const char* name) const;
  // True inside an explicit transaction (BEGIN ... not yet committed or rolled back).
  bool in_transaction() const;

  // Raises the Error for `rc`, with this connection's message.
  [[noreturn]] void fail(int rc, const std::string& what) const;

 private:
  sqlite3* db_ = nullptr;
  std::string path_;
};

class Statement {
 public:
  Statement(const Database& db, const char* sql);
  Statement(const Database& db, const std::string& sql) : Statement(db, sql.c_str()) {}
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  // Parameters are 1-based. Text and blobs are copied unless `copy` is false, in which case the
  // caller keeps them alive until the next step() or reset().
  void bind_null(int col);
  void bind_int(int col, int64_t v);
  void bind_int(int col, const std::optional<int64_t>& v);
  void bind_double(int col, double v);
  void bind_text(int col, std::string_view v, bool copy = true);
  // Empty text binds NULL (the events table keeps "no value" as NULL).
  void bind_text_or_null(int col, std::string_view v, bool copy = true);
  void bind_blob(int col, const void* data, size_t n, bool copy = true);

  // True while there is a row; false when done; raises on any other result.
  bool step(const std::string& what = "read");
  // Steps a statement that returns no rows (INSERT, DELETE, ...).
  void run(const std::string& what);
  void reset();

  // Columns are 0-based.
  int column_count() const;
  std::string column_name(int col) const;
  int column_type(int col) const;  // SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT, SQLITE_BLOB, NULL
  bool is_null(int col) const;
  int64_t column_int(int col) const;
  double column_double(int col) const;
  std::string column_text(int col) const;  // "" for NULL
  std::optional<int64_t> column_opt_int(int col) const;
  std::string column_blob(int col) const;

  sqlite3_stmt* get() const { return s_; }

 private:
  const Database& db_;
  sqlite3_stmt* s_ = nullptr;
};

// BEGIN in the constructor, ROLLBACK in the destructor unless commit() ran (SQLiteCpp's
// Transaction). `what` names the transaction in error messages.
class Transaction {
 public:
  enum class Mode { kDeferred, kImmediate };
  Transaction(const Database& db, Mode mode, std::string what);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit();

 private:
  const Database& db_;
  std::string what_;
  bool done_ = false;
};

}  // namespace ckptledger::internal
