// The catalog: read-only queries over one ledger, for the CLI verbs (runs, history, best, latest,
// show, verify, state, export, gc) and for other tools through the SQL views of migrations 0003
// (checkpoints, best, runs, history) and 0006 (checkpoint_parts).
//
// Contract:
//  - A Catalog opens its ledger read-only (Ledger::open with OpenMode::kReadOnly): it never takes
//    the writer's lock and never writes a byte; it reads while a training process appends (WAL).
//    Each verb's queries run in one read transaction (one consistent snapshot).
//  - A ledger older than this binary (written before a view existed) gets the missing views as
//    TEMP views on the read-only connection, from the same embedded migration text: the same
//    columns whatever the ledger's version (only slower without the newer indexes).
//  - Errors are ckptledger::Error (NotFound: no ledger; Corruption / InvalidArgument: not a ledger
//    or damaged; Version: newer than this binary; IOError; Busy). A malformed argument (a --since
//    that is neither a seq nor a time, an unknown kind) is a UsageError.
// Thread safety: one Catalog per thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckptledger/hook_state.h"
#include "ckptledger/ledger.h"
#include "ledger/sqlite.h"
#include "storage/reconcile.h"

namespace ckptledger {

// A malformed command-line value (the CLI exits 2).
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ---- Paths --------------------------------------------------------------------------------------

// `p` made absolute and lexically normal, without a trailing slash ("/" stays); `p` itself when the
// current directory cannot be read.
std::string absolute_normal(const std::string& p);
// `path` relative to `dir` when it is below it, else `path` unchanged (tables print paths so).
std::string relative_to(const std::string& path, const std::string& dir);

// ---- Times and points ---------------------------------------------------------------------------

// ISO-8601 UTC with microseconds: 2026-11-29T10:15:02.123456Z (the views' format).
std::string format_iso8601_us(int64_t ts_us);
// Accepts YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS[.ffffff]] (or a space for T), then Z, +HH:MM, -HH:MM or
// nothing (UTC). Returns microseconds since the Unix epoch; nullopt when `text` is not such a time.
std::optional<int64_t> parse_iso8601_us(const std::string& text);

// A point in a ledger's history, as given to --since / --as-of: a seq (digits), a time (ISO-8601),
// or the end of an epoch / iteration ("epoch:N", "iter:N": just before the first event past N).
struct Point {
  enum class Kind { kSeq, kTime, kEpoch, kIter } kind = Kind::kSeq;
  int64_t value = 0;  // seq, ts_us, epoch or iter
};
// Throws UsageError naming `option` and the value. Without `counters`, epoch:N / iter:N are
// refused.
Point parse_point(const std::string& text, const std::string& option, bool counters = true);

// ---- Query results ------------------------------------------------------------------------------

// Rows of a query: each value is a JSON null, integer, real or string (SQLite's types).
struct ResultSet {
  std::vector<std::string> columns;
  std::vector<std::vector<nlohmann::ordered_json>> rows;

  // Index of `name`; throws std::out_of_range when there is no such column.
  size_t column(const std::string& name) const;
  const nlohmann::ordered_json& at(size_t row, const std::string& name) const {
    return rows.at(row).at(column(name));
  }
  nlohmann::ordered_json row_object(size_t row) const;  // {column: value, ...}
  nlohmann::ordered_json to_json() const;               // [row_object, ...]
};

struct HistoryFilter {
  std::vector<std::string> kinds;  // empty: all (each must be an event kind name)
  std::optional<Point> since;      // seq >= N, ts >= T, or past epoch/iter N
  std::optional<std::string> path;
  int64_t limit = 0;  // 0: no limit; otherwise the newest `limit` matching events
  int64_t head = 0;   // 0: no cap; otherwise only the oldest `head` matching events (a follower's
                      // batch); not combined with `limit`
};

// `latest`: the newest committed regular checkpoint still live in the ledger whose file, and each
// of its parts when several ranks wrote it, exists with the recorded size and SHA-256 (what an
// automatic resume loads).
struct LatestResult {
  // null when none verifies; else path, step, epoch, iter, ..., and `parts` ([{rank, path, bytes,
  // sha256}], rank order) when the checkpoint has more than one part.
  nlohmann::ordered_json checkpoint;
  struct Rejected {
    std::string path;
    std::string reason;
  };
  // Newer candidates that failed verification, newest first. A failed part: "part R PATH: why".
  std::vector<Rejected> rejected;
};

// `state --as-of`: the hook state replayed with HookStateFold up to a seq.
struct StateResult {
  int64_t seq = 0;   // the last event applied (0: none)
  std::string time;  // its time (ISO-8601), "" when none
  HookState state;
  nlohmann::ordered_json hub;  // the message hub values (best_score*, best_ckpt*, ...)
};

// One live file checked by `verify`: a checkpoint's file, or a part of a checkpoint written by
// several ranks (its part 0 is the checkpoint's own file, checked as such).
struct FileCheck {
  std::string path;
  std::string kind;        // regular | best | published (a part: its checkpoint's)
  std::string checkpoint;  // a part: the checkpoint it belongs to; "" for a checkpoint's file
  int64_t rank = 0;        // a part: its index in the save's part lists
  int64_t expected_bytes = 0;
  std::string expected_sha256;
  int64_t actual_bytes = -1;  // -1: missing
  std::string actual_sha256;  // "" when not computed (missing, size differs, unreadable)
  std::string problem;  // "" | "missing" | "size differs" | "sha256 differs" | "unreadable: ..."
};

struct VerifyResult {
  VerifyReport chain;
  std::vector<FileCheck> files;
  bool ok() const;
};

// Called while verify hashes files: bytes done / total, file index / count.
using ProgressFn = std::function<void(int64_t done_bytes, int64_t total_bytes, size_t file_index,
                                      size_t file_count)>;

class Catalog {
 public:
  // `ledger_or_work_dir`: the ledger file, or a work_dir holding ckptledger.sqlite. `one_look`
  // (LedgerOptions::one_look, the CLI's verbs): a finished ledger is read immutable and nothing is
  // created beside it, but later commits are not seen; a Catalog kept open leaves it false.
  static std::unique_ptr<Catalog> open(const std::string& ledger_or_work_dir,
                                       bool one_look = false);
  ~Catalog();
  Catalog(const Catalog&) = delete;
  Catalog& operator=(const Catalog&) = delete;

  const std::string& ledger_path() const { return ledger_->path(); }
  std::string work_dir() const;  // the ledger's directory
  const Ledger& ledger() const { return *ledger_; }

  // Any SQL over the ledger (views included); `binds` are ?1, ?2, ... as text or integers.
  ResultSet query(const std::string& sql, const std::vector<nlohmann::ordered_json>& binds = {});
  // The same, row by row (export of a million events without holding them); `fn` returns false
  // to stop.
  void for_each_row(const std::string& sql, const std::vector<nlohmann::ordered_json>& binds,
                    const std::function<bool(const std::vector<std::string>& columns,
                                             const std::vector<nlohmann::ordered_json>& row)>& fn);

  // `runs` view; `ended` 'unknown' is refined to 'running' (the writer lock is held) or 'crashed'.
  ResultSet runs();
  ResultSet history(const HistoryFilter& filter);
  // `best` view, optionally one metric.
  ResultSet best(const std::optional<std::string>& metric);
  LatestResult latest();
  // The `checkpoints` rows of one file (oldest first). `path` is made absolute; a bare file name
  // matches the one ledger path with that name.
  ResultSet checkpoint_rows(const std::string& path, std::string* resolved_path);
  // Every event about `path`: its own events, and those naming it (superseded_by, source,
  // previous_path).
  ResultSet events_about(const std::string& path);
  // The seq a point designates (clamped to [0, last seq]).
  int64_t resolve_point(const Point& p);
  StateResult state_as_of(const std::optional<Point>& as_of);
  // Hash chain + each live file's size and SHA-256, and each of its parts' (after the file).
  VerifyResult verify(const ProgressFn& progress = nullptr);
  // What reconciliation (storage/reconcile.h) would find and do if a training process started now;
  // reads the disk, changes nothing. While a writer holds the ledger, its in-flight saves are
  // reported as `in_flight` instead of torn.
  ReconcilePlan gc_plan();
  // Where reconciliation looks: the newest run's work_dir (else the ledger's directory) and every
  // run's out_dir.
  ReconcileScope reconcile_scope();
  // True when a process holds the ledger's writer lock right now.
  bool writer_active() const;

 private:
  // On a match, `*detail` (when given) is the matching record's SavePayload (a save_prepared's
  // `commit`), which lists the parts of that version.
  bool replaced_since(FileCheck& fc, int64_t seq, std::string* detail = nullptr);
  // The forms under which `path` may be recorded (Ledger::recorded_as) as a JSON array, for
  // `path IN (SELECT value FROM json_each(?))`.
  std::string recorded_forms(const std::string& path) const;
  // A row's text as it is now in a moved work_dir: a path re-rooted (Ledger::reroot), and the
  // paths inside a JSON payload.
  std::string rerooted(const std::string& value) const;
  Catalog() = default;
  void ensure_views();
  // One snapshot for a verb's queries: a deferred read transaction (nested uses share the outer).
  class ReadTxn {
   public:
    explicit ReadTxn(const Catalog& c);
    ~ReadTxn();
    ReadTxn(const ReadTxn&) = delete;
    ReadTxn& operator=(const ReadTxn&) = delete;

   private:
    std::optional<internal::Transaction> txn_;
  };

  std::unique_ptr<Ledger> ledger_;
};

// `gc --apply`: takes the writer's lock (Error(kBusy) while a training process holds it), replays
// the ledger and carries out reconciliation exactly as a training start would (recovery=repair).
// Returns what was done.
ReconcilePlan gc_apply(const std::string& ledger_or_work_dir);

// Every ledger file (named ckptledger.sqlite) below `root`, sorted. Throws Error(kNotFound) when
// `root` is not a directory.
std::vector<std::string> find_ledgers(const std::string& root);

// ---- Readable output (table.cc) -----------------------------------------------------------------

// A value as a table cell: null "", integers as is, reals with up to 6 significant digits.
std::string cell_text(const nlohmann::ordered_json& v);
// A text table: a header line, a rule, one line per row; numbers right-aligned, the last column
// not padded.
class TextTable {
 public:
  explicit TextTable(std::vector<std::string> headers) : headers_(std::move(headers)) {}
  void add(std::vector<std::string> cells);
  bool empty() const { return rows_.empty(); }
  std::string render() const;

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace ckptledger
