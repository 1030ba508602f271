// Ledger benchmarks: append latency and replay speed. Every figure is printed beside a baseline
// measured in the same run, because this machine is shared and noisy: ratios are what to compare
// across runs.
//
//   ledger_bench [--dir DIR] [--appends N] [--replay-events N] [--json FILE]
//
// --json FILE: also writes the figures there, machine-readable (bench/figures.h).
#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "bench/figures.h"
#include "ckptledger/ledger.h"
#include "ledger/sqlite.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;
using ckptledger::Event;
using ckptledger::EventKind;
using ckptledger::Ledger;

double us_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

struct Percentiles {
  double p50, p99;
};

Percentiles percentiles(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v[std::min(v.size() - 1, v.size() * 99 / 100)]};
}

Event sample_event(int64_t i) {
  Event e;
  e.kind = (i % 3 == 0) ? EventKind::kPruned : EventKind::kSaveCommitted;
  e.step = i;
  e.epoch = i;
  e.iter = i * 100;
  e.path = fmt::format("/data/work_dirs/exp/epoch_{}.pth", i);
  e.bytes = 268435456 + i;
  e.digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
  e.detail = R"({"role":"regular","v":1})";
  return e;
}

// The baseline of the durable append: a small append to a plain file plus fdatasync.
Percentiles fdatasync_baseline(const fs::path& dir, int n) {
  std::string p = (dir / "fdatasync.bin").string();
  int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
  if (fd < 0) throw std::runtime_error("open " + p + ": " + std::strerror(errno));
  char buf[200];
  std::memset(buf, 'x', sizeof(buf));
  std::vector<double> lat;
  for (int i = 0; i < n; ++i) {
    auto t0 = Clock::now();
    if (::write(fd, buf, sizeof(buf)) != static_cast<ssize_t>(sizeof(buf)) ||
        ::fdatasync(fd) != 0) {
      throw std::runtime_error("write/fdatasync failed");
    }
    lat.push_back(us_since(t0));
  }
  ::close(fd);
  return percentiles(lat);
}

struct CountFold : ckptledger::EventHandler {
  int64_t committed = 0, pruned = 0, bytes = 0;
  void on_save_committed(const Event& e) override {
    ++committed;
    bytes += e.bytes.value_or(0);
  }
  void on_pruned(const Event&) override { ++pruned; }
};

}  // namespace

int main(int argc, char** argv) {
  fs::path dir = fs::temp_directory_path() / fmt::format("ckptledger_bench_{}", ::getpid());
  int appends = 500;
  int64_t replay_events = 1'000'000;
  std::string json;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--dir")
      dir = argv[i + 1];
    else if (a == "--appends")
      appends = std::stoi(argv[i + 1]);
    else if (a == "--replay-events")
      replay_events = std::stoll(argv[i + 1]);
    else if (a == "--json")
      json = argv[i + 1];
    else {
      fmt::print(stderr, "unknown option {}\n", a);
      return 2;
    }
  }
  fs::create_directories(dir);
  ckptledger::bench::FigureLog figures("ledger_bench");
  fmt::print("ledger_bench: dir {} (same filesystem for every figure)\n\n", dir.string());

  // 1. Durable single-event append vs fdatasync of a small append.
  Percentiles sync = fdatasync_baseline(dir, appends);
  std::vector<double> lat;
  {
    auto ledger = Ledger::open((dir / "append.sqlite").string());
    for (int i = 0; i < appends; ++i) {
      Event e = sample_event(i);
      auto t0 = Clock::now();
      ledger->append(e);
      lat.push_back(us_since(t0));
    }
  }
  Percentiles app = percentiles(lat);
  fmt::print("durable single append ({} events, WAL, synchronous=FULL)\n", appends);
  fmt::print("  baseline fdatasync of a 200-byte append: p50 {:8.1f} us  p99 {:8.1f} us\n",
             sync.p50, sync.p99);
  fmt::print("  ledger append:                           p50 {:8.1f} us  p99 {:8.1f} us\n", app.p50,
             app.p99);
  fmt::print("  ratio p50 append / p50 fdatasync: {:.2f}  (goal <= 1.5)\n\n", app.p50 / sync.p50);
  figures.add("ledger: durable single append p50 ÷ fdatasync of a 200-byte append p50",
              app.p50 / sync.p50, "≤ 1.5", app.p50 / sync.p50 <= 1.5,
              fmt::format("{:.1f} µs / {:.1f} µs", app.p50, sync.p50));
  figures.add("ledger: durable single append p99 ÷ fdatasync p99", app.p99 / sync.p99,
              fmt::format("{:.1f} µs / {:.1f} µs", app.p99, sync.p99));

  // 2. Batched appends.
  for (int batch : {10, 100}) {
    auto ledger = Ledger::open((dir / fmt::format("batch{}.sqlite", batch)).string());
    int batches = std::max(20, 20000 / batch / 4);
    std::vector<Event> b;
    auto t0 = Clock::now();
    for (int k = 0; k < batches; ++k) {
      b.clear();
      for (int j = 0; j < batch; ++j) b.push_back(sample_event(k * batch + j));
      ledger->append_batch(b);
    }
    double s = us_since(t0) / 1e6;
    fmt::print(
        "batched append, {:3d} events per transaction: {:9.0f} events/s ({:.0f} durable "
        "txns/s)\n",
        batch, batches * batch / s, batches / s);
    figures.add(
        fmt::format("ledger: batched append, {} events per txn: events/s ÷ single appends/s",
                    batch),
        batches * batch / s / (1e6 / app.p50),
        fmt::format("{:.0f} events/s / {:.0f} appends/s", batches * batch / s, 1e6 / app.p50));
  }
  fmt::print("\n");

  // 3. Replay of N events into a fold vs a bare SELECT scan of the same rows.
  std::string rp = (dir / "replay.sqlite").string();
  {
    auto ledger = Ledger::open(rp);
    std::vector<Event> b;
    for (int64_t i = 0; i < replay_events; i += 10000) {
      b.clear();
      for (int64_t j = i; j < std::min(replay_events, i + 10000); ++j) b.push_back(sample_event(j));
      ledger->append_batch(b);
    }
  }
  ckptledger::LedgerOptions ro;
  ro.mode = ckptledger::OpenMode::kReadOnly;
  auto reader = Ledger::open(rp, ro);
  double scan_s = 0, replay_s = 0;
  for (int round = 0; round < 3; ++round) {  // best of 3 for both, interleaved
    sqlite3_stmt* s = nullptr;
    auto t0 = Clock::now();
    sqlite3_prepare_v2(reader->database().handle(),
                       "SELECT seq, run_id, ts_us, kind, step, epoch, iter, path, metric, score, "
                       "bytes, digest, detail FROM events ORDER BY seq",
                       -1, &s, nullptr);
    int64_t rows = 0;
    while (sqlite3_step(s) == SQLITE_ROW) ++rows;
    sqlite3_finalize(s);
    double t = us_since(t0) / 1e6;
    scan_s = round == 0 ? t : std::min(scan_s, t);
    if (rows != replay_events) fmt::print("scan saw {} rows\n", rows);

    CountFold fold;
    t0 = Clock::now();
    int64_t n = reader->replay(fold);
    t = us_since(t0) / 1e6;
    replay_s = round == 0 ? t : std::min(replay_s, t);
    if (n != replay_events || fold.committed + fold.pruned != n) fmt::print("fold mismatch\n");
  }
  fmt::print("replay of {} events (best of 3)\n", replay_events);
  fmt::print("  baseline bare SELECT scan: {:.3f} s ({:.2f} M rows/s)\n", scan_s,
             replay_events / scan_s / 1e6);
  fmt::print("  replay into a fold:        {:.3f} s ({:.2f} M events/s; goal >= 2.0)\n", replay_s,
             replay_events / replay_s / 1e6);
  fmt::print("  ratio replay / scan: {:.2f}\n", replay_s / scan_s);
  const double rate = replay_events / replay_s / 1e6;
  figures.add(
      fmt::format("ledger: replay of {} events into a fold ÷ bare SELECT of the rows (time)",
                  replay_events),
      replay_s / scan_s, "≥ 2 M events/s", rate >= 2.0,
      fmt::format("{:.2f} M events/s; SELECT {:.2f} M rows/s", rate, replay_events / scan_s / 1e6));
  figures.write(json);
  reader.reset();
  fs::remove_all(dir);
  return 0;
}
