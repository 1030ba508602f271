#include "tools/train/demo.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "catalog/catalog.h"
#include "ckptledger/checkpoint_hook.h"
#include "ckptledger/error.h"
#include "ckptledger/hook_config.h"
#include "ckptledger/ledger.h"
#include "ckptledger/loops.h"
#include "hook/checkpoint_format.h"
#include "ledger/sha256.h"
#include "tools/train/demo_runner.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

constexpr int64_t kSeed = 2024;
constexpr const char* kStateFile = "demo.json";
constexpr const char* kSummaryFile = "demo_summary.json";
constexpr const char* kReferenceDir = "reference";
constexpr const char* kTrainLog = "train.log";

// The hook configuration of the demo: what a real training job would use.
json hook_config_json() {
  return {{"type", "CheckpointHook"},
          {"interval", 1},
          {"by_epoch", true},
          {"max_keep_ckpts", 3},
          {"save_best", {"acc", "loss"}},
          {"published_keys", {"meta", "state_dict"}},
          {"sync", false},
          {"on_error", "raise"},
          {"max_inflight_bytes", 64 << 20}};
}

std::string base_name(const std::string& p) { return fs::path(p).filename().string(); }

// `p` relative to `dir` when below it.
std::string rel_to(const std::string& p, const std::string& dir) {
  const std::string prefix = dir + "/";
  return p.compare(0, prefix.size(), prefix) == 0 ? p.substr(prefix.size()) : p;
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void say(const std::string& s) {
  std::fputs(s.c_str(), stdout);
  std::fflush(stdout);
}

void write_all(int fd, const std::string& s) {
  const char* p = s.data();
  size_t left = s.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    left -= static_cast<size_t>(n);
  }
}

// Writes `j` to `path` through a temp file and a rename: a reader never sees half a file.
void write_json_atomic(const std::string& path, const ojson& j) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << j.dump(2) << "\n";
    out.flush();
    if (!out) throw_error(ErrorCode::kIOError, "demo: cannot write " + tmp);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw_error(ErrorCode::kIOError, "demo: cannot write " + path + ": " + ec.message());
}

ojson read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) return nullptr;
  std::stringstream ss;
  ss << in.rdbuf();
  ojson j = ojson::parse(ss.str(), nullptr, false);
  return j.is_discarded() ? ojson(nullptr) : j;
}

std::string fmt_metric(const ojson& v, int digits = 4) {
  if (v.is_number()) return fmt::format("{:.{}f}", v.get<double>(), digits);
  return v.is_null() ? "-" : v.dump();
}

// ---- the child: one training process ------------------------------------------------------------

// The one-line-per-epoch progress bar (redrawn in place on a terminal, one line per epoch
// otherwise). Lines from the hook's writer thread go through the same lock.
class Progress {
 public:
  Progress(std::string label, int64_t epochs, int64_t batches, bool quiet)
      : label_(std::move(label)),
        epochs_(epochs),
        batches_(batches),
        quiet_(quiet),
        tty_(::isatty(STDOUT_FILENO) != 0) {}

  void batch(int64_t epoch_index, int64_t b, double loss) {
    if (b == 0 || epoch_index != epoch_index_) {
      epoch_index_ = epoch_index;
      loss_sum_ = 0;
      loss_n_ = 0;
      t0_ = Clock::now();
    }
    loss_sum_ += loss;
    ++loss_n_;
    if (!tty_) return;
    const auto now = Clock::now();
    if (b + 1 != batches_ && now - last_draw_ < std::chrono::milliseconds(50)) return;
    last_draw_ = now;
    std::lock_guard<std::mutex> lock(mu_);
    draw(fmt::format("{} loss {:.4f}", head(epoch_index + 1, b + 1), loss_sum_ / double(loss_n_)),
         false);
  }

  void epoch(int64_t completed, double lr, const Metrics& m, const std::string& marks) {
    std::string vals;
    for (const auto& [k, v] : m) vals += fmt::format(" {} {:.4f}", k, v ? *v : NAN);
    const std::string text = fmt::format(
        "{} loss {:.4f}  lr {:.4f} | val{}{}  {:.2f} s", head(completed, batches_),
        loss_n_ ? loss_sum_ / double(loss_n_) : NAN, lr, vals, marks, seconds_since(t0_));
    std::lock_guard<std::mutex> lock(mu_);
    const bool keep = !quiet_ || completed == epochs_;
    if (keep) {
      draw(text, true);
    } else if (tty_) {
      draw(text, false);
    }
  }

  void line(const std::string& text) {
    std::lock_guard<std::mutex> lock(mu_);
    draw(text, true);
  }

 private:
  std::string head(int64_t epoch, int64_t done) const {
    const int width = 20;
    const int fill = static_cast<int>(width * done / std::max<int64_t>(batches_, 1));
    const int w = static_cast<int>(std::to_string(epochs_).size());
    return fmt::format("  {:<9} epoch {:>{}}/{} [{}{}] {:>3}/{}", label_, epoch, w, epochs_,
                       std::string(static_cast<size_t>(fill), '#'),
                       std::string(static_cast<size_t>(width - fill), '.'), done, batches_);
  }
  void draw(const std::string& text, bool newline) {
    std::string out;
    if (partial_) out += "\r\033[K";
    out += text;
    if (newline) out += "\n";
    partial_ = !newline;
    std::fputs(out.c_str(), stdout);
    std::fflush(stdout);
  }

  std::mutex mu_;
  std::string label_;
  int64_t epochs_, batches_;
  bool quiet_, tty_;
  bool partial_ = false;
  int64_t epoch_index_ = -1;
  double loss_sum_ = 0;
  int64_t loss_n_ = 0;
  Clock::time_point t0_ = Clock::now();
  Clock::time_point last_draw_{};
};

// "*acc *loss": the metrics whose best the last validation improved.
std::string best_marks(const json& before, const json& after, const Metrics& m) {
  std::string out;
  for (const auto& kv : m) {
    const std::string key = "best_score_" + kv.first;
    if (!after.contains(key)) continue;
    if (!before.contains(key) || before[key] != after[key]) out += " *" + kv.first;
  }
  return out.empty() ? out : "  new best:" + out;
}

// ---- the parent -------------------------------------------------------------------------------

struct LedgerStatus {
  bool exists = false;
  int64_t started = 0;    // run_started events
  bool finished = false;  // a run_finished after the last run_started
};

LedgerStatus ledger_status(const std::string& dir) {
  LedgerStatus st;
  const std::string path = (fs::path(dir) / kDefaultLedgerName).string();
  std::error_code ec;
  if (!fs::exists(path, ec)) return st;
  // A ledger its first process never finished creating (killed while opening) is no run.
  if (fs::file_size(path, ec) < 512 || ec) return st;
  st.exists = true;
  auto cat = Catalog::open(path);
  ResultSet rs = cat->query(
      "SELECT kind FROM events WHERE kind IN ('run_started', 'run_finished') ORDER BY seq");
  for (const auto& row : rs.rows) {
    if (row.at(0) == "run_started") {
      ++st.started;
      st.finished = false;
    } else {
      st.finished = true;
    }
  }
  return st;
}

// Waits until no process holds the ledger's writer lock (a training process of a killed demo dies
// with it, a few milliseconds later).
void wait_for_writer(const std::string& dir) {
  const std::string path = (fs::path(dir) / kDefaultLedgerName).string();
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (true) {
    std::error_code ec;
    if (!fs::exists(path, ec) || fs::file_size(path, ec) < 512) return;
    if (!Catalog::open(path)->writer_active()) return;
    if (Clock::now() > deadline) {
      throw_error(ErrorCode::kBusy,
                  fmt::format("demo: another process still writes {} after 30 s", path));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

struct KillPlan {
  int64_t epoch_index = 0;  // 0-based epoch in which to kill
  int64_t batch = 0;        // at the first reported batch >= this
};

struct ChildResult {
  pid_t pid = 0;
  bool exited = false;
  int code = 0;
  int signal = 0;
  bool killed = false;  // by the demo
  int64_t kill_epoch = -1, kill_batch = -1;
};

ChildResult run_training(const std::string& exe, const std::vector<std::string>& args,
                         const std::optional<KillPlan>& kill) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    throw_error(ErrorCode::kIOError, fmt::format("demo: pipe failed: {}", std::strerror(errno)));
  }
  std::vector<std::string> full = args;
  full.push_back("--status-fd");
  full.push_back("3");
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(exe.c_str()));
  for (const std::string& a : full) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    throw_error(ErrorCode::kIOError, fmt::format("demo: fork failed: {}", std::strerror(errno)));
  }
  if (pid == 0) {
    // The training dies with the demo: no orphan keeps the ledger's writer lock.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);
    if (fds[1] == 3) {
      ::fcntl(3, F_SETFD, 0);
    } else if (::dup2(fds[1], 3) < 0) {
      ::_exit(127);
    }
    ::execv(exe.c_str(), argv.data());
    std::fprintf(stderr, "demo: cannot run %s: %s\n", exe.c_str(), std::strerror(errno));
    ::_exit(127);
  }
  ::close(fds[1]);
  ChildResult r;
  r.pid = pid;
  std::string buf;
  char chunk[4096];
  while (true) {
    ssize_t n = ::read(fds[0], chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buf.append(chunk, static_cast<size_t>(n));
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      const std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      long long e = -1, b = -1;
      if (kill && !r.killed && std::sscanf(line.c_str(), "b %lld %lld", &e, &b) == 2 &&
          e == kill->epoch_index && b >= kill->batch) {
        ::kill(pid, SIGKILL);  // a real SIGKILL, while it trains and its writer may be writing
        r.killed = true;
        r.kill_epoch = e;
        r.kill_batch = b;
      }
    }
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      throw_error(ErrorCode::kIOError,
                  fmt::format("demo: waitpid failed: {}", std::strerror(errno)));
    }
  }
  if (WIFEXITED(status)) {
    r.exited = true;
    r.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    r.signal = WTERMSIG(status);
  }
  return r;
}

void check_child(const ChildResult& r, const std::string& work_dir) {
  if (r.exited && r.code == 0) return;
  if (r.killed && r.signal == SIGKILL) return;
  const std::string how =
      r.exited ? fmt::format("exited with status {}", r.code)
               : fmt::format("was killed by signal {} ({})", r.signal, ::strsignal(r.signal));
  throw_error(ErrorCode::kIOError,
              fmt::format("demo: the training process (pid {}) {}; run `ckptledger demo "
                          "--work-dir {}` again to resume it",
                          r.pid, how, work_dir));
}

// ---- the summary ------------------------------------------------------------------------------

// SHA-256 over the state_dict of a checkpoint (names, dtypes, shapes, bytes), "" if unreadable.
std::string weights_digest(const std::string& path) {
  try {
    c10::IValue v = read_checkpoint(path);
    if (!v.isGenericDict()) return "";
    c10::impl::GenericDict d = v.toGenericDict();
    if (!d.contains("state_dict") || !d.at("state_dict").isGenericDict()) return "";
    std::map<std::string, at::Tensor> tensors;
    for (const auto& kv : d.at("state_dict").toGenericDict()) {
      if (kv.key().isString() && kv.value().isTensor())
        tensors[kv.key().toStringRef()] = kv.value().toTensor().contiguous();
    }
    Sha256 sha;
    for (const auto& [name, t] : tensors) {
      std::string head = name + "|" + std::string(t.dtype().name()) + "|";
      for (int64_t s : t.sizes()) head += std::to_string(s) + ",";
      sha.update(head);
      sha.update(t.data_ptr(), t.numel() * t.element_size());
    }
    return sha.hex_digest();
  } catch (const std::exception&) {
    return "";
  }
}

// A column of a view row by name; null when the view has no such column (views may grow).
ojson col(const ResultSet& rs, size_t row, const std::string& name) {
  try {
    return rs.at(row, name);
  } catch (const std::out_of_range&) {
    return nullptr;
  }
}

std::optional<ResultSet> try_query(Catalog& cat, const std::string& sql, std::string* error,
                                   const std::vector<ojson>& binds = {}) {
  try {
    return cat.query(sql, binds);
  } catch (const std::exception& e) {
    if (error) *error = e.what();
    return std::nullopt;
  }
}

// Everything the summary says about one work_dir, read from its ledger and its disk.
ojson collect(const std::string& dir) {
  auto cat = Catalog::open(dir);
  ojson s;
  s["work_dir"] = dir;
  s["ledger"] = cat->ledger_path();
  ResultSet n = cat->query("SELECT count(*) FROM events");
  s["events"] = n.rows.at(0).at(0);

  // Runs (view `runs`; from the events table when the view is not there).
  ojson runs = ojson::array();
  std::string err;
  if (auto rs = try_query(*cat, "SELECT * FROM runs ORDER BY started_seq", &err)) {
    for (size_t i = 0; i < rs->rows.size(); ++i) {
      runs.push_back({{"started_seq", col(*rs, i, "started_seq")},
                      {"last_seq", col(*rs, i, "last_seq")},
                      {"ended", col(*rs, i, "ended")},
                      {"resume", col(*rs, i, "resume")},
                      {"resumed_from", col(*rs, i, "resumed_from")}});
    }
  } else {
    ResultSet rs2 = cat->query(
        "SELECT seq, json_extract(detail, '$.resume') FROM events WHERE kind = 'run_started' "
        "ORDER BY seq");
    for (const auto& row : rs2.rows)
      runs.push_back({{"started_seq", row[0]}, {"resume", row[1]}, {"ended", nullptr}});
  }
  s["runs"] = runs;
  const LedgerStatus st = ledger_status(dir);
  s["run_started"] = st.started;
  s["run_finished"] = st.finished;

  // The last validation's metrics.
  ResultSet v = cat->query(
      "SELECT epoch, json_extract(detail, '$.metrics.acc'), json_extract(detail, "
      "'$.metrics.loss') FROM events WHERE kind = 'validated' ORDER BY seq DESC LIMIT 1");
  s["final"] =
      v.rows.empty()
          ? ojson(nullptr)
          : ojson({{"epoch", v.rows[0][0]}, {"acc", v.rows[0][1]}, {"loss", v.rows[0][2]}});

  // Best per metric (view `best`; the newest best_updated per metric otherwise).
  ojson best = ojson::object();
  std::optional<ResultSet> b = try_query(*cat, "SELECT * FROM best ORDER BY metric", &err);
  if (!b) {
    b = cat->query(
        "SELECT metric, score, epoch, path, NULL AS status FROM events WHERE seq IN (SELECT "
        "max(seq) FROM events WHERE kind = 'best_updated' GROUP BY metric) ORDER BY metric");
  }
  for (size_t i = 0; i < b->rows.size(); ++i) {
    const std::string path = cell_text(col(*b, i, "path"));
    best[cell_text(col(*b, i, "metric"))] = {{"score", col(*b, i, "score")},
                                             {"epoch", col(*b, i, "epoch")},
                                             {"path", path},
                                             {"status", col(*b, i, "status")},
                                             {"weights_sha256", weights_digest(path)}};
  }
  s["best"] = best;

  // Files on disk (checkpoints and last_checkpoint), by name.
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && (e.path().extension() == ".pth" || name == "last_checkpoint"))
      files.push_back(name);
  }
  std::sort(files.begin(), files.end());
  s["files"] = files;
  std::string last;
  std::ifstream lc(fs::path(dir) / "last_checkpoint");
  std::getline(lc, last);
  s["last_checkpoint"] = last;
  s["final_weights_sha256"] = last.empty() ? "" : weights_digest(last);

  ojson pub = ojson::array();
  ResultSet p = cat->query(
      "SELECT path, json_extract(detail, '$.source'), bytes, digest, "
      "ifnull(json_extract(detail, '$.already_present'), 0) FROM events WHERE kind = "
      "'published' ORDER BY seq");
  for (const auto& row : p.rows) {
    const std::string path = cell_text(row[0]);
    pub.push_back({{"path", path},
                   {"source", row[1]},
                   {"bytes", row[2]},
                   {"sha256", row[3]},
                   {"already_present", row[4]},
                   {"weights_sha256", weights_digest(path)}});
  }
  s["published"] = pub;

  VerifyResult vr = cat->verify();
  int64_t bad = 0;
  for (const auto& f : vr.files) bad += f.problem.empty() ? 0 : 1;
  s["verify"] = {{"ok", vr.ok()},
                 {"events_checked", vr.chain.events_checked},
                 {"live_files_checked", vr.files.size()},
                 {"file_problems", bad},
                 {"chain_problem", vr.chain.problem}};
  return s;
}

// "epoch_20" from ".../epoch_20-1a2b3c4d.pth": the published name without its content hash.
std::string published_stem(const std::string& path) {
  std::string name = fs::path(path).stem().string();
  const size_t dash = name.rfind('-');
  return dash == std::string::npos ? name : name.substr(0, dash);
}

// The resumed run against the reference: what is equal, and every difference in words.
ojson compare(const ojson& a, const ojson& r, std::vector<std::string>* diffs) {
  ojson same;
  same["final_metrics"] = a["final"] == r["final"];
  if (!same["final_metrics"].get<bool>())
    diffs->push_back(fmt::format("final validation: resumed {} vs reference {}", a["final"].dump(),
                                 r["final"].dump()));
  bool best_ok = a["best"].size() == r["best"].size() && !a["best"].empty();
  bool best_w = best_ok;
  for (auto it = a["best"].begin(); it != a["best"].end(); ++it) {
    if (!r["best"].contains(it.key())) {
      best_ok = false;
      continue;
    }
    const ojson& x = it.value();
    const ojson& y = r["best"][it.key()];
    if (x["score"] != y["score"] || x["epoch"] != y["epoch"] ||
        base_name(x["path"].get<std::string>()) != base_name(y["path"].get<std::string>())) {
      best_ok = false;
      diffs->push_back(fmt::format(
          "best {}: resumed {} at epoch {} ({}) vs reference {} at epoch "
          "{} ({})",
          it.key(), x["score"].dump(), x["epoch"].dump(), base_name(x["path"].get<std::string>()),
          y["score"].dump(), y["epoch"].dump(), base_name(y["path"].get<std::string>())));
    }
    if (x["weights_sha256"] != y["weights_sha256"] || x["weights_sha256"] == "") {
      best_w = false;
      diffs->push_back(
          fmt::format("best {}: the weights of the best checkpoints differ", it.key()));
    }
  }
  same["best"] = best_ok;
  same["best_weights"] = best_w;
  // File names, published ones without their content hash (see below).
  auto names = [](const ojson& side) {
    std::set<std::string> published, out;
    for (const auto& p : side["published"])
      published.insert(base_name(p["path"].get<std::string>()));
    for (const auto& f : side["files"]) {
      const std::string name = f.get<std::string>();
      out.insert(published.count(name) ? published_stem(name) + "-<sha8>.pth" : name);
    }
    return out;
  };
  const std::set<std::string> fa = names(a), fr = names(r);
  same["files"] = fa == fr;
  if (!same["files"].get<bool>()) {
    std::string only_a, only_r;
    for (const auto& f : fa)
      if (!fr.count(f)) only_a += " " + f;
    for (const auto& f : fr)
      if (!fa.count(f)) only_r += " " + f;
    diffs->push_back(fmt::format("files: only in the resumed run:{}; only in the reference:{}",
                                 only_a.empty() ? " none" : only_a,
                                 only_r.empty() ? " none" : only_r));
  }
  same["final_weights"] =
      a["final_weights_sha256"] == r["final_weights_sha256"] && a["final_weights_sha256"] != "";
  if (!same["final_weights"].get<bool>())
    diffs->push_back("final weights differ (state_dict SHA-256 " +
                     a["final_weights_sha256"].get<std::string>().substr(0, 12) + " vs " +
                     r["final_weights_sha256"].get<std::string>().substr(0, 12) + ")");
  // Published files: the same sources with the same weights. Their names (the SHA-256 of their
  // bytes) differ: meta.time, the wall clock of the save, is part of the published content.
  auto pub_key = [](const ojson& list) {
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& p : list)
      if (!p["already_present"].is_number() || p["already_present"] == 0)
        out.emplace_back(published_stem(p["path"].get<std::string>()),
                         p["weights_sha256"].get<std::string>());
    std::sort(out.begin(), out.end());
    return out;
  };
  same["published_weights"] = pub_key(a["published"]) == pub_key(r["published"]);
  if (!same["published_weights"].get<bool>())
    diffs->push_back("published files: different sources or weights");
  return same;
}

// Prints one table: `headers` are the column names to show (absent ones print empty).
void print_rows(const ResultSet& rs, const std::vector<std::string>& headers,
                const std::string& dir, const std::string& indent = "  ") {
  TextTable t(headers);
  for (size_t i = 0; i < rs.rows.size(); ++i) {
    std::vector<std::string> cells;
    for (const std::string& h : headers) {
      ojson v = col(rs, i, h);
      std::string s = v.is_number_float() ? fmt::format("{:.6g}", v.get<double>()) : cell_text(v);
      if (h == "path" || h == "resumed_from") s = rel_to(s, dir);
      if (h == "sha256") s = s.substr(0, 12);
      cells.push_back(s);
    }
    t.add(cells);
  }
  std::istringstream lines(t.render());
  std::string line, out;
  while (std::getline(lines, line)) out += indent + line + "\n";
  say(out);
}

void print_summary(const ojson& sum, Catalog& cat) {
  const std::string dir = sum["work_dir"];
  const ojson& a = sum["train"];
  const ojson& r = sum["reference"];
  std::string err;

  say("\n== Runs (view `runs`) ==\n");
  if (auto rs = try_query(cat, "SELECT * FROM runs ORDER BY started_seq", &err)) {
    print_rows(*rs, {"started_seq", "last_seq", "ended", "resume", "resumed_from"}, dir);
  } else {
    say("  (view runs unavailable: " + err + ")\n");
  }

  // The story of the kill: the crashed run's last events and the resumed run's first ones.
  int64_t lo = 0, hi = 0;
  for (size_t i = 0; i + 1 < a["runs"].size(); ++i) {
    const ojson& run = a["runs"][i];
    if (run["ended"] == "crashed" && run["last_seq"].is_number()) {
      lo = run["last_seq"].get<int64_t>() - 5;
      hi = a["runs"][i + 1]["started_seq"].get<int64_t>() + 5;
      break;
    }
  }
  const int64_t events = a["events"].get<int64_t>();
  if (hi == 0) {
    lo = events - 9;
    hi = events;
    say("\n== Checkpoint history: the last events (view `history`) ==\n");
  } else {
    say("\n== Checkpoint history around the SIGKILL (view `history`) ==\n");
  }
  if (auto rs = try_query(
          cat,
          "SELECT seq, kind, epoch, path, summary FROM history WHERE seq BETWEEN ?1 AND ?2 "
          "ORDER BY seq",
          &err, {std::max<int64_t>(lo, 1), hi})) {
    print_rows(*rs, {"seq", "kind", "epoch", "path", "summary"}, dir);
  } else {
    ResultSet rs2 = cat.query(
        "SELECT seq, kind, epoch, path FROM events WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
        {std::max<int64_t>(lo, 1), hi});
    print_rows(rs2, {"seq", "kind", "epoch", "path"}, dir);
  }

  say("\n== Checkpoint files (view `checkpoints`) ==\n");
  if (auto rs = try_query(cat, "SELECT * FROM checkpoints WHERE status = 'live' ORDER BY kind, seq",
                          &err)) {
    print_rows(*rs, {"kind", "epoch", "bytes", "sha256", "path"}, dir);
    if (auto c = try_query(cat,
                           "SELECT count(*), group_concat(DISTINCT removed_reason) FROM "
                           "checkpoints WHERE status != 'live'",
                           &err)) {
      say(fmt::format("  plus {} files written and removed since ({})\n", cell_text(c->rows[0][0]),
                      cell_text(c->rows[0][1])));
    }
  } else {
    say("  (view checkpoints unavailable: " + err + ")\n");
  }

  say("\n== Best checkpoints (view `best`) ==\n");
  for (auto it = a["best"].begin(); it != a["best"].end(); ++it) {
    say(fmt::format("  {:<5} {}  epoch {:>2}  {}  ({})\n", it.key(),
                    fmt_metric(it.value()["score"]), cell_text(it.value()["epoch"]),
                    rel_to(it.value()["path"].get<std::string>(), dir),
                    cell_text(it.value()["status"])));
  }
  say("\n== Published (meta + state_dict only) ==\n");
  for (const auto& p : a["published"]) {
    say(fmt::format("  {}  from {}{}\n", rel_to(p["path"].get<std::string>(), dir),
                    rel_to(cell_text(p["source"]), dir),
                    p["already_present"] == 1 ? " (already present)" : ""));
  }

  say("\n== Killed + resumed run vs. the uninterrupted reference (" + std::string(kReferenceDir) +
      "/) ==\n");
  const ojson& same = sum["same"];
  auto yes = [](const ojson& b) { return b.get<bool>() ? "equal" : "DIFFERENT"; };
  say(fmt::format("  {:<22} {:<24} {:<24} {}\n", "", "killed + resumed", "reference", ""));
  if (a["final"].is_object() && r["final"].is_object()) {
    say(fmt::format("  {:<22} {:<24} {:<24} {}\n", "final val acc / loss",
                    fmt_metric(a["final"]["acc"]) + " / " + fmt_metric(a["final"]["loss"]),
                    fmt_metric(r["final"]["acc"]) + " / " + fmt_metric(r["final"]["loss"]),
                    yes(same["final_metrics"])));
  }
  for (auto it = a["best"].begin(); it != a["best"].end(); ++it) {
    const ojson& y = r["best"].contains(it.key()) ? r["best"][it.key()] : ojson::object();
    auto cell = [](const ojson& b) {
      return b.is_object() && b.contains("score")
                 ? fmt::format("{:.6f} @ epoch {}", b["score"].get<double>(), cell_text(b["epoch"]))
                 : std::string("-");
    };
    say(fmt::format("  {:<22} {:<24} {:<24} {}\n", "best " + it.key(), cell(it.value()), cell(y),
                    yes(same["best"])));
  }
  say(fmt::format("  {:<22} {:<24} {:<24} {}\n", "checkpoint files",
                  std::to_string(a["files"].size()) + " names",
                  std::to_string(r["files"].size()) + " names", yes(same["files"])));
  say(fmt::format("  {:<22} {:<24} {:<24} {}\n", "final weights sha256",
                  a["final_weights_sha256"].get<std::string>().substr(0, 16),
                  r["final_weights_sha256"].get<std::string>().substr(0, 16),
                  same["final_weights"].get<bool>() ? "bitwise equal" : "DIFFERENT"));
  say(fmt::format("  {:<22} {:<24} {:<24} {}\n", "best files' weights", "", "",
                  same["best_weights"].get<bool>() ? "bitwise equal" : "DIFFERENT"));
  say(fmt::format("  {:<22} {:<24} {:<24} {}\n", "published weights", "", "",
                  same["published_weights"].get<bool>() ? "bitwise equal" : "DIFFERENT"));
  say("  (published files are compared by name without their -<sha8> suffix: it is the SHA-256 "
      "of the file, and meta.time, the wall clock of the save, is in it)\n");
  for (const auto& d : sum["differences"]) say("  difference: " + d.get<std::string>() + "\n");
  const ojson& v = a["verify"];
  say(
      fmt::format("\n== Verify ==\n  {}: hash chain {} ({} events), {} live files checked (size "
                  "and SHA-256), {} with problems\n",
                  rel_to(a["ledger"].get<std::string>(), dir),
                  v["chain_problem"] == "" ? "intact" : "BROKEN", cell_text(v["events_checked"]),
                  cell_text(v["live_files_checked"]), cell_text(v["file_problems"])));

  say(fmt::format("\n== Try it: sqlite3 {} ==\n", a["ledger"].get<std::string>()));
  const std::vector<std::pair<std::string, std::vector<std::string>>> queries = {
      {"SELECT metric, rule, score, epoch, status, path FROM best ORDER BY metric;",
       {"metric", "rule", "score", "epoch", "status", "path"}},
      {"SELECT started_seq, ended, resume, resumed_from FROM runs ORDER BY started_seq;",
       {"started_seq", "ended", "resume", "resumed_from"}},
      {"SELECT kind, status, count(*) AS files, sum(bytes) AS bytes FROM checkpoints GROUP BY "
       "kind, status ORDER BY kind, status;",
       {"kind", "status", "files", "bytes"}},
  };
  int i = 0;
  for (const auto& [sql, cols] : queries) {
    say(fmt::format("  {}) sqlite3 -header -column {} \"{}\"\n", ++i,
                    a["ledger"].get<std::string>(), sql));
    if (auto rs = try_query(cat, sql, &err)) {
      TextTable t(cols);
      for (const auto& row : rs->rows) {
        std::vector<std::string> cells;
        for (const auto& c : row)
          cells.push_back(c.is_number_float() ? fmt::format("{:.6g}", c.get<double>())
                                              : cell_text(c));
        t.add(cells);
      }
      std::istringstream lines(t.render());
      std::string line;
      while (std::getline(lines, line)) say("     " + line + "\n");
    } else {
      say("     (this ledger answers: " + err + ")\n");
    }
  }
}

std::string timestamp() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%d-%H%M%S", &tm);
  return buf;
}

std::string resolve_work_dir(const DemoOptions& o) {
  if (o.work_dir) {
    if (o.work_dir->empty()) throw UsageError("demo: --work-dir is empty");
    std::string p = fs::absolute(*o.work_dir).lexically_normal().string();
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    return p;
  }
  const std::string base = (fs::current_path() / ("ckptledger-demo-" + timestamp())).string();
  std::string p = base;
  for (int i = 2; fs::exists(p); ++i) p = base + "-" + std::to_string(i);
  return p;
}

}  // namespace

// ---- public -----------------------------------------------------------------------------------

int demo_train(const DemoTrainOptions& o) {
  const DemoSize size = demo_size(o.size);
  DemoRunner runner(o.work_dir, size, o.seed);
  Progress progress(o.label, size.epochs, runner.iters_per_epoch(), o.label != "train");
  std::mutex log_mu;
  std::ofstream log((fs::path(o.work_dir) / kTrainLog).string(), std::ios::app);
  CheckpointHook hook(HookConfig::from_json(hook_config_json()), [&](LogLevel level,
                                                                     const std::string& msg) {
    {
      std::lock_guard<std::mutex> lock(log_mu);
      log << log_level_name(level) << " " << msg << "\n";
      log.flush();
    }
    if (level != LogLevel::kInfo)
      progress.line(fmt::format("  [hook] {}: {}", log_level_name(level), rel_to(msg, o.work_dir)));
  });
  const auto status = [&](const std::string& line) {
    if (o.status_fd >= 0) write_all(o.status_fd, line + "\n");
  };

  EpochLoop* loop_ptr = nullptr;
  Metrics last_metrics;
  json hub_before;
  LoopOptions lo;
  lo.resume = o.resume;
  lo.validate = [&](int64_t step) {
    hub_before = hook.hub_info();
    last_metrics = runner.validate();
    status(fmt::format("v {}", step));
    return last_metrics;
  };
  lo.on_stage = [&](Stage s) {
    if (s == Stage::kBeforeTrain) {
      const auto& from = loop_ptr->resumed_from();
      if (from) {
        progress.line(fmt::format(
            "  {:<9} pid {}: resumed from {} (epoch {}, iter {}, lr {:.4f}): the ledger's newest "
            "checkpoint whose SHA-256 verifies",
            o.label, ::getpid(), rel_to(*from, o.work_dir), runner.epoch(), runner.iter(),
            runner.lr()));
      } else {
        progress.line(fmt::format(
            "  {:<9} pid {}: {}", o.label, ::getpid(),
            o.resume ? "nothing to resume in the ledger: from scratch" : "fresh start"));
      }
    } else if (s == Stage::kAfterValEpoch) {
      progress.epoch(runner.epoch(), runner.lr(), last_metrics,
                     best_marks(hub_before, hook.hub_info(), last_metrics));
    }
  };
  TrainStep step = [&](int64_t b) {
    const double loss = runner.train_step(b);
    progress.batch(runner.epoch(), b, loss);
    status(fmt::format("b {} {}", runner.epoch(), b));
  };
  EpochLoop loop(runner, hook, size.epochs, runner.iters_per_epoch(), step, lo);
  loop_ptr = &loop;
  loop.run();
  return 0;
}

int demo(const DemoOptions& o) {
  const auto t0 = Clock::now();
  const std::string dir = resolve_work_dir(o);
  const std::string ref_dir = (fs::path(dir) / kReferenceDir).string();
  const std::string state_path = (fs::path(dir) / kStateFile).string();
  std::error_code ec;

  // The demo's own record: its size and seed (the ledgers hold everything else).
  ojson state = read_json(state_path);
  if (state.is_object()) {
    if (o.size && *o.size != state.value("size", "")) {
      say(fmt::format("note: {} is a --size {} demo; continuing it at that size\n", dir,
                      state.value("size", "")));
    }
  } else {
    // Empty, or holding only the temp file of a demo.json whose writer was killed.
    bool empty = true;
    if (fs::is_directory(dir, ec)) {
      for (const auto& e : fs::directory_iterator(dir))
        empty = empty && e.path().filename() == std::string(kStateFile) + ".tmp";
    } else if (fs::exists(dir, ec)) {
      empty = false;
    }
    if (!empty) {
      throw UsageError(
          fmt::format("demo: {} is not empty and holds no {}: not a demo work_dir "
                      "(choose a new or empty --work-dir)",
                      dir, kStateFile));
    }
    fs::create_directories(dir);
    state = {{"format", 1}, {"size", o.size.value_or("full")}, {"seed", kSeed}, {"kill", nullptr}};
    write_json_atomic(state_path, state);
  }
  const std::string size_name = state.value("size", "full");
  const int64_t seed = state.value("seed", kSeed);
  const DemoSize size = demo_size(size_name);

  say(fmt::format("ckptledger demo ({} size): {}\n", size_name, dir));
  DemoRunner info(dir, size, seed);
  say("  model: " + info.describe() + "\n");
  say("  hook:  " + hook_config_json().dump() + "\n");

  const auto train_args = [&](const std::string& wd, bool resume, const std::string& label) {
    std::vector<std::string> a = {
        "demo-train", "--work-dir",         wd,        "--size", size_name,
        "--seed",     std::to_string(seed), "--label", label};
    if (resume) a.push_back("--resume");
    return a;
  };

  const LedgerStatus main_st = ledger_status(dir);
  LedgerStatus ref_st;
  if (fs::exists(ref_dir)) ref_st = ledger_status(ref_dir);
  std::string mode = "summary";
  if (main_st.finished && ref_st.finished) {
    say("  this demo already finished (both ledgers end with run_finished): summary only\n");
  } else {
    mode = "train";
    if (!main_st.finished) {
      if (main_st.started == 0 && !o.no_kill) {
        say(
            fmt::format("\n[1/3] training in a child process; the demo SIGKILLs it in the middle "
                        "of epoch {} of {}\n",
                        size.kill_epoch, size.epochs));
        KillPlan kp{size.kill_epoch - 1, info.iters_per_epoch() / 2};
        ChildResult r = run_training(o.self_exe, train_args(dir, false, "train"), kp);
        check_child(r, dir);
        if (r.killed) {
          say(fmt::format(
              "\n  *** SIGKILL -> pid {} in epoch {}/{}, after batch {}/{} "
              "(its async checkpoint writer was live)\n",
              r.pid, r.kill_epoch + 1, size.epochs, r.kill_batch + 1, info.iters_per_epoch()));
          state["kill"] = {{"pid", r.pid},
                           {"epoch", r.kill_epoch + 1},
                           {"batch", r.kill_batch + 1},
                           {"batches", info.iters_per_epoch()}};
          write_json_atomic(state_path, state);
        }
        say("\n[2/3] the same command again, with auto-resume from the ledger\n");
        ChildResult r2 = run_training(o.self_exe, train_args(dir, true, "train"), std::nullopt);
        check_child(r2, dir);
      } else {
        if (main_st.started > 0) {
          mode = "resume";
          say(
              fmt::format("\n[1/3] the ledger shows {} started run(s) and no run_finished: a "
                          "previous demo was interrupted; resuming it (no kill this time)\n",
                          main_st.started));
        } else {
          say("\n[1/3] training in a child process (--no-kill: uninterrupted)\n");
        }
        wait_for_writer(dir);
        ChildResult r =
            run_training(o.self_exe, train_args(dir, main_st.started > 0, "train"), std::nullopt);
        check_child(r, dir);
      }
    }
    if (!ref_st.finished) {
      say(fmt::format("\n[3/3] reference: the same training, uninterrupted, in {}/{}\n", dir,
                      kReferenceDir));
      wait_for_writer(ref_dir);
      ChildResult r = run_training(o.self_exe, train_args(ref_dir, ref_st.started > 0, "reference"),
                                   std::nullopt);
      check_child(r, ref_dir);
    }
  }

  // The summary: read back from both ledgers and the disk.
  ojson sum;
  sum["format"] = 1;
  sum["work_dir"] = dir;
  sum["size"] = size_name;
  sum["seed"] = seed;
  sum["epochs"] = size.epochs;
  sum["this_invocation"] = mode;
  sum["kill"] = state.contains("kill") ? state["kill"] : ojson(nullptr);
  sum["hook_config"] = ojson::parse(hook_config_json().dump());
  sum["train"] = collect(dir);
  sum["reference"] = collect(ref_dir);
  std::vector<std::string> diffs;
  sum["same"] = compare(sum["train"], sum["reference"], &diffs);
  sum["differences"] = diffs;
  bool ok = diffs.empty() && sum["train"]["verify"]["ok"].get<bool>();
  sum["ok"] = ok;
  auto cat = Catalog::open(dir);
  print_summary(sum, *cat);
  const double wall = seconds_since(t0);
  sum["wall_s"] = std::round(wall * 100) / 100;
  write_json_atomic((fs::path(dir) / kSummaryFile).string(), sum);
  say(fmt::format("\n{} in {:.1f} s. Summary: {}/{}; again: ckptledger demo --work-dir {}\n",
                  ok ? "Demo OK" : "Demo finished WITH DIFFERENCES", wall, dir, kSummaryFile, dir));
  // The run, live in a browser or from other tools (docs/serve.md).
  say(fmt::format(
      "Its dashboard and HTTP API: ckptledger serve {}   (then open http://127.0.0.1:8470/)\n",
      dir));
  return ok ? 0 : 1;
}

}  // namespace ckptledger
