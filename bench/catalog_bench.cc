// Catalog benchmark (docs/cli.md): `best` and `latest` on a ledger of 1,000,000 events, each
// printed beside opening the same database and running `SELECT 1`, measured in the same run (this
// machine is shared and noisy: compare ratios across runs). Goal: best and latest < 50 ms.
//
//   catalog_bench [--dir DIR] [--events N] [--runs N] [--reuse] [--cli PATH] [--json FILE]
//
// With --cli (scripts/run bench passes build/bin/ckptledger), the same two queries are also
// timed as whole processes (`ckptledger best --json`, `ckptledger latest --json`: start-up, open,
// query, print) beside the `sqlite3` shell running `SELECT 1` on the same file.
//
// The ledger is built with Ledger::append_batch from what the hook appends per epoch (save_begun,
// save_committed + rotation prune, validated, and about one epoch in ten a best save per metric:
// save_begun, save_committed, best_updated, best_replaced prune, then the regular re-save), with
// a process restart (run_started with resume, resumed) every 5,000 epochs. The files still live at
// the end are written for real (small, with the recorded SHA-256) so `latest` verifies one.
// --reuse keeps a ledger of the right size from an earlier run in DIR. --json FILE: also writes
// the figures there, machine-readable (bench/figures.h).
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "bench/figures.h"
#include "catalog/catalog.h"
#include "ckptledger/ledger.h"
#include "ledger/sha256.h"
#include "policy/hook_events.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;
using ckptledger::Event;
using ckptledger::EventKind;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Content of a synthetic checkpoint file (small, deterministic).
std::string content_of(const std::string& path, int64_t step) {
  return fmt::format("synthetic checkpoint {} step {}\n", path, step);
}

// Runs argv to completion with stdout on /dev/null; milliseconds from fork to reaped exit.
double process_ms(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::fflush(nullptr);  // else the child's freopen writes our buffered output a second time
  auto t0 = Clock::now();
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    if (std::FILE* null = std::freopen("/dev/null", "w", stdout); !null) ::_exit(126);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  const double ms = ms_since(t0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    throw std::runtime_error(fmt::format("{} {} failed (status {})", args[0], args[1], st));
  }
  return ms;
}

class Generator {
 public:
  Generator(ckptledger::Ledger& ledger, std::string out_dir)
      : ledger_(ledger), out_(std::move(out_dir)) {}

  void run(int64_t target) {
    std::vector<Event> batch;
    int64_t epoch = 0, run = 0;
    while (written_ + static_cast<int64_t>(batch.size()) < target) {
      if (epoch % 5000 == 0) restart(batch, run++ > 0, epoch);
      ++epoch;
      regular(batch, epoch);
      validated(batch, epoch);
      bool improved = false;
      for (const char* m : {"acc", "loss"}) {
        if (uniform_(rng_) < 0.1) {
          best(batch, m, epoch);
          improved = true;
        }
      }
      if (improved) regular(batch, epoch);  // a best update re-saves the regular file
      if (batch.size() >= 10000) flush(batch);
    }
    flush(batch);
  }

  // Files live at the end: path -> (step, content).
  std::map<std::string, std::pair<int64_t, std::string>> live;

 private:
  void flush(std::vector<Event>& batch) {
    if (batch.empty()) return;
    ledger_.append_batch(batch);
    written_ += static_cast<int64_t>(batch.size());
    batch.clear();
  }

  Event make(EventKind kind, const std::string& path, int64_t epoch) {
    Event e;
    e.kind = kind;
    e.path = path;
    e.step = epoch;
    e.epoch = epoch;
    e.iter = epoch * 500;
    return e;
  }

  void restart(std::vector<Event>& batch, bool resume, int64_t epoch) {
    ckptledger::RunStartedPayload rs;
    rs.config =
        R"({"type":"CheckpointHook","interval":1,"max_keep_ckpts":3,"save_best":["acc","loss"],"rule":["greater","less"]})";
    rs.work_dir = rs.out_dir = out_;
    rs.pid = 1000 + epoch;
    rs.host = "bench";
    rs.resume = resume;
    rs.version = "0.1.0";
    Event e = make(EventKind::kRunStarted, "", 0);
    e.step.reset();
    e.epoch.reset();
    e.iter.reset();
    e.detail = ckptledger::to_detail(rs);
    e.run_id = fmt::format("bench-run-{}", epoch);
    run_id_ = e.run_id;
    batch.push_back(e);
    if (resume && !keep_.empty()) {
      Event r = make(EventKind::kResumed, path_of(keep_.back()), epoch);
      ckptledger::ResumedPayload rp;
      rp.source = "auto";
      r.detail = ckptledger::to_detail(rp);
      r.run_id = run_id_;
      batch.push_back(r);
    }
  }

  std::string path_of(int64_t epoch) const { return fmt::format("{}/epoch_{}.pth", out_, epoch); }

  void commit(std::vector<Event>& batch, Event e, const ckptledger::SavePayload& sp) {
    Event begun = e;
    begun.kind = EventKind::kSaveBegun;
    begun.detail = ckptledger::to_detail(sp);
    begun.run_id = run_id_;
    batch.push_back(begun);
    std::string content = content_of(e.path, e.step.value_or(0));
    e.bytes = static_cast<int64_t>(content.size());
    e.digest = ckptledger::Sha256::hex(content);
    e.detail = ckptledger::to_detail(sp);
    e.run_id = run_id_;
    live[e.path] = {e.step.value_or(0), content};
    batch.push_back(e);
  }

  void prune(std::vector<Event>& batch, const std::string& path, int64_t epoch,
             const std::string& reason, const std::string& by) {
    Event p = make(EventKind::kPruned, path, epoch);
    ckptledger::PrunePayload pp;
    pp.reason = reason;
    pp.superseded_by = by;
    p.detail = ckptledger::to_detail(pp);
    p.run_id = run_id_;
    live.erase(path);
    batch.push_back(p);
  }

  void regular(std::vector<Event>& batch, int64_t epoch) {
    const std::string path = path_of(epoch);
    if (keep_.empty() || keep_.back() != epoch) keep_.push_back(epoch);
    std::vector<int64_t> dropped;
    while (keep_.size() > 3) {
      dropped.push_back(keep_.front());
      keep_.erase(keep_.begin());
    }
    ckptledger::SavePayload sp;
    sp.role = "regular";
    sp.keep_tracked = true;
    sp.keep_ckpt_ids = keep_;
    commit(batch, make(EventKind::kSaveCommitted, path, epoch), sp);
    for (int64_t old : dropped) prune(batch, path_of(old), epoch, "rotation", path);
  }

  void validated(std::vector<Event>& batch, int64_t epoch) {
    Event v = make(EventKind::kValidated, "", epoch);
    ckptledger::ValidatedPayload vp;
    vp.metrics = {{"acc", uniform_(rng_)}, {"loss", uniform_(rng_)}};
    v.detail = ckptledger::to_detail(vp);
    v.run_id = run_id_;
    batch.push_back(v);
  }

  void best(std::vector<Event>& batch, const std::string& metric, int64_t epoch) {
    const std::string path = fmt::format("{}/best_{}_epoch_{}.pth", out_, metric, epoch);
    ckptledger::SavePayload sp;
    sp.role = "best";
    sp.key = metric;
    commit(batch, make(EventKind::kSaveCommitted, path, epoch), sp);
    Event b = make(EventKind::kBestUpdated, path, epoch);
    b.metric = metric;
    double& score = best_score_[metric];
    score = metric == "acc" ? score + 1e-6 : (score == 0 ? 1.0 : score - 1e-6);
    b.score = score;
    ckptledger::BestPayload bp;
    bp.rule = metric == "acc" ? "greater" : "less";
    std::string& prev = best_path_[metric];
    bp.previous_path = prev;
    b.detail = ckptledger::to_detail(bp);
    b.run_id = run_id_;
    batch.push_back(b);
    if (!prev.empty()) prune(batch, prev, epoch, "best_replaced", path);
    prev = path;
  }

  ckptledger::Ledger& ledger_;
  std::string out_;
  std::string run_id_;
  int64_t written_ = 0;
  std::vector<int64_t> keep_;
  std::map<std::string, double> best_score_;
  std::map<std::string, std::string> best_path_;
  std::mt19937_64 rng_{42};
  std::uniform_real_distribution<double> uniform_{0.0, 1.0};
};

void build_ledger(const fs::path& dir, int64_t events) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / ckptledger::kDefaultLedgerName).string();
  auto t0 = Clock::now();
  std::map<std::string, std::pair<int64_t, std::string>> live;
  {
    auto ledger = ckptledger::Ledger::open(path);
    Generator g(*ledger, dir.string());
    g.run(events);
    live = std::move(g.live);
  }
  for (const auto& [p, v] : live) {
    std::ofstream f(p, std::ios::binary);
    f << v.second;
  }
  fmt::print("built {} ({} events, {} live files) in {:.1f} s\n", path, events, live.size(),
             ms_since(t0) / 1000);
}

int64_t event_count(const std::string& path) {
  try {
    auto c = ckptledger::Catalog::open(path);
    return c->query("SELECT count(*) FROM events").rows[0][0].get<int64_t>();
  } catch (const std::exception&) {
    return -1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  fs::path dir = fs::temp_directory_path() / "ckptledger_catalog_bench";
  int64_t events = 1000000;
  int runs = 21;
  bool reuse = false;
  std::string cli, json;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--dir" && i + 1 < argc) {
      dir = argv[++i];
    } else if (a == "--events" && i + 1 < argc) {
      events = std::stoll(argv[++i]);
    } else if (a == "--runs" && i + 1 < argc) {
      runs = std::max(1, std::stoi(argv[++i]));
    } else if (a == "--reuse") {
      reuse = true;
    } else if (a == "--cli" && i + 1 < argc) {
      cli = argv[++i];
    } else if (a == "--json" && i + 1 < argc) {
      json = argv[++i];
    } else {
      fmt::print(stderr,
                 "usage: catalog_bench [--dir DIR] [--events N] [--runs N] [--reuse] [--cli PATH] "
                 "[--json FILE]\n");
      return 2;
    }
  }
  const std::string ledger = (dir / ckptledger::kDefaultLedgerName).string();
  try {
    if (!reuse || event_count(ledger) < events) build_ledger(dir, events);
    const int64_t n = event_count(ledger);

    std::vector<double> base, open_only, best, latest, p_base, p_best, p_latest;
    std::string best_path, latest_path;
    for (int r = 0; r < runs; ++r) {
      // Baseline: open the same database read-only and run SELECT 1.
      auto t0 = Clock::now();
      sqlite3* db = nullptr;
      if (sqlite3_open_v2(ledger.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
        throw std::runtime_error("sqlite3_open_v2 failed");
      }
      sqlite3_stmt* s = nullptr;
      sqlite3_prepare_v2(db, "SELECT 1", -1, &s, nullptr);
      if (sqlite3_step(s) != SQLITE_ROW) throw std::runtime_error("SELECT 1 failed");
      sqlite3_finalize(s);
      sqlite3_close(db);
      base.push_back(ms_since(t0));

      t0 = Clock::now();
      { auto c = ckptledger::Catalog::open(ledger); }
      open_only.push_back(ms_since(t0));

      t0 = Clock::now();
      {
        auto c = ckptledger::Catalog::open(ledger);
        ckptledger::ResultSet rs = c->best(std::nullopt);
        best_path = rs.rows.empty() ? "" : rs.at(0, "path").get<std::string>();
      }
      best.push_back(ms_since(t0));

      t0 = Clock::now();
      {
        auto c = ckptledger::Catalog::open(ledger);
        ckptledger::LatestResult lr = c->latest();
        latest_path = lr.checkpoint.is_null() ? "" : lr.checkpoint["path"].get<std::string>();
      }
      latest.push_back(ms_since(t0));

      if (!cli.empty()) {
        p_base.push_back(process_ms({"sqlite3", "-readonly", ledger, "SELECT 1"}));
        p_best.push_back(process_ms({cli, "best", "--json", ledger}));
        p_latest.push_back(process_ms({cli, "latest", "--json", ledger}));
      }
    }
    if (best_path.empty() || latest_path.empty())
      throw std::runtime_error("no best / latest found");
    const double b = median(base);
    fmt::print("\nledger: {} events; median of {} runs each (ms)\n", n, runs);
    fmt::print("{:<52}{:>10}{:>12}\n", "what", "median", "x baseline");
    fmt::print("{:<52}{:>10.3f}{:>12}\n", "baseline: sqlite3_open_v2 read-only + SELECT 1", b,
               "1.00");
    fmt::print("{:<52}{:>10.3f}{:>12.2f}\n", "Catalog::open alone (probe, tail hash check)",
               median(open_only), median(open_only) / b);
    fmt::print("{:<52}{:>10.3f}{:>12.2f}   goal < 50 ms: {}\n",
               "best   (open + best view, 2 metrics)", median(best), median(best) / b,
               median(best) < 50 ? "met" : "NOT met");
    fmt::print("{:<52}{:>10.3f}{:>12.2f}   goal < 50 ms: {}\n",
               "latest (open + newest live regular + SHA-256 check)", median(latest),
               median(latest) / b, median(latest) < 50 ? "met" : "NOT met");
    if (!cli.empty()) {
      const double pb = median(p_base);
      fmt::print("{:<52}{:>10.3f}{:>12}\n", "process baseline: sqlite3 -readonly DB 'SELECT 1'", pb,
                 "1.00");
      fmt::print("{:<52}{:>10.3f}{:>12.2f}   goal < 50 ms: {}\n", "process: ckptledger best --json",
                 median(p_best), median(p_best) / pb, median(p_best) < 50 ? "met" : "NOT met");
      fmt::print("{:<52}{:>10.3f}{:>12.2f}   goal < 50 ms: {}\n",
                 "process: ckptledger latest --json", median(p_latest), median(p_latest) / pb,
                 median(p_latest) < 50 ? "met" : "NOT met");
    }
    fmt::print("best[0]: {}\nlatest:  {}\n", best_path, latest_path);
    ckptledger::bench::FigureLog figures("catalog_bench");
    auto figure = [&](const std::string& what, double ms, double base_ms, const char* baseline) {
      figures.add(fmt::format("catalog: {} ({} events) ÷ {}", what, n, baseline), ms / base_ms,
                  "< 50 ms", ms < 50, fmt::format("{:.2f} ms / {:.3f} ms", ms, base_ms));
    };
    figure("best, in process", median(best), b, "open + SELECT 1");
    figure("latest (with its SHA-256 check), in process", median(latest), b, "open + SELECT 1");
    if (!cli.empty()) {
      const double pb = median(p_base);
      figure("`ckptledger best --json` process", median(p_best), pb, "`sqlite3` shell SELECT 1");
      figure("`ckptledger latest --json` process", median(p_latest), pb,
             "`sqlite3` shell SELECT 1");
    }
    figures.write(json);
  } catch (const std::exception& e) {
    fmt::print(stderr, "catalog_bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
