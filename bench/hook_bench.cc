// CheckpointHook performance benchmarks. Every figure is printed beside a baseline measured in
// the same run, because this machine is shared and noisy: ratios are what to compare across runs.
//
//   hook_bench [--dir DIR] [--rounds N] [--mib M] [--batches N]
//
// 1. Per-iteration overhead of after_train_iter when nothing is saved (by_epoch=true hook, and an
//    iteration hook whose interval is not due) vs an empty call the compiler cannot inline.
// 2. Synchronous save of an M MiB state dict (after_train_epoch, sync=true) vs write + fdatasync +
//    close of the same number of bytes into a new file in the same directory.
// 3. Asynchronous save (sync=false): how long after_train_epoch blocks (stall) and how long until
//    wait_idle() returns, vs the same baseline.
// Files go to a fresh directory DIR/hook_bench_<pid> (DIR defaults to the system temp dir), which
// is removed at the end.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "bench/bench_util.h"
#include "ckptledger/checkpoint_hook.h"

namespace {

namespace fs = std::filesystem;
using ckptledger::CheckpointHook;
using ckptledger::HookConfig;
using ckptledger::Runner;
using namespace ckptledger::bench;  // NOLINT: bench_util.h

double pct(std::vector<double> v, int p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, v.size() * static_cast<size_t>(p) / 100)];
}

// The empty-call baseline: an out-of-line function reached through a volatile pointer, with an
// asm barrier so that neither the call nor its arguments can be optimised away.
__attribute__((noinline)) void empty_call(Runner& runner, int64_t batch_idx) {
  asm volatile("" : : "r"(&runner), "r"(batch_idx) : "memory");
}

struct Spread {
  double med, lo, hi;
};
Spread spread(const std::vector<double>& v) {
  return {median(v), *std::min_element(v.begin(), v.end()), *std::max_element(v.begin(), v.end())};
}

int run(const fs::path& dir, int rounds, int64_t mib, int batches) {
  constexpr int kCallsPerBatch = 1000;
  Logs logs;

  // --- 1. after_train_iter overhead when nothing is saved -------------------------------------
  {
    const fs::path wd = dir / "iter";
    fs::create_directories(wd);
    BenchRunner runner(wd.string(),
                       c10::impl::GenericDict(c10::StringType::get(), c10::TensorType::get()));
    runner.set_counters(0, 1);  // I + 1 = 2: never due for interval 1e6, never the last iter
    HookConfig ce;              // by_epoch=true: after_train_iter returns at once
    ce.interval = 1;
    ce.ledger_path = (wd / "epoch.sqlite").string();
    HookConfig ci;  // by_epoch=false, interval 1e6: not due
    ci.interval = 1'000'000;
    ci.by_epoch = false;
    ci.ledger_path = (wd / "iter.sqlite").string();
    CheckpointHook epoch_hook(ce, logs.sink());
    CheckpointHook iter_hook(ci, logs.sink());
    epoch_hook.before_train(runner);
    iter_hook.before_train(runner);

    void (*volatile fp)(Runner&, int64_t) = &empty_call;
    std::function<void(Runner&, int64_t)> fn = empty_call;
    std::vector<double> base_fp, base_fn, by_epoch, by_iter;
    auto batch = [&](std::vector<double>& out, auto&& call) {
      auto t0 = Clock::now();
      for (int64_t i = 0; i < kCallsPerBatch; ++i) call(i);
      out.push_back(seconds_since(t0) * 1e9 / kCallsPerBatch);
    };
    for (int b = 0; b < batches; ++b) {  // interleaved batch by batch
      batch(base_fp, [&](int64_t i) { fp(runner, i); });
      batch(base_fn, [&](int64_t i) { fn(runner, i); });
      batch(by_epoch, [&](int64_t i) { epoch_hook.after_train_iter(runner, i); });
      batch(by_iter, [&](int64_t i) { iter_hook.after_train_iter(runner, i); });
    }
    if (!epoch_hook.last_stage_saves().empty() || !iter_hook.last_stage_saves().empty()) {
      fmt::print("UNEXPECTED: an overhead hook saved a checkpoint\n");
    }
    fmt::print("1. after_train_iter, no save: ns per call ({} batches x {} calls)\n", batches,
               kCallsPerBatch);
    fmt::print("   {:<44} {:>8} {:>8}  {:>12}\n", "", "median", "p99", "/ baseline");
    const double base = median(base_fp);
    auto row = [&](const char* name, const std::vector<double>& v) {
      fmt::print("   {:<44} {:8.1f} {:8.1f}  {:12.2f}\n", name, median(v), pct(v, 99),
                 median(v) / base);
    };
    row("baseline: empty call via volatile fn pointer", base_fp);
    row("baseline: empty call via std::function", base_fn);
    row("hook by_epoch=true", by_epoch);
    row("hook by_epoch=false, interval 1e6 (not due)", by_iter);
    fmt::print("   goal: median < 1000 ns: {}\n\n",
               std::max(median(by_epoch), median(by_iter)) < 1000 ? "met" : "NOT met");
  }

  // --- 2 and 3. Saving a state dict ------------------------------------------------------------
  int64_t sd_bytes = 0, sd_tensors = 0;
  c10::impl::GenericDict sd = model_like_state_dict(mib, &sd_bytes, &sd_tensors);
  BenchRunner sync_runner((dir / "sync").string(), sd);
  BenchRunner async_runner((dir / "async").string(), sd);
  fs::create_directories(dir / "sync");
  fs::create_directories(dir / "async");
  CheckpointHook sync_hook(save_config(true), logs.sink());
  CheckpointHook async_hook(save_config(false), logs.sink());
  sync_hook.before_train(sync_runner);
  async_hook.before_train(async_runner);
  int64_t epoch = 0;

  // One save through `hook`; returns {stall, until idle} in seconds and the file size.
  auto save = [&](CheckpointHook& hook, BenchRunner& runner, uintmax_t* size) {
    TimedSave t = timed_save(hook, runner, epoch++, [] {});
    *size = t.bytes;
    return std::pair<double, double>{t.stall, t.idle};
  };

  uintmax_t file_bytes = 0;
  // Untimed warm-up of the async hook: its first save allocates the staging buffers.
  auto cold = save(async_hook, async_runner, &file_bytes);
  std::vector<char> buf(file_bytes, 'x');  // reused; every page touched before timing
  raw_write_seconds((dir / "baseline.bin").string(), buf, buf.size());  // untimed warm-up, as above
  std::vector<double> base_s, sync_s, async_stall, async_idle;
  for (int r = 0; r < rounds; ++r) {  // interleaved
    uintmax_t sz = 0;
    base_s.push_back(raw_write_seconds((dir / "baseline.bin").string(), buf, buf.size()));
    sync_s.push_back(save(sync_hook, sync_runner, &sz).second);
    if (sz != file_bytes) fmt::print("note: sync file is {} bytes, async {}\n", sz, file_bytes);
    auto a = save(async_hook, async_runner, &sz);
    async_stall.push_back(a.first);
    async_idle.push_back(a.second);
  }

  const double mb = static_cast<double>(file_bytes) / 1e6;
  const Spread b = spread(base_s), s = spread(sync_s), st = spread(async_stall),
               id = spread(async_idle);
  fmt::print("2. synchronous save: {} tensors, {:.1f} MiB of tensor data, file {} bytes\n",
             sd_tensors, sd_bytes / 1048576.0, file_bytes);
  fmt::print("   (median of {} interleaved rounds, min..max in brackets; MB = 1e6 bytes)\n",
             rounds);
  auto line = [&](const char* name, const Spread& v) {
    fmt::print("   {:<40} {:8.1f} ms [{:7.1f}..{:7.1f}]  {:8.0f} MB/s\n", name, v.med * 1e3,
               v.lo * 1e3, v.hi * 1e3, mb / v.med);
  };
  line("baseline: write + fdatasync + close", b);
  line("hook sync=true: after_train_epoch", s);
  fmt::print("   ratio hook MB/s / baseline MB/s: {:.2f} median, {:.2f} best  (goal >= 0.8)\n\n",
             b.med / s.med, b.lo / s.lo);

  fmt::print("3. asynchronous save (sync=false, writer_threads=1, max_inflight_bytes=0)\n");
  line("baseline: write + fdatasync + close", b);
  fmt::print("   {:<40} {:8.1f} ms [{:7.1f}..{:7.1f}]  ratio to baseline {:.3f}\n",
             "stall: after_train_epoch returns", st.med * 1e3, st.lo * 1e3, st.hi * 1e3,
             st.med / b.med);
  line("until wait_idle() returns", id);
  fmt::print("   ratio async MB/s (to idle) / baseline MB/s: {:.2f} median, {:.2f} best\n",
             b.med / id.med, b.lo / id.lo);
  fmt::print("   first (cold) async save: stall {:.1f} ms, until idle {:.1f} ms\n",
             cold.first * 1e3, cold.second * 1e3);
  if (st.med > 0.9 * id.med) {
    fmt::print("   NOTE: the stall is most of the save: the async path looks synchronous\n");
  }
  if (logs.warnings + logs.errors > 0) {
    fmt::print("\nhook logged {} warning(s), {} error(s); first: {}\n", logs.warnings, logs.errors,
               logs.first);
  }
  sync_hook.after_run(sync_runner);
  async_hook.after_run(async_runner);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path parent = fs::temp_directory_path();
  int rounds = 5;
  int64_t mib = 256;
  int batches = 1000;
  for (int i = 1; i < argc; i += 2) {
    std::string a = argv[i];
    if (i + 1 >= argc) {
      fmt::print(stderr, "option {} needs a value\n", a);
      return 2;
    }
    if (a == "--dir")
      parent = argv[i + 1];
    else if (a == "--rounds")
      rounds = std::max(1, std::stoi(argv[i + 1]));
    else if (a == "--mib")
      mib = std::max<int64_t>(1, std::stoll(argv[i + 1]));
    else if (a == "--batches")
      batches = std::max(1, std::stoi(argv[i + 1]));
    else {
      fmt::print(stderr,
                 "unknown option {}\nusage: hook_bench [--dir DIR] [--rounds N] [--mib M] "
                 "[--batches N]\n",
                 a);
      return 2;
    }
  }
  const fs::path dir = fs::absolute(parent) / fmt::format("hook_bench_{}", ::getpid());
  fs::create_directories(dir);
  fmt::print("hook_bench: dir {} (same filesystem for every figure), torch threads {}\n\n",
             dir.string(), torch::get_num_threads());
  int rc = 1;
  try {
    rc = run(dir, rounds, mib, batches);
  } catch (const std::exception& e) {
    fmt::print(stderr, "hook_bench: {}\n", e.what());
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return rc;
}
