// Catalog: the SQL side of the catalog (views, history, best, state). On-disk checks (latest,
// verify, gc) are in catalog_files.cc.
#include "catalog/catalog.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>

#include <fmt/format.h>

#include "ckptledger/hook_config.h"
#include "ledger/migrations.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

using internal::Statement;
using internal::Transaction;

void bind_json(Statement& s, const std::vector<ojson>& binds) {
  for (size_t i = 0; i < binds.size(); ++i) {
    const int col = static_cast<int>(i + 1);
    const ojson& b = binds[i];
    if (b.is_null()) {
      s.bind_null(col);
    } else if (b.is_number_integer()) {
      s.bind_int(col, b.get<int64_t>());
    } else if (b.is_number()) {
      s.bind_double(col, b.get<double>());
    } else {
      s.bind_text(col, b.is_string() ? b.get<std::string>() : b.dump());
    }
  }
}

ojson json_value(const Statement& s, int col) {
  switch (s.column_type(col)) {
    case SQLITE_NULL:
      return nullptr;
    case SQLITE_INTEGER:
      return s.column_int(col);
    case SQLITE_FLOAT:
      return s.column_double(col);
    default:
      return s.column_text(col);
  }
}

std::vector<std::string> column_names(const Statement& s) {
  std::vector<std::string> out;
  for (int i = 0; i < s.column_count(); ++i) out.push_back(s.column_name(i));
  return out;
}

// The statements of a migration script, split where SQLite says a statement is complete.
std::vector<std::string> split_statements(const std::string& script) {
  std::vector<std::string> out;
  std::string current;
  for (char c : script) {
    current += c;
    if (c == ';' && internal::sql_statement_complete(current)) {
      out.push_back(current);
      current.clear();
    }
  }
  return out;
}

// `stmt` without leading blanks and -- comments.
std::string strip_leading_comments(const std::string& stmt) {
  size_t i = 0;
  for (;;) {
    while (i < stmt.size() && std::isspace(static_cast<unsigned char>(stmt[i]))) ++i;
    if (stmt.compare(i, 2, "--") == 0) {
      size_t nl = stmt.find('\n', i);
      i = nl == std::string::npos ? stmt.size() : nl + 1;
      continue;
    }
    return stmt.substr(i);
  }
}

bool starts_with_ci(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() &&
         std::equal(prefix.begin(), prefix.end(), s.begin(), [](char a, char b) {
           return std::toupper(static_cast<unsigned char>(a)) ==
                  std::toupper(static_cast<unsigned char>(b));
         });
}

constexpr const char* kHistoryColumns =
    "seq, time, run_id, kind, step, epoch, iter, path, metric, score, bytes, sha256, summary, "
    "detail";

}  // namespace

std::string absolute_normal(const std::string& p) {
  std::error_code ec;
  fs::path a = fs::absolute(p, ec);
  if (ec) return p;
  std::string s = a.lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

std::string relative_to(const std::string& path, const std::string& dir) {
  const std::string prefix = dir == "/" ? dir : dir + "/";
  return path.compare(0, prefix.size(), prefix) == 0 ? path.substr(prefix.size()) : path;
}

// ---- ResultSet ------------------------------------------------------------------------------

size_t ResultSet::column(const std::string& name) const {
  auto it = std::find(columns.begin(), columns.end(), name);
  if (it == columns.end()) throw std::out_of_range("no column " + name);
  return static_cast<size_t>(it - columns.begin());
}

ojson ResultSet::row_object(size_t row) const {
  ojson o = ojson::object();
  for (size_t c = 0; c < columns.size(); ++c) o[columns[c]] = rows.at(row).at(c);
  return o;
}

ojson ResultSet::to_json() const {
  ojson a = ojson::array();
  for (size_t r = 0; r < rows.size(); ++r) a.push_back(row_object(r));
  return a;
}

// ---- Catalog --------------------------------------------------------------------------------

Catalog::ReadTxn::ReadTxn(const Catalog& c) {
  const internal::Database& db = c.ledger_->database();
  if (!db.in_transaction()) txn_.emplace(db, Transaction::Mode::kDeferred, "read");
}

// A read transaction changes nothing: ending it with ROLLBACK (the Transaction's destructor) is
// the same as committing it.
Catalog::ReadTxn::~ReadTxn() = default;

std::unique_ptr<Catalog> Catalog::open(const std::string& ledger_or_work_dir, bool one_look) {
  std::unique_ptr<Catalog> c(new Catalog());
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  ro.one_look = one_look;
  const std::string path = resolve_ledger_path(absolute_normal(ledger_or_work_dir));
  c->ledger_ = Ledger::open(path, ro);
  c->ensure_views();
  return c;
}

Catalog::~Catalog() = default;

std::string Catalog::work_dir() const {
  std::string dir = fs::path(absolute_normal(ledger_->path())).parent_path().string();
  return dir.empty() ? "/" : dir;
}

// A ledger written before a view existed gets it as a TEMP view (read-only connection: nothing is
// written to the file), from the embedded migrations newer than the ledger.
void Catalog::ensure_views() {
  const int version = ledger_->schema_version();
  for (const Migration& m : embedded_migrations()) {
    if (m.version <= version) continue;
    for (const std::string& raw : split_statements(m.sql)) {
      std::string stmt = strip_leading_comments(raw);
      if (!starts_with_ci(stmt, "CREATE VIEW ")) continue;
      std::string rest = stmt.substr(std::string("CREATE VIEW ").size());
      std::string name = rest.substr(0, rest.find_first_of(" \n\t"));
      ledger_->database().exec("DROP VIEW IF EXISTS temp." + name);
      ledger_->database().exec("CREATE TEMP VIEW " + rest);
    }
  }
}

ResultSet Catalog::query(const std::string& sql, const std::vector<ojson>& binds) {
  ResultSet rs;
  for_each_row(sql, binds,
               [&](const std::vector<std::string>& columns, const std::vector<ojson>& row) {
                 if (rs.columns.empty()) rs.columns = columns;
                 rs.rows.push_back(row);
                 return true;
               });
  if (rs.columns.empty()) {
    Statement s(ledger_->database(), sql);
    rs.columns = column_names(s);
  }
  return rs;
}

void Catalog::for_each_row(
    const std::string& sql, const std::vector<ojson>& binds,
    const std::function<bool(const std::vector<std::string>&, const std::vector<ojson>&)>& fn) {
  Statement s(ledger_->database(), sql);
  bind_json(s, binds);
  const std::vector<std::string> columns = column_names(s);
  std::vector<ojson> row(columns.size());
  // A moved work_dir (Ledger::reroot): every path a row holds is given as it is now, so that no
  // verb reads, reports or writes the files of the directory it was copied from.
  const bool moved = !ledger_->moved_roots().empty();
  while (s.step()) {
    for (size_t i = 0; i < columns.size(); ++i) {
      row[i] = json_value(s, static_cast<int>(i));
      if (moved && row[i].is_string()) row[i] = rerooted(row[i].get<std::string>());
    }
    if (!fn(columns, row)) return;
  }
}

ResultSet Catalog::runs() {
  ReadTxn txn(*this);
  ResultSet rs = query("SELECT * FROM runs ORDER BY started_seq");
  if (rs.rows.empty()) return rs;
  const size_t ended = rs.column("ended");
  ojson& last = rs.rows.back()[ended];
  if (last == "unknown") last = writer_active() ? "running" : "crashed";
  return rs;
}

ResultSet Catalog::history(const HistoryFilter& f) {
  std::string where = "1";
  std::vector<ojson> binds;
  if (!f.kinds.empty()) {
    where += " AND kind IN (";
    for (size_t i = 0; i < f.kinds.size(); ++i) {
      if (!event_kind_from_name(f.kinds[i])) {
        throw UsageError(fmt::format("--kind: '{}' is not an event kind", f.kinds[i]));
      }
      where += i ? ",?" : "?";
      binds.emplace_back(f.kinds[i]);
    }
    where += ")";
  }
  if (f.since) {
    if (f.since->kind == Point::Kind::kTime) {
      where += " AND ts_us >= ?";
    } else if (f.since->kind == Point::Kind::kSeq) {
      where += " AND seq >= ?";
    } else {
      throw UsageError("--since takes a seq or a time");
    }
    binds.emplace_back(f.since->value);
  }
  if (f.path) {
    where += " AND path IN (SELECT value FROM json_each(?))";
    binds.emplace_back(recorded_forms(absolute_normal(*f.path)));
  }
  std::string sql =
      fmt::format("SELECT {} FROM history WHERE {} ORDER BY seq", kHistoryColumns, where);
  if (f.head > 0) sql += fmt::format(" LIMIT {}", f.head);
  if (f.limit > 0) {
    sql = fmt::format(
        "SELECT * FROM (SELECT {} FROM history WHERE {} ORDER BY seq DESC LIMIT {}) "
        "ORDER BY seq",
        kHistoryColumns, where, f.limit);
  }
  ReadTxn txn(*this);
  return query(sql, binds);
}

std::string Catalog::rerooted(const std::string& value) const {
  if (value.empty() || value[0] != '{') return ledger_->reroot(value);
  // A payload (JSON text): its paths ("superseded_by", "previous_path", "source", ...) too. A
  // run_started's own "work_dir" and "out_dir" stay as recorded: where that run was.
  std::string out = value;
  for (const MovedRoot& m : ledger_->moved_roots()) {
    // The roots as they appear in JSON text: quoted and escaped, up to their trailing '/'.
    std::string from = ojson(m.from + "/").dump(), to = ojson(m.to + "/").dump();
    from.pop_back();
    to.pop_back();
    for (size_t at = out.find(from); at != std::string::npos; at = out.find(from, at + to.size())) {
      out.replace(at, from.size(), to);
    }
  }
  return out;
}

std::string Catalog::recorded_forms(const std::string& path) const {
  return ojson(ledger_->recorded_as(path)).dump();
}

ResultSet Catalog::best(const std::optional<std::string>& metric) {
  ReadTxn txn(*this);
  if (metric) return query("SELECT * FROM best WHERE metric = ?", {*metric});
  return query("SELECT * FROM best ORDER BY metric");
}

ResultSet Catalog::checkpoint_rows(const std::string& path, std::string* resolved_path) {
  ReadTxn txn(*this);
  std::string p = absolute_normal(path);
  constexpr const char* kRowsOf =
      "SELECT * FROM checkpoints WHERE path IN (SELECT value FROM json_each(?)) ORDER BY seq";
  ResultSet rs = query(kRowsOf, {recorded_forms(p)});
  if (rs.rows.empty() && path.find('/') == std::string::npos) {
    // A bare file name: the one ledger path with that name.
    ResultSet names = query(
        "SELECT DISTINCT path FROM events WHERE path IS NOT NULL AND "
        "substr(path, -length(?1) - 1) = '/' || ?1 AND kind IN ('save_committed', 'published', "
        "'save_failed', 'save_begun') ORDER BY path",
        {path});
    if (names.rows.size() > 1) {
      std::string all;
      for (const auto& r : names.rows) all += "\n  " + r[0].get<std::string>();
      throw UsageError(fmt::format("'{}' names several files; give the full path:{}", path, all));
    }
    if (names.rows.size() == 1) {
      p = names.rows[0][0].get<std::string>();
      rs = query(kRowsOf, {recorded_forms(p)});
    }
  }
  if (resolved_path) *resolved_path = p;
  return rs;
}

ResultSet Catalog::events_about(const std::string& path) {
  ReadTxn txn(*this);
  return query(fmt::format("SELECT {0} FROM history WHERE seq IN ("
                           "SELECT seq FROM events WHERE path IN {1} "
                           "UNION SELECT seq FROM events WHERE kind = 'pruned' AND "
                           "json_extract(detail, '$.superseded_by') IN {1} "
                           "UNION SELECT seq FROM events WHERE kind = 'published' AND "
                           "json_extract(detail, '$.source') IN {1} "
                           "UNION SELECT seq FROM events WHERE kind = 'best_updated' AND "
                           "json_extract(detail, '$.previous_path') IN {1}) ORDER BY seq",
                           kHistoryColumns, "(SELECT value FROM json_each(?1))"),
               {recorded_forms(path)});
}

int64_t Catalog::resolve_point(const Point& p) {
  ReadTxn txn(*this);
  const int64_t last = query("SELECT ifnull(max(seq), 0) FROM events").rows[0][0].get<int64_t>();
  switch (p.kind) {
    case Point::Kind::kSeq:
      return std::clamp<int64_t>(p.value, 0, last);
    case Point::Kind::kTime:
      return query("SELECT ifnull(max(seq), 0) FROM events WHERE ts_us <= ?", {p.value})
          .rows[0][0]
          .get<int64_t>();
    case Point::Kind::kEpoch:
    case Point::Kind::kIter: {
      const char* col = p.kind == Point::Kind::kEpoch ? "epoch" : "iter";
      ojson first =
          query(fmt::format("SELECT min(seq) FROM events WHERE {} > ?", col), {p.value}).rows[0][0];
      return first.is_null() ? last : first.get<int64_t>() - 1;
    }
  }
  return last;
}

StateResult Catalog::state_as_of(const std::optional<Point>& as_of) {
  ReadTxn txn(*this);
  StateResult r;
  r.seq = as_of ? resolve_point(*as_of)
                : query("SELECT ifnull(max(seq), 0) FROM events").rows[0][0].get<int64_t>();
  HookStateFold fold(r.state);
  ledger_->replay(fold, r.seq);
  // The parts of a copied or moved work_dir are its own (never orphans to gc).
  if (!ledger_->moved_roots().empty()) {
    reroot_parts(r.state, [&](const std::string& p) { return ledger_->reroot(p); });
  }
  if (r.seq > 0) {
    r.time = query("SELECT time FROM history WHERE seq = ?", {r.seq})
                 .rows.at(0)
                 .at(0)
                 .get<std::string>();
  }
  // The hub's key names come from the config the run was started with.
  bool single = r.state.best.size() == 1;
  std::vector<std::string> keys;
  for (const auto& kv : r.state.best) keys.push_back(kv.first);
  if (!r.state.config.empty()) {
    try {
      ValidatedConfig cfg = validate(HookConfig::from_json(nlohmann::json::parse(r.state.config)));
      single = cfg.single_indicator();
      keys = cfg.key_indicators();
    } catch (const std::exception&) {
      // A config this binary cannot read: name the hub keys after the bests found.
    }
  }
  nlohmann::json hub = r.state.hub_info(single, keys);
  r.hub = ojson::parse(hub.dump());
  return r;
}

std::vector<std::string> find_ledgers(const std::string& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    throw_error(ErrorCode::kNotFound, fmt::format("--root {}: not a directory", root));
  }
  std::vector<std::string> out;
  fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    if (it->path().filename() == kDefaultLedgerName && it->is_regular_file(ec)) {
      out.push_back(absolute_normal(it->path().string()));
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace ckptledger
