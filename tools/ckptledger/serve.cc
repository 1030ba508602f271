// `ckptledger serve`: a read-only HTTP/1.1 server over one work_dir or every work_dir below a root
// (docs/serve.md): the catalog's JSON (catalog/report.h, the same bytes as the CLI's --json), an
// event stream (Server-Sent Events), Prometheus metrics, downloads of live checkpoints and the
// dashboard (tools/ckptledger/dashboard/).
//
// Threads: `threads` I/O threads run the sessions (Boost.Beast over Boost.Asio, one strand per
// connection); catalog queries, which may hash files (latest, verify, show), run on a separate
// pool so that a slow one never holds a connection's I/O. Every thread keeps its own read-only
// Catalog per ledger (a Catalog is one SQLite connection: one per thread).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "catalog/follow.h"
#include "catalog/report.h"
#include "tools/ckptledger/dashboard_assets.h"
#include "tools/ckptledger/verbs.h"
#include "tools/cli.h"

namespace ckptledger::cli {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace fs = std::filesystem;
using tcp = asio::ip::tcp;
using ojson = nlohmann::ordered_json;

constexpr size_t kHeaderLimit = 8 * 1024;
constexpr auto kRequestTimeout = std::chrono::seconds(10);
constexpr auto kIdleTimeout = std::chrono::seconds(30);
// A client that stops reading a reply (a download, an event stream) is dropped after this long.
constexpr auto kWriteTimeout = std::chrono::seconds(60);
constexpr auto kKeepAliveComment = std::chrono::seconds(15);
constexpr size_t kFileChunk = 256 * 1024;

// ---- HTTP errors
// ---------------------------------------------------------------------------------

struct HttpError : std::runtime_error {
  HttpError(unsigned s, const std::string& m) : std::runtime_error(m), status(s) {}
  unsigned status;
};

unsigned status_for(const Error& e) {
  switch (e.code()) {
    case ErrorCode::kInvalidArgument:
      return 400;
    case ErrorCode::kNotFound:
      return 404;
    case ErrorCode::kBusy:
      return 503;
    default:
      return 500;
  }
}

std::string error_body(unsigned status, const std::string& message) {
  return ojson{{"error", message}, {"status", status}}.dump() + "\n";
}

// ---- URLs
// ------------------------------------------------------------------------------------------

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decoding; '+' is a space in query strings only. A malformed escape or a NUL is a 400.
std::string url_decode(std::string_view s, bool query) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%') {
      const int hi = i + 1 < s.size() ? hex_value(s[i + 1]) : -1;
      const int lo = i + 2 < s.size() ? hex_value(s[i + 2]) : -1;
      if (hi < 0 || lo < 0) throw HttpError(400, "malformed percent-encoding in the URL");
      c = static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && query) {
      c = ' ';
    }
    if (c == '\0') throw HttpError(400, "NUL in the URL");
    out += c;
  }
  return out;
}

struct Target {
  std::string path;                                         // decoded
  std::vector<std::pair<std::string, std::string>> params;  // decoded, in order
  std::optional<std::string> param(const std::string& k) const {
    for (const auto& [n, v] : params) {
      if (n == k) return v;
    }
    return std::nullopt;
  }
  std::vector<std::string> all(const std::string& k) const {
    std::vector<std::string> out;
    for (const auto& [n, v] : params) {
      if (n != k) continue;
      std::string item;
      std::istringstream in(v);
      while (std::getline(in, item, ',')) {
        if (!item.empty()) out.push_back(item);
      }
    }
    return out;
  }
  // A parameter outside `known` is a 400 (a typo must not be silently ignored).
  void only(std::initializer_list<const char*> known) const {
    for (const auto& [n, v] : params) {
      if (n == "token") continue;
      if (std::none_of(known.begin(), known.end(), [&](const char* k) { return n == k; })) {
        throw HttpError(400, fmt::format("unknown parameter '{}' for {}", n, path));
      }
    }
  }
};

Target parse_target(std::string_view t) {
  Target out;
  const size_t q = t.find('?');
  out.path = url_decode(t.substr(0, q), false);
  if (q == std::string_view::npos) return out;
  std::string_view rest = t.substr(q + 1);
  while (!rest.empty()) {
    const size_t amp = rest.find('&');
    std::string_view kv = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    if (kv.empty()) continue;
    const size_t eq = kv.find('=');
    out.params.emplace_back(
        url_decode(kv.substr(0, eq), true),
        eq == std::string_view::npos ? "" : url_decode(kv.substr(eq + 1), true));
  }
  return out;
}

int64_t int_param(const std::string& name, const std::string& v, int64_t min) {
  char* end = nullptr;
  errno = 0;
  long long n = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno == ERANGE || n < min) {
    throw HttpError(400, fmt::format("{}: '{}' is not an integer >= {}", name, v, min));
  }
  return n;
}

// ---- What is served
// ----------------------------------------------------------------------------------

struct WorkDir {
  std::string id;  // "." for a single work_dir; else the path relative to the root
  std::string work_dir;
  std::string ledger;
};

class Site {
 public:
  explicit Site(const ServeOptions& o) : root_(o.root) {
    if (root_.empty()) {
      std::error_code ec;
      const std::string ledger = resolve_ledger_path(absolute_normal(o.target));
      std::string dir = fs::path(ledger).parent_path().string();
      if (!fs::is_directory(dir, ec)) {
        throw Error(ErrorCode::kNotFound, fmt::format("serve: {}: no such directory", dir));
      }
      single_ = {".", dir, ledger};
    } else {
      std::error_code ec;
      if (!fs::is_directory(root_, ec)) {
        throw Error(ErrorCode::kNotFound, fmt::format("--root {}: not a directory", root_));
      }
      root_ = absolute_normal(root_);
      rescan(true);
    }
  }
  bool rooted() const { return !root_.empty(); }

  std::vector<WorkDir> all() {
    if (!rooted()) return {single_};
    rescan(false);
    std::lock_guard<std::mutex> lk(mu_);
    return dirs_;
  }
  std::vector<std::string> ledgers() {
    std::vector<std::string> out;
    for (const WorkDir& w : all()) out.push_back(w.ledger);
    return out;
  }

  // Splits "/w/<id>/rest" into the work_dir and "/rest" (root mode).
  std::optional<std::pair<WorkDir, std::string>> route(const std::string& path) {
    if (!rooted() || path.compare(0, 3, "/w/") != 0) return std::nullopt;
    for (int attempt = 0; attempt < 2; ++attempt) {
      std::optional<std::pair<WorkDir, std::string>> best;
      {
        std::lock_guard<std::mutex> lk(mu_);
        for (const WorkDir& w : dirs_) {
          const std::string prefix = "/w/" + w.id;
          if (path.compare(0, prefix.size(), prefix) != 0) continue;
          if (path.size() > prefix.size() && path[prefix.size()] != '/') continue;
          if (!best || w.id.size() > best->first.id.size()) {
            best = std::make_pair(
                w, path.size() == prefix.size() ? std::string("/") : path.substr(prefix.size()));
          }
        }
      }
      if (best) return best;
      rescan(true);  // a work_dir that appeared since the last scan
    }
    return std::nullopt;
  }
  const WorkDir& single() const { return single_; }

 private:
  void rescan(bool force) {
    const auto now = std::chrono::steady_clock::now();
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (!force && now - scanned_ < std::chrono::seconds(2)) return;
      // A request for an unknown /w/<id> rescans at most once per second: the walk is not free.
      if (force && now - scanned_ < std::chrono::seconds(1)) return;
    }
    std::vector<WorkDir> found;
    for (const std::string& ledger : find_ledgers(root_)) {
      std::string dir = fs::path(ledger).parent_path().string();
      std::string id = fs::path(dir).lexically_relative(root_).string();
      found.push_back({id.empty() ? "." : id, dir, ledger});
    }
    std::lock_guard<std::mutex> lk(mu_);
    dirs_ = std::move(found);
    scanned_ = now;
  }

  std::string root_;
  WorkDir single_;
  std::mutex mu_;
  std::vector<WorkDir> dirs_;
  std::chrono::steady_clock::time_point scanned_{};
};

// The calling thread's read-only Catalog of `ledger` (a Catalog is one SQLite connection).
// A ledger replaced by another file under its name gets a new Catalog (the old connection would
// read the old inode for ever).
Catalog& catalog_for(const std::string& ledger) {
  struct Entry {
    std::unique_ptr<Catalog> catalog;
    dev_t dev = 0;
    ino_t ino = 0;
  };
  thread_local std::map<std::string, Entry> cache;
  struct stat st {};
  if (::stat(ledger.c_str(), &st) != 0) {
    cache.erase(ledger);
    throw Error(ErrorCode::kNotFound, fmt::format("ledger {}: no such file", ledger));
  }
  auto it = cache.find(ledger);
  if (it != cache.end() && (it->second.dev != st.st_dev || it->second.ino != st.st_ino)) {
    cache.erase(it);
    it = cache.end();
  }
  if (it == cache.end()) {
    it = cache.emplace(ledger, Entry{Catalog::open(ledger), st.st_dev, st.st_ino}).first;
  }
  return *it->second.catalog;
}

// ---- Responses
// ------------------------------------------------------------------------------------------

struct Reply {
  using Headers = std::vector<std::pair<std::string, std::string>>;
  Reply(unsigned s = 200, std::string type = "application/json", std::string b = {}, Headers h = {})
      : status(s), content_type(std::move(type)), body(std::move(b)), headers(std::move(h)) {}
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;
  Headers headers;
  // A file reply: the bytes [first, last] of `fd` (owned by the reply) instead of `body`.
  std::shared_ptr<int> fd;
  int64_t first = 0, last = -1;
};

std::shared_ptr<int> owned_fd(int fd) {
  return std::shared_ptr<int>(new int(fd), [](int* p) {
    if (*p >= 0) ::close(*p);
    delete p;
  });
}

Reply json_reply(const ojson& doc) { return {200, "application/json", report::render(doc), {}}; }

// A live file's name under /files/: relative to the work_dir, else absolute without its '/'.
std::string relative_key(const std::string& path, const std::string& work_dir) {
  const std::string rel = relative_to(path, work_dir);
  return rel != path || path.size() < 2 || path[0] != '/' ? rel : path.substr(1);
}

std::string prom_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string prom_number(const ojson& v) {
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number()) {
    const double d = v.get<double>();
    if (std::isnan(d)) return "NaN";
    if (std::isinf(d)) return d > 0 ? "+Inf" : "-Inf";
    return fmt::format("{:.17g}", d);
  }
  return "NaN";
}

// Prometheus text format 0.0.4, every series labelled with its work_dir.
std::string metrics_text(const std::vector<WorkDir>& dirs) {
  struct Family {
    const char* name;
    const char* type;
    const char* help;
    std::string samples;
  };
  std::vector<Family> f = {
      {"ckptledger_best_score", "gauge", "The current best score per metric.", ""},
      {"ckptledger_live_checkpoints", "gauge", "Live checkpoint files by kind.", ""},
      {"ckptledger_live_checkpoint_bytes", "gauge", "Total size of the live checkpoint files.", ""},
      {"ckptledger_seconds_since_last_save", "gauge", "Seconds since the newest committed save.",
       ""},
      {"ckptledger_failed_writes_total", "counter", "Checkpoint writes that failed.", ""},
      {"ckptledger_runs", "gauge", "Runs (processes that trained) by outcome.", ""},
      {"ckptledger_events_total", "counter", "Committed ledger events (the newest seq).", ""},
  };
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  for (const WorkDir& w : dirs) {
    const std::string wd = fmt::format("work_dir=\"{}\"", prom_escape(w.work_dir));
    Catalog* cat = nullptr;
    try {
      cat = &catalog_for(w.ledger);
    } catch (const Error&) {
      continue;  // no ledger yet, or unreadable: nothing to say about it
    }
    ResultSet best = cat->best(std::nullopt);
    for (size_t i = 0; i < best.rows.size(); ++i) {
      f[0].samples +=
          fmt::format("ckptledger_best_score{{{},metric=\"{}\",rule=\"{}\"}} {}\n", wd,
                      prom_escape(cell_text(best.at(i, "metric"))),
                      prom_escape(cell_text(best.at(i, "rule"))), prom_number(best.at(i, "score")));
    }
    ResultSet live = cat->query(
        "SELECT kind, count(*), ifnull(sum(bytes), 0) FROM checkpoints WHERE status = 'live' "
        "GROUP BY kind ORDER BY kind");
    int64_t bytes = 0;
    std::map<std::string, int64_t> counts = {{"best", 0}, {"published", 0}, {"regular", 0}};
    for (const auto& row : live.rows) {
      counts[cell_text(row[0])] = row[1].get<int64_t>();
      bytes += row[2].get<int64_t>();
    }
    for (const auto& [kind, n] : counts) {
      f[1].samples += fmt::format("ckptledger_live_checkpoints{{{},kind=\"{}\"}} {}\n", wd,
                                  prom_escape(kind), n);
    }
    f[2].samples += fmt::format("ckptledger_live_checkpoint_bytes{{{}}} {}\n", wd, bytes);
    ResultSet agg = cat->query(
        "SELECT (SELECT max(ts_us) FROM events WHERE kind = 'save_committed'), "
        "(SELECT count(*) FROM events WHERE kind = 'save_failed'), "
        "(SELECT ifnull(max(seq), 0) FROM events)");
    if (!agg.rows[0][0].is_null()) {
      const double age = now - static_cast<double>(agg.rows[0][0].get<int64_t>()) / 1e6;
      f[3].samples += fmt::format("ckptledger_seconds_since_last_save{{{}}} {:.3f}\n", wd, age);
    }
    f[4].samples +=
        fmt::format("ckptledger_failed_writes_total{{{}}} {}\n", wd, agg.rows[0][1].get<int64_t>());
    std::map<std::string, int64_t> outcomes = {{"crashed", 0}, {"finished", 0}, {"running", 0}};
    ResultSet runs = cat->runs();
    for (size_t i = 0; i < runs.rows.size(); ++i) ++outcomes[cell_text(runs.at(i, "ended"))];
    for (const auto& [o, n] : outcomes) {
      f[5].samples +=
          fmt::format("ckptledger_runs{{{},outcome=\"{}\"}} {}\n", wd, prom_escape(o), n);
    }
    f[6].samples +=
        fmt::format("ckptledger_events_total{{{}}} {}\n", wd, agg.rows[0][2].get<int64_t>());
  }
  std::string out;
  for (const Family& fam : f) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{}", fam.name, fam.help, fam.name, fam.type,
                       fam.samples);
  }
  return out;
}

// Replies that depend on the events alone (best, history, state): the events are append-only, so
// such a reply stays right while the newest seq is unchanged. Checking that costs one indexed
// lookup, against a view query and a JSON rendering per request (/best polled by hundreds of
// clients). Errors are not cached.
class ReplyCache {
 public:
  std::optional<Reply> get(const std::string& key, int64_t seq) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = map_.find(key);
    if (it == map_.end() || it->second.first != seq) return std::nullopt;
    return it->second.second;
  }
  void put(const std::string& key, int64_t seq, const Reply& r) {
    std::lock_guard<std::mutex> lk(mu_);
    if (map_.size() >= kMaxEntries) map_.clear();
    map_[key] = {seq, r};
  }

 private:
  static constexpr size_t kMaxEntries = 4096;
  std::mutex mu_;
  std::map<std::string, std::pair<int64_t, Reply>> map_;
};

ReplyCache& reply_cache() {
  static ReplyCache cache;
  return cache;
}

Reply work_dir_endpoint(const WorkDir& w, const std::string& ep, const Target& t);

// `work_dir_endpoint`, through the cache for the endpoints that depend on the events alone.
Reply cached_endpoint(const WorkDir& w, const std::string& ep, const Target& t) {
  if (ep != "/best" && ep != "/history" && ep != "/state") return work_dir_endpoint(w, ep, t);
  std::string key = w.ledger + "\n" + ep;
  for (const auto& [k, v] : t.params) key += "\n" + k + "=" + v;
  ResultSet rs = catalog_for(w.ledger).query("SELECT ifnull(max(seq), 0) FROM events");
  const int64_t seq = rs.rows[0][0].get<int64_t>();
  if (auto hit = reply_cache().get(key, seq)) return *hit;
  Reply r = work_dir_endpoint(w, ep, t);
  reply_cache().put(key, seq, r);
  return r;
}

// The JSON endpoints of one work_dir: the CLI's --json document for the same options.
Reply work_dir_endpoint(const WorkDir& w, const std::string& ep, const Target& t) {
  auto nothing = [](const std::string& m) { return HttpError(404, m); };
  if (ep == "/best") {
    t.only({"metric"});
    std::optional<std::string> m = t.param("metric");
    ojson rows = report::best_rows(catalog_for(w.ledger), m, /*root=*/false);
    if (m && rows.empty()) throw nothing(fmt::format("no best checkpoint for metric '{}'", *m));
    return json_reply(rows);
  }
  if (ep == "/latest") {
    t.only({});
    Catalog& cat = catalog_for(w.ledger);
    ojson o = report::latest(cat, cat.latest(), /*root=*/false);
    if (o.is_null()) {
      throw nothing(fmt::format("{}: no committed regular checkpoint verifies", cat.ledger_path()));
    }
    return json_reply(o);
  }
  if (ep == "/history") {
    t.only({"since", "kind", "path", "limit"});
    HistoryFilter f;
    f.kinds = t.all("kind");
    if (auto s = t.param("since")) f.since = parse_point(*s, "since", /*counters=*/false);
    // A relative path is the work_dir's (the server's own directory means nothing to a client).
    if (auto p = t.param("path")) {
      f.path = fs::path(*p).is_absolute() ? *p : (fs::path(w.work_dir) / *p).string();
    }
    if (auto l = t.param("limit")) f.limit = int_param("limit", *l, 0);
    return json_reply(report::history(catalog_for(w.ledger), f));
  }
  if (ep == "/runs") {
    t.only({});
    return json_reply(report::runs(catalog_for(w.ledger)));
  }
  if (ep == "/state") {
    t.only({"as_of"});
    std::optional<Point> p;
    if (auto a = t.param("as_of")) p = parse_point(*a, "as_of");
    Catalog& cat = catalog_for(w.ledger);
    return json_reply(report::state(cat, cat.state_as_of(p)));
  }
  if (ep == "/show") {
    t.only({"path"});
    auto p = t.param("path");
    if (!p || p->empty()) throw HttpError(400, "show: the parameter 'path' is required");
    // A relative path is relative to the work_dir (the server's own directory means nothing).
    std::string path = fs::path(*p).is_absolute() || p->find('/') == std::string::npos
                           ? *p
                           : (fs::path(w.work_dir) / *p).string();
    Catalog& cat = catalog_for(w.ledger);
    ojson o = report::show(cat, path);
    if (o.is_null())
      throw nothing(fmt::format("{}: the ledger knows no file {}", cat.ledger_path(), *p));
    return json_reply(o);
  }
  if (ep == "/verify") {
    t.only({});
    Catalog& cat = catalog_for(w.ledger);
    return json_reply(report::verify(cat, cat.verify()));
  }
  if (ep == "/metrics") {
    t.only({});
    return {200, "text/plain; version=0.0.4; charset=utf-8", metrics_text({w}), {}};
  }
  throw HttpError(404, fmt::format("no such endpoint: {}", ep));
}

// ---- Static files (the dashboard) ---------------------------------------------------------------

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Asset {
  std::string content_type;
  std::string body;
};

std::optional<Asset> asset(const std::string& name, const std::string& dashboard_dir) {
  const std::string type =
      name.size() > 3 && name.substr(name.size() - 3) == ".js"    ? "text/javascript; charset=utf-8"
      : name.size() > 4 && name.substr(name.size() - 4) == ".css" ? "text/css; charset=utf-8"
                                                                  : "text/html; charset=utf-8";
  if (name == "chart.js") {
    // Debian's libjs-chart.js, read where the package puts it (no copy in this repository).
    std::string body = read_file(kChartJsPath);
    if (body.empty()) {
      throw HttpError(
          500, fmt::format("Chart.js not found at {} (install libjs-chart.js)", kChartJsPath));
    }
    return Asset{type, std::move(body)};
  }
  for (const EmbeddedFile& f : dashboard_files()) {
    if (name != f.name) continue;
    if (!dashboard_dir.empty()) {
      // Given a directory, serve only what is in it: a missing file must not hide behind the
      // built-in copy.
      const std::string path = (fs::path(dashboard_dir) / f.name).string();
      std::string body = read_file(path);
      if (body.empty()) throw HttpError(404, fmt::format("--dashboard-dir: no {}", path));
      return Asset{type, std::move(body)};
    }
    return Asset{type, std::string(f.content)};
  }
  return std::nullopt;
}

// ---- Live files
// ------------------------------------------------------------------------------------

struct LiveFile {
  std::string path;
  int64_t bytes = 0;
  std::string sha256;
};

// The live checkpoint named `key` (relative to the work_dir, or absolute without its leading '/'),
// looked up in the ledger's list: never resolved on the filesystem.
std::optional<LiveFile> live_file(const WorkDir& w, const std::string& key) {
  ResultSet rs = catalog_for(w.ledger).query(
      "SELECT path, bytes, sha256 FROM checkpoints WHERE status = 'live' AND bytes IS NOT NULL");
  for (size_t i = 0; i < rs.rows.size(); ++i) {
    const std::string path = cell_text(rs.at(i, "path"));
    if (relative_key(path, w.work_dir) != key) continue;
    return LiveFile{path, rs.at(i, "bytes").get<int64_t>(), cell_text(rs.at(i, "sha256"))};
  }
  return std::nullopt;
}

// `Range: bytes=a-b | a- | -n` against `size`: [first, last]; nullopt for the whole file; a 416
// for a range outside it. Several ranges are served as the whole file (allowed by RFC 9110).
std::optional<std::pair<int64_t, int64_t>> parse_range(const std::string& h, int64_t size) {
  if (h.compare(0, 6, "bytes=") != 0 || h.find(',') != std::string::npos) return std::nullopt;
  const std::string spec = h.substr(6);
  const size_t dash = spec.find('-');
  if (dash == std::string::npos) return std::nullopt;
  const std::string a = spec.substr(0, dash), b = spec.substr(dash + 1);
  auto num = [](const std::string& s) -> std::optional<int64_t> {
    if (s.empty() || s.size() > 18 || s.find_first_not_of("0123456789") != std::string::npos)
      return std::nullopt;
    return std::stoll(s);
  };
  int64_t first, last;
  if (a.empty()) {
    auto n = num(b);
    if (!n) return std::nullopt;
    if (*n == 0 || size == 0) throw HttpError(416, "Range: an empty suffix");
    first = std::max<int64_t>(0, size - *n);
    last = size - 1;
  } else {
    auto f = num(a);
    if (!f) return std::nullopt;
    if (*f >= size)
      throw HttpError(416, fmt::format("Range: starts past the end ({} bytes)", size));
    auto l = b.empty() ? std::optional<int64_t>(size - 1) : num(b);
    if (!l || *l < *f) return std::nullopt;
    first = *f;
    last = std::min(*l, size - 1);
  }
  return std::make_pair(first, last);
}

// `If-None-Match: "a", W/"b", *` holds `etag` (weak comparison, as RFC 9110 asks for it).
bool etag_matches(const std::string& header, const std::string& etag) {
  std::istringstream in(header);
  std::string item;
  while (std::getline(in, item, ',')) {
    const size_t b = item.find_first_not_of(" \t");
    if (b == std::string::npos) continue;
    item = item.substr(b, item.find_last_not_of(" \t") - b + 1);
    if (item.compare(0, 2, "W/") == 0) item = item.substr(2);
    if (item == "*" || item == etag) return true;
  }
  return false;
}

// ---- The server
// ----------------------------------------------------------------------------------

struct Server;

// One Server-Sent Events message: id = seq, event = kind, data = the history row.
std::string sse_message(const ojson& row) {
  return fmt::format("id: {}\nevent: {}\ndata: {}\n\n", row["seq"].get<int64_t>(),
                     row["kind"].get<std::string>(), row.dump());
}

// Wakes the event streams of one ledger when it changes: inotify through the follower, read by
// the I/O loop, plus a 1-second re-check for filesystems without inotify.
class Hub : public std::enable_shared_from_this<Hub> {
 public:
  Hub(asio::io_context& ioc, const std::string& ledger)
      : strand_(asio::make_strand(ioc)), timer_(strand_), follower_(ledger), fd_(strand_) {
    if (follower_.notify_fd() >= 0) fd_.assign(::dup(follower_.notify_fd()));
    try {
      base_ = last_ = follower_.last_seq();  // the tail starts now; older events come from SQLite
    } catch (const std::exception&) {
      base_ = last_ = 0;
    }
  }

  // The SSE messages of the events past `cursor` (of `kinds`; empty: all), from the tail this hub
  // keeps: every stream of a ledger shares one query and one rendering per commit. False when the
  // tail does not reach back to `cursor` (the caller reads SQLite). `*last`: the new cursor.
  bool from_tail(int64_t cursor, const std::vector<std::string>& kinds, std::string* text,
                 int64_t* last) {
    std::lock_guard<std::mutex> lk(mu_);
    if (cursor < base_) return false;
    for (const Message& m : tail_) {
      if (m.seq <= cursor) continue;
      if (kinds.empty() || std::find(kinds.begin(), kinds.end(), m.kind) != kinds.end()) {
        *text += m.text;
      }
    }
    *last = std::max(cursor, last_);
    return true;
  }
  void start() {
    arm_fd();
    arm_timer();
  }
  // `wake` is called after each change while `owner` lives.
  void subscribe(std::weak_ptr<void> owner, std::function<void()> wake) {
    std::lock_guard<std::mutex> lk(mu_);
    subscribers_.erase(std::remove_if(subscribers_.begin(), subscribers_.end(),
                                      [](const Subscriber& sub) { return sub.owner.expired(); }),
                       subscribers_.end());
    subscribers_.push_back({std::move(owner), std::move(wake)});
  }

 private:
  void arm_fd() {
    if (!fd_.is_open()) return;
    fd_.async_wait(asio::posix::stream_descriptor::wait_read,
                   [self = shared_from_this()](beast::error_code ec) {
                     if (ec) return;
                     if (self->follower_.drain()) self->check();
                     self->arm_fd();
                   });
  }
  void arm_timer() {
    timer_.expires_after(std::chrono::seconds(1));
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec) return;
      self->check();
      self->arm_timer();
    });
  }
  void check() {
    bool changed = false;
    try {
      changed = follower_.changed();
    } catch (const std::exception&) {
      return;  // the streams report the ledger's error themselves
    }
    if (!changed) return;
    std::vector<Message> fresh;
    int64_t last = 0;
    {
      std::lock_guard<std::mutex> lk(mu_);
      last = last_;
    }
    try {
      for (;;) {
        ojson rows = follower_.events_after(last, {}, 1000);
        for (const ojson& row : rows) {
          last = row["seq"].get<int64_t>();
          fresh.push_back({last, row["kind"].get<std::string>(), sse_message(row)});
        }
        if (rows.size() < 1000) break;
      }
    } catch (const std::exception&) {
      return;  // the streams report the ledger's error themselves
    }
    std::lock_guard<std::mutex> lk(mu_);
    for (Message& m : fresh) tail_.push_back(std::move(m));
    last_ = last;
    while (tail_.size() > kTailMax) {
      base_ = tail_.front().seq;
      tail_.pop_front();
    }
    subscribers_.erase(std::remove_if(subscribers_.begin(), subscribers_.end(),
                                      [](const Subscriber& sub) { return sub.owner.expired(); }),
                       subscribers_.end());
    for (const Subscriber& sub : subscribers_) sub.wake();
  }

  asio::strand<asio::io_context::executor_type> strand_;
  asio::steady_timer timer_;
  LedgerFollower follower_;
  asio::posix::stream_descriptor fd_;
  struct Message {
    int64_t seq;
    std::string kind;
    std::string text;
  };
  static constexpr size_t kTailMax = 4096;
  std::mutex mu_;
  struct Subscriber {
    std::weak_ptr<void> owner;
    std::function<void()> wake;
  };
  std::vector<Subscriber> subscribers_;
  std::deque<Message> tail_;  // the events (base_, last_], rendered
  int64_t base_ = 0, last_ = 0;
};

struct Server {
  ServeOptions options;
  Site site;
  std::string token;
  asio::io_context ioc;
  asio::thread_pool queries;  // catalog work (SQLite, file hashing) off the I/O threads
  std::atomic<int> connections{0};
  std::mutex hubs_mu;
  std::map<std::string, std::shared_ptr<Hub>> hubs;

  explicit Server(const ServeOptions& o)
      : options(o), site(o), queries(static_cast<size_t>(std::max(2, o.threads))) {}

  std::shared_ptr<Hub> hub(const std::string& ledger) {
    std::lock_guard<std::mutex> lk(hubs_mu);
    auto it = hubs.find(ledger);
    if (it != hubs.end()) return it->second;
    auto h = std::make_shared<Hub>(ioc, ledger);
    h->start();
    hubs.emplace(ledger, h);
    return h;
  }
};

bool token_ok(const Server& srv, const http::request<http::empty_body>& req, const Target& t) {
  if (srv.token.empty()) return true;
  std::string given;
  auto auth = req.find(http::field::authorization);
  if (auth != req.end()) {
    std::string v(auth->value());
    if (v.compare(0, 7, "Bearer ") == 0) given = v.substr(7);
  } else if (auto q = t.param("token")) {
    given = *q;  // EventSource cannot send headers
  }
  // Constant time in the token's length.
  unsigned char diff = given.size() == srv.token.size() ? 0 : 1;
  for (size_t i = 0; i < srv.token.size(); ++i) {
    diff |= static_cast<unsigned char>(srv.token[i] ^ (i < given.size() ? given[i] : 0));
  }
  return diff == 0;
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, Server& srv) : stream_(std::move(socket)), srv_(srv) {}
  ~Session() { --srv_.connections; }

  void start() {
    if (++srv_.connections > srv_.options.max_connections) {
      Reply r{503, "application/json", error_body(503, "too many connections"), {}};
      keep_alive_ = false;
      send(std::move(r), false);
      return;
    }
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read(); });
  }

 private:
  // The first request must arrive whole within kRequestTimeout of the connection; later ones on
  // a kept-alive connection may wait kIdleTimeout for their first byte, then kRequestTimeout.
  void read() {
    parser_.emplace();
    parser_->header_limit(kHeaderLimit);
    parser_->body_limit(0);
    if (served_ == 0 || buffer_.size() > 0) return read_request();
    stream_.expires_after(kIdleTimeout);
    stream_.async_read_some(buffer_.prepare(kHeaderLimit),
                            [self = shared_from_this()](beast::error_code ec, size_t n) {
                              if (ec) return self->close();
                              self->buffer_.commit(n);
                              self->read_request();
                            });
  }
  void read_request() {
    stream_.expires_after(kRequestTimeout);
    http::async_read(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
        ec == asio::error::connection_reset || ec == asio::error::eof) {
      return close();
    }
    if (ec == http::error::header_limit) {
      keep_alive_ = false;
      return send({431,
                   "application/json",
                   error_body(431, fmt::format("request headers over {} bytes", kHeaderLimit)),
                   {}},
                  false);
    }
    if (ec == http::error::body_limit) {
      keep_alive_ = false;
      return send({413, "application/json", error_body(413, "requests take no body"), {}}, false);
    }
    if (ec) {
      keep_alive_ = false;
      return send(
          {400, "application/json", error_body(400, "malformed request: " + ec.message()), {}},
          false);
    }
    req_ = parser_->release();
    ++served_;
    keep_alive_ = req_.keep_alive();
    head_ = req_.method() == http::verb::head;
    stream_.expires_never();
    // Whatever goes wrong answers this request and never leaves the handler (a crash would end
    // every other connection too).
    try {
      dispatch_request();
    } catch (const HttpError& e) {
      send({e.status, "application/json", error_body(e.status, e.what()), {}}, head_);
    } catch (const UsageError& e) {
      send({400, "application/json", error_body(400, e.what()), {}}, head_);
    } catch (const Error& e) {
      const unsigned status = status_for(e);
      send({status, "application/json", error_body(status, e.what()), {}}, head_);
    } catch (const std::exception& e) {
      send({500, "application/json", error_body(500, e.what()), {}}, head_);
    }
  }

  void dispatch_request() {
    if (req_.method() != http::verb::get && req_.method() != http::verb::head) {
      return send({405,
                   "application/json",
                   error_body(405, fmt::format("{} is not allowed: only GET and HEAD",
                                               std::string(req_.method_string()))),
                   {{"Allow", "GET, HEAD"}}},
                  false);
    }
    Target t = parse_target(std::string(req_.target()));
    if (t.path.empty() || t.path[0] != '/') throw HttpError(400, "the target must be a path");
    if (t.path.compare(0, 8, "/static/") == 0) {
      auto a = asset(t.path.substr(8), srv_.options.dashboard_dir);
      if (!a) throw HttpError(404, fmt::format("no such file: {}", t.path));
      return send({200, a->content_type, std::move(a->body), {{"Cache-Control", "no-cache"}}},
                  head_);
    }
    // The dashboard page itself holds nothing: its data comes from the endpoints, which the token
    // guards.
    auto routed = srv_.site.route(t.path);
    std::string ep = routed ? routed->second : t.path;
    if (routed && t.path.back() != '/' && ep == "/") {
      // The page fetches its data with relative URLs: it must be loaded from ".../<id>/".
      std::string target(req_.target());
      const size_t q = target.find('?');
      target.insert(q == std::string::npos ? target.size() : q, "/");
      return send({301, "text/plain; charset=utf-8", "", {{"Location", target}}}, head_);
    }
    if ((ep == "/" || ep == "/index.html") && !(srv_.site.rooted() && !routed)) {
      auto a = asset("index.html", srv_.options.dashboard_dir);
      return send({200, a->content_type, std::move(a->body), {{"Cache-Control", "no-cache"}}},
                  head_);
    }
    if (!token_ok(srv_, req_, t)) {
      return send({401,
                   "application/json",
                   error_body(401, "a bearer token is required (Authorization: Bearer <token>)"),
                   {{"WWW-Authenticate", "Bearer"}}},
                  head_);
    }
    if (srv_.site.rooted() && !routed && (ep == "/" || ep == "/index.html")) {
      return send({200,
                   "text/html; charset=utf-8",
                   root_index(srv_.site.all(), t.param("token")),
                   {{"Cache-Control", "no-cache"}}},
                  head_);
    }
    if (srv_.site.rooted() && !routed) {
      if (t.path.compare(0, 3, "/w/") == 0) {
        throw HttpError(404, fmt::format("no work_dir served at {}", t.path));
      }
      return query([t, &srv = srv_]() -> Reply { return root_endpoint(srv, t); });
    }
    const WorkDir w = routed ? routed->first : srv_.site.single();
    if (ep == "/events") return start_events(w, t);
    if (ep.compare(0, 7, "/files/") == 0) return start_file(w, ep.substr(7));
    if (ep == "/work_dirs") {
      t.only({});
      return send(json_reply(work_dirs_json(srv_.site.all())), head_);
    }
    query([w, ep, t]() -> Reply { return cached_endpoint(w, ep, t); });
  }

  // --root: the list of work_dirs, each a link to its dashboard.
  static std::string root_index(const std::vector<WorkDir>& dirs,
                                const std::optional<std::string>& token) {
    auto esc = [](const std::string& v) {
      std::string o;
      for (char c : v) {
        if (c == '<')
          o += "&lt;";
        else if (c == '>')
          o += "&gt;";
        else if (c == '&')
          o += "&amp;";
        else if (c == '"')
          o += "&quot;";
        else
          o += c;
      }
      return o;
    };
    std::string html =
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>ckptledger</title>"
        "<link rel=\"stylesheet\" href=\"/static/dashboard.css\"></head><body>"
        "<h1>ckptledger: work_dirs</h1><ul id=\"work-dirs\">\n";
    for (const WorkDir& w : dirs) {
      std::string href;
      for (char c : w.id) {
        if (std::isalnum(static_cast<unsigned char>(c)) || std::strchr("/-_.~", c)) {
          href += c;
        } else {
          href += fmt::format("%{:02X}", static_cast<unsigned char>(c));
        }
      }
      if (token) {
        href += "/?token=";
        for (char c : *token) {
          href += std::isalnum(static_cast<unsigned char>(c)) ? std::string(1, c)
                                                              : fmt::format("%{:02X}", c & 0xff);
        }
      } else {
        href += "/";
      }
      html += fmt::format("<li><a href=\"/w/{}\">{}</a> <code>{}</code></li>\n", esc(href),
                          esc(w.id), esc(w.work_dir));
    }
    return html + "</ul></body></html>\n";
  }

  static ojson work_dirs_json(const std::vector<WorkDir>& dirs) {
    ojson a = ojson::array();
    for (const WorkDir& w : dirs)
      a.push_back({{"id", w.id}, {"work_dir", w.work_dir}, {"ledger", w.ledger}});
    return a;
  }

  static Reply root_endpoint(Server& srv, const Target& t) {
    std::vector<std::string> errors, skipped;
    if (t.path == "/best") {
      t.only({"metric"});
      return json_reply(report::best_many(srv.site.ledgers(), t.param("metric"), &errors));
    }
    if (t.path == "/latest") {
      t.only({});
      return json_reply(report::latest_many(srv.site.ledgers(), &errors, &skipped));
    }
    if (t.path == "/work_dirs") {
      t.only({});
      return json_reply(work_dirs_json(srv.site.all()));
    }
    if (t.path == "/metrics") {
      t.only({});
      return {200, "text/plain; version=0.0.4; charset=utf-8", metrics_text(srv.site.all()), {}};
    }
    throw HttpError(404,
                    fmt::format("no such endpoint: {} (a work_dir's are below /w/<id>/)", t.path));
  }

  // Runs `fn` on the query pool, then sends its reply from this connection's strand.
  template <class Fn>
  void query(Fn fn) {
    asio::post(srv_.queries, [self = shared_from_this(), fn = std::move(fn)]() mutable {
      Reply r;
      try {
        r = fn();
      } catch (const HttpError& e) {
        r = {e.status, "application/json", error_body(e.status, e.what()), {}};
      } catch (const UsageError& e) {
        r = {400, "application/json", error_body(400, e.what()), {}};
      } catch (const Error& e) {
        const unsigned s = status_for(e);
        r = {s, "application/json", error_body(s, e.what()), {}};
      } catch (const std::exception& e) {
        r = {500, "application/json", error_body(500, e.what()), {}};
      }
      asio::post(self->stream_.get_executor(),
                 [self, r = std::move(r)]() mutable { self->send(std::move(r), self->head_); });
    });
  }

  void send(Reply r, bool head) {
    auto res = std::make_shared<http::response<http::string_body>>(
        static_cast<http::status>(r.status), req_.version() ? req_.version() : 11);
    res->set(http::field::server, "ckptledger");
    res->set(http::field::content_type, r.content_type);
    for (auto& [k, v] : r.headers) res->set(k, v);
    res->keep_alive(keep_alive_ && r.status < 500);
    const bool keep = res->keep_alive();
    if (r.fd && r.status != 304) {
      // A file: the header here, the bytes from the file (HEAD: the header alone).
      const int64_t n = r.last - r.first + 1;
      res->content_length(n);
      auto sr = std::make_shared<http::response_serializer<http::string_body>>(*res);
      stream_.expires_after(kWriteTimeout);
      http::async_write_header(stream_, *sr,
                               [self = shared_from_this(), res, sr, fd = r.fd, first = r.first, n,
                                head, keep](beast::error_code ec, size_t) {
                                 if (ec) return self->close();
                                 if (head) return keep ? self->read() : self->close();
                                 self->send_file_bytes(fd, first, first + n, keep);
                               });
      return;
    }
    const size_t n = r.status == 304 ? 0 : r.body.size();
    if (!head && r.status != 304) res->body() = std::move(r.body);
    if (r.status != 304) res->content_length(n);
    stream_.expires_after(kWriteTimeout);
    http::async_write(stream_, *res,
                      [self = shared_from_this(), res](beast::error_code ec, size_t) {
                        if (ec || !res->keep_alive()) return self->close();
                        self->read();
                      });
  }

  void close() {
    beast::error_code ec;
    streaming_ = false;
    if (keep_alive_timer_) keep_alive_timer_->cancel();  // else it holds the session 15 s more
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

  // ---- /files/<key> ----
  void start_file(const WorkDir& w, const std::string& key) {
    const std::string range(req_[http::field::range]);
    const std::string inm(req_[http::field::if_none_match]);
    query([w, key, range, inm]() -> Reply {
      auto f = live_file(w, key);
      if (!f) throw HttpError(404, fmt::format("no live checkpoint named {}", key));
      auto fd = owned_fd(::open(f->path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
      if (*fd < 0) {
        const int err = errno;
        throw HttpError(err == ELOOP ? 403 : 404,
                        fmt::format("{}: {}", f->path,
                                    err == ELOOP ? "a symlink, not served" : std::strerror(err)));
      }
      struct stat st {};
      if (::fstat(*fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size != f->bytes) {
        throw HttpError(409,
                        fmt::format("{}: not the {} bytes the ledger recorded", f->path, f->bytes));
      }
      const std::string etag = "\"" + f->sha256 + "\"";
      Reply r{200, "application/octet-stream", "", {{"ETag", etag}, {"Accept-Ranges", "bytes"}}};
      if (etag_matches(inm, etag)) {
        r.status = 304;
        return r;
      }
      r.first = 0;
      r.last = f->bytes - 1;
      if (!range.empty()) {
        std::optional<std::pair<int64_t, int64_t>> rg;
        try {
          rg = parse_range(range, f->bytes);
        } catch (const HttpError& e) {
          return Reply(416, "application/json", error_body(416, e.what()),
                       {{"Content-Range", fmt::format("bytes */{}", f->bytes)}});
        }
        if (rg) {
          r.first = rg->first;
          r.last = rg->second;
          r.status = 206;
          r.headers.emplace_back("Content-Range",
                                 fmt::format("bytes {}-{}/{}", r.first, r.last, f->bytes));
        }
      }
      r.headers.emplace_back(
          "Content-Disposition",
          fmt::format("attachment; filename=\"{}\"", fs::path(f->path).filename().string()));
      r.fd = std::move(fd);
      return r;
    });
  }

  // Writes [pos, end) of `fd` in chunks, then goes on with the connection.
  void send_file_bytes(std::shared_ptr<int> fd, int64_t pos, int64_t end, bool keep) {
    if (pos >= end) {
      if (!keep) return close();
      return read();
    }
    auto buf = std::make_shared<std::vector<char>>(
        static_cast<size_t>(std::min<int64_t>(kFileChunk, end - pos)));
    const ssize_t n = ::pread(*fd, buf->data(), buf->size(), pos);
    if (n <= 0) return close();  // the file changed under us: the client sees a short body
    stream_.expires_after(kWriteTimeout);
    asio::async_write(
        stream_, asio::buffer(buf->data(), static_cast<size_t>(n)),
        [self = shared_from_this(), buf, fd, pos, end, keep, n](beast::error_code ec, size_t) {
          if (ec) return self->close();
          self->send_file_bytes(fd, pos + n, end, keep);
        });
  }

  // ---- /events ----
  void start_events(const WorkDir& w, const Target& t) {
    t.only({"since", "kind"});
    int64_t cursor = 0;
    auto last_id = req_.find("Last-Event-ID");
    if (last_id != req_.end()) {
      cursor = int_param("Last-Event-ID", std::string(last_id->value()), 0);
    } else if (auto s = t.param("since")) {
      cursor = int_param("since", *s, 0);
    }
    kinds_ = t.all("kind");
    for (const std::string& k : kinds_) {
      if (!event_kind_from_name(k))
        throw HttpError(400, fmt::format("kind: '{}' is not an event kind", k));
    }
    cursor_ = cursor;
    ledger_ = w.ledger;
    std::string head =
        "HTTP/1.1 200 OK\r\nServer: ckptledger\r\nContent-Type: text/event-stream\r\n"
        "Cache-Control: no-cache\r\nConnection: close\r\nX-Accel-Buffering: no\r\n\r\n";
    if (head_) {
      keep_alive_ = false;
      return write_raw(std::move(head), true);
    }
    hub_ = srv_.hub(w.ledger);  // may throw: answered as an error
    streaming_ = true;
    std::weak_ptr<Session> weak = shared_from_this();
    hub_->subscribe(weak, [weak] {
      if (auto s = weak.lock()) asio::post(s->stream_.get_executor(), [s] { s->pull(); });
    });
    // A read that ends when the client goes away.
    watch_close();
    write_raw(std::move(head) + "retry: 1000\n\n", false);
    arm_keep_alive();
  }

  void watch_close() {
    auto buf = std::make_shared<std::array<char, 512>>();
    stream_.socket().async_read_some(
        asio::buffer(*buf), [self = shared_from_this(), buf](beast::error_code ec, size_t) {
          if (ec) {
            self->streaming_ = false;
            return self->close();
          }
          self->watch_close();  // anything a client sends on an event stream is ignored
        });
  }

  void arm_keep_alive() {
    if (!keep_alive_timer_) keep_alive_timer_.emplace(stream_.get_executor());
    keep_alive_timer_->expires_after(kKeepAliveComment);
    keep_alive_timer_->async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec || !self->streaming_) return;
      if (!self->writing_) self->write_raw(": keep-alive\n\n", false);
      self->arm_keep_alive();
    });
  }

  // Reads the events past the cursor on the query pool, then writes them (one pull at a time).
  void pull() {
    if (!streaming_) return;
    if (pulling_) {
      pull_again_ = true;
      return;
    }
    pull_again_ = false;
    std::string tail_text;
    int64_t tail_last = cursor_;
    if (hub_->from_tail(cursor_, kinds_, &tail_text, &tail_last)) {
      cursor_ = tail_last;
      if (!tail_text.empty()) write_raw(std::move(tail_text), false);
      return;
    }
    // Behind the hub's tail (a reconnect with an old Last-Event-ID, a first read of the history):
    // read SQLite on the query pool, 500 events at a time.
    pulling_ = true;
    asio::post(srv_.queries, [self = shared_from_this(), cursor = cursor_, kinds = kinds_,
                              ledger = ledger_] {
      std::string text;
      int64_t last = cursor;
      bool more = false;
      try {
        thread_local std::map<std::string, std::unique_ptr<LedgerFollower>> followers;
        auto it = followers.find(ledger);
        if (it == followers.end()) {
          it = followers.emplace(ledger, std::make_unique<LedgerFollower>(ledger, /*notify=*/false))
                   .first;
        }
        // Read before the rows: every matching event up to it is among them.
        const int64_t committed = kinds.empty() ? 0 : it->second->last_seq();
        ojson rows = it->second->events_after(cursor, kinds, 500);
        for (const ojson& row : rows) {
          last = row["seq"].get<int64_t>();
          text += sse_message(row);
        }
        more = rows.size() == 500;
        if (!more) last = std::max(last, committed);
      } catch (const std::exception& e) {
        text = fmt::format("event: error\ndata: {}\n\n", ojson{{"error", e.what()}}.dump());
      }
      asio::post(self->stream_.get_executor(),
                 [self, text = std::move(text), last, more]() mutable {
                   self->pulling_ = false;
                   self->cursor_ = std::max(self->cursor_, last);
                   if (more) self->pull_again_ = true;
                   if (!text.empty()) self->write_raw(std::move(text), false);
                   if (self->pull_again_) self->pull();
                 });
    });
  }

  // Writes are queued: one async_write at a time on the socket (events, keep-alive comments).
  void write_raw(std::string text, bool then_close) {
    pending_ += text;
    close_after_ = close_after_ || then_close;
    if (writing_) return;
    writing_ = true;
    auto buf = std::make_shared<std::string>(std::move(pending_));
    pending_.clear();
    const bool closing = close_after_;
    stream_.expires_after(kWriteTimeout);
    asio::async_write(stream_, asio::buffer(*buf),
                      [self = shared_from_this(), buf, closing](beast::error_code ec, size_t) {
                        self->writing_ = false;
                        if (ec || (closing && self->pending_.empty())) {
                          self->streaming_ = false;
                          return self->close();
                        }
                        if (!self->pending_.empty()) return self->write_raw("", false);
                        if (self->first_pull_) {
                          self->first_pull_ = false;
                          self->pull();
                        }
                      });
  }

  beast::tcp_stream stream_;
  Server& srv_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::empty_body>> parser_;
  http::request<http::empty_body> req_;
  bool keep_alive_ = false;
  bool head_ = false;
  int64_t served_ = 0;  // requests read on this connection
  // Event stream state (strand only).
  bool streaming_ = false, writing_ = false, pulling_ = false, pull_again_ = false;
  bool first_pull_ = true, close_after_ = false;
  std::string pending_;  // queued while a write is in flight
  std::shared_ptr<Hub> hub_;
  int64_t cursor_ = 0;
  std::vector<std::string> kinds_;
  std::string ledger_;
  std::optional<asio::steady_timer> keep_alive_timer_;
};

// Accepts connections until stopped.
class Listener : public std::enable_shared_from_this<Listener> {
 public:
  Listener(Server& srv, tcp::endpoint ep) : srv_(srv), acceptor_(asio::make_strand(srv.ioc)) {
    beast::error_code ec;
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      throw Error(ErrorCode::kIOError,
                  fmt::format("serve: cannot listen on {}:{}: {}", ep.address().to_string(),
                              ep.port(), ec.message()));
    }
  }
  uint16_t port() const { return acceptor_.local_endpoint().port(); }
  void accept() {
    acceptor_.async_accept(asio::make_strand(srv_.ioc),
                           [self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
                             if (ec == asio::error::operation_aborted) return;
                             if (!ec) {
                               std::make_shared<Session>(std::move(socket), self->srv_)->start();
                               return self->accept();
                             }
                             // Out of descriptors (EMFILE) or the like: try again in a while, not
                             // in a loop.
                             self->retry_.expires_after(std::chrono::milliseconds(100));
                             self->retry_.async_wait([self](beast::error_code) { self->accept(); });
                           });
  }

 private:
  Server& srv_;
  tcp::acceptor acceptor_;
  asio::steady_timer retry_{acceptor_.get_executor()};
};

std::string read_token(const std::string& file) {
  std::ifstream in(file);
  if (!in) {
    throw Error(ErrorCode::kNotFound, fmt::format("--token-file {}: cannot read it", file));
  }
  std::string token;
  std::getline(in, token);
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.empty())
    throw UsageError(fmt::format("--token-file {}: the first line is empty", file));
  return token;
}

}  // namespace

int run_serve(const ServeOptions& o) {
  if (o.port < 0 || o.port > 65535) throw UsageError(fmt::format("--port {}: not a port", o.port));
  if (o.threads < 1 || o.threads > 64) throw UsageError("--threads: 1 to 64");
  if (o.max_connections < 1) throw UsageError("--max-connections: must be >= 1");
  if (o.nice < 0 || o.nice > 19) throw UsageError(fmt::format("--nice {}: must be 0..19", o.nice));
  beast::error_code ec;
  const auto address = asio::ip::make_address(o.bind, ec);
  if (ec) throw UsageError(fmt::format("--bind {}: not an IP address", o.bind));
  if (!o.dashboard_dir.empty() && !fs::is_directory(o.dashboard_dir)) {
    throw UsageError(fmt::format("--dashboard-dir {}: not a directory", o.dashboard_dir));
  }
  // Before any thread starts: the I/O and query threads inherit it.
  if (o.nice > 0) {
    errno = 0;
    if (::nice(o.nice) == -1 && errno != 0) {
      throw Error(ErrorCode::kIOError, fmt::format("--nice {}: {}", o.nice, std::strerror(errno)));
    }
  }
  Server srv(o);
  if (!o.token_file.empty()) srv.token = read_token(o.token_file);
  auto listener =
      std::make_shared<Listener>(srv, tcp::endpoint(address, static_cast<uint16_t>(o.port)));
  listener->accept();
  ::signal(SIGPIPE, SIG_IGN);
  asio::signal_set signals(srv.ioc, SIGINT, SIGTERM);
  signals.async_wait([&](beast::error_code, int) { srv.ioc.stop(); });
  const std::string host = address.is_v6() ? "[" + o.bind + "]" : o.bind;
  std::fprintf(stdout, "ckptledger: serving http://%s:%u/\n", host.c_str(), listener->port());
  std::fflush(stdout);
  std::vector<std::thread> threads;
  for (int i = 1; i < o.threads; ++i) threads.emplace_back([&] { srv.ioc.run(); });
  srv.ioc.run();
  for (auto& t : threads) t.join();
  srv.queries.stop();
  srv.queries.join();
  return kExitOk;
}

}  // namespace ckptledger::cli
