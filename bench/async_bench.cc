// Asynchronous checkpointing benchmarks (the stager and writer pool of docs/persistence.md).
// Every figure is printed beside a baseline measured in the same run, because this machine is
// shared and noisy: ratios are what to compare across runs.
//
//   async_bench [--dir DIR] [--sizes 64,1024] [--rounds N] [--pairs N] [--writer-nice 0..19]
//               [--json FILE]
//
// For each state-dict size (MiB; default 64 and 1024: GPT-2-small-like layers, d_model 768, plus
// an embedding that fills the rest, ~27 and ~450 float32 tensors of 3 KiB to 9 MiB):
// 1. Training-thread stall per save: how long after_train_epoch of an async hook (sync=false,
//    one writer thread, one checkpoint in flight) blocks, with warm staging buffers (the first,
//    cold save is reported apart), vs memcpy of the same tensor bytes into a reused, warm buffer.
// 2. Stall reduction: after_train_epoch of a sync hook (sync=true: temp file, fdatasync, rename)
//    on the same state, divided by the async stall.
// 3. Persist throughput: file bytes / (from the async call until wait_idle() returns) vs write +
//    fdatasync + close of as many bytes from a reused buffer into a new file in the same dir.
//    3b: the same beside SHA-256 of as many bytes on one thread, the bound of any writer that
//    records the file's digest (one sequential chain).
// 4. A training loop (torch threads = 1, so the writer has the other core): each iteration runs
//    a compute step (matmuls, calibrated to ~30 ms) and updates one parameter tensor in place.
//    Segments of K iterations alternate between "no save" and "async save at the segment's first
//    iteration"; a save segment ends with wait_idle(), timed (nonzero only when the disk did not
//    keep up). Ratio: total time of the save segments / total time of the no-save segments.
//    K = ceil(4 x the async save's time-to-idle (figure 3) / step time): the writer, measured
//    alone, would be busy a quarter of the time. Pairs of segments (--pairs): default 5 for sizes
//    <= 256 MiB, else 6 (with 2 pairs at 1 GiB the ratio moved by +-15% between identical runs).
// Figures 1-3 are measured in interleaved rounds (N: default 8 for sizes <= 256 MiB, else 3).
// After every save, all tensors are changed in place (as an optimizer step would) while the
// writer works. Peak extra memory: growth of VmHWM over VmRSS (/proc/self/status; the peak is
// reset through /proc/self/clear_refs) from just before the async hook's first save until the
// last round, beside the budget (one checkpoint's tensor bytes) plus the checkpoint's
// non-tensor bytes (pickle metadata and zip records).
// Files go to a fresh directory DIR/async_bench_<pid> (DIR defaults to the system temp dir),
// removed at the end. --json FILE: also writes the figures there, machine-readable
// (bench/figures.h).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "bench/bench_util.h"
#include "bench/figures.h"
#include "ckptledger/checkpoint_hook.h"
#include "ledger/sha256.h"
#include "storage/durable_file.h"

namespace {

namespace fs = std::filesystem;
using ckptledger::CheckpointHook;
using ckptledger::HookConfig;
using namespace ckptledger::bench;  // NOLINT: bench_util.h

double mib(double bytes) { return bytes / 1048576.0; }

// GPT-2-small-like layers (d_model 768, MLP 3072): 12 tensors and ~27 MiB per layer, as many as
// fit in `size_mib`, then a token embedding and a final norm that fill the rest.
c10::impl::GenericDict make_state_dict(int64_t size_mib, int64_t* bytes, int64_t* tensors) {
  constexpr int64_t d = 768, ff = 3072;
  c10::impl::GenericDict sd(c10::StringType::get(), c10::TensorType::get());
  *bytes = 0;
  *tensors = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    torch::Tensor t = torch::randn(shape);
    *bytes += static_cast<int64_t>(t.nbytes());
    ++*tensors;
    sd.insert(name, t);
  };
  const int64_t total = size_mib << 20;
  const int64_t layer = 4 * (3 * d * d + 3 * d + d * d + d + 2 * ff * d + ff + d + 4 * d);
  const int64_t layers = std::max<int64_t>(0, (total - 4 * 2 * d) / layer);
  const int64_t vocab = std::max<int64_t>(1, (total - layers * layer - 4 * 2 * d) / (4 * d));
  add("embed.weight", {vocab, d});
  for (int64_t i = 0; i < layers; ++i) {
    const std::string p = fmt::format("layers.{}.", i);
    add(p + "ln1.weight", {d});
    add(p + "ln1.bias", {d});
    add(p + "attn.qkv.weight", {3 * d, d});
    add(p + "attn.qkv.bias", {3 * d});
    add(p + "attn.out.weight", {d, d});
    add(p + "attn.out.bias", {d});
    add(p + "ln2.weight", {d});
    add(p + "ln2.bias", {d});
    add(p + "mlp.fc1.weight", {ff, d});
    add(p + "mlp.fc1.bias", {ff});
    add(p + "mlp.fc2.weight", {d, ff});
    add(p + "mlp.fc2.bias", {d});
  }
  add("ln_f.weight", {d});
  add("ln_f.bias", {d});
  return sd;
}

// Baseline of figure 1: copy every tensor's bytes, in order, into `buf` (reused, warm).
double memcpy_seconds(const std::vector<torch::Tensor>& params, std::vector<char>& buf) {
  auto t0 = Clock::now();
  char* out = buf.data();
  for (const torch::Tensor& p : params) {
    std::memcpy(out, p.data_ptr(), p.nbytes());
    out += p.nbytes();
  }
  const double s = seconds_since(t0);
  asm volatile("" : : "r"(buf.data()) : "memory");
  return s;
}

// Bound of figure 3: SHA-256 of the file's bytes on one thread (the digest is one sequential
// chain, so no writer can be faster than this).
double sha256_seconds(const std::vector<char>& buf, size_t size) {
  auto t0 = Clock::now();
  ckptledger::Sha256 sha;
  sha.update(buf.data(), size);
  const std::string digest = sha.hex_digest();
  const double s = seconds_since(t0);
  asm volatile("" : : "r"(digest.data()) : "memory");
  return s;
}

// VmRSS / VmHWM of this process, in bytes.
struct Rss {
  int64_t rss = 0, hwm = 0;
};
Rss read_rss() {
  std::ifstream in("/proc/self/status");
  std::string line;
  Rss r;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string key;
    int64_t kib = 0;
    ls >> key >> kib;
    if (key == "VmRSS:") r.rss = kib << 10;
    if (key == "VmHWM:") r.hwm = kib << 10;
  }
  return r;
}
// Resets VmHWM to the current RSS; false where the kernel refuses.
bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

// One row of the results table.
struct Row {
  std::string figure, measured, baseline, ratio, goal, verdict;
};

void print_table(const std::vector<Row>& rows) {
  size_t w[5] = {6, 8, 8, 5, 4};
  for (const Row& r : rows) {
    w[0] = std::max(w[0], r.figure.size());
    w[1] = std::max(w[1], r.measured.size());
    w[2] = std::max(w[2], r.baseline.size());
    w[3] = std::max(w[3], r.ratio.size());
    w[4] = std::max(w[4], r.goal.size());
  }
  auto line = [&](const Row& r) {
    fmt::print("  {:<{}}  {:<{}}  {:<{}}  {:>{}}  {:<{}}  {}\n", r.figure, w[0], r.measured, w[1],
               r.baseline, w[2], r.ratio, w[3], r.goal, w[4], r.verdict);
  };
  line({"figure", "measured", "baseline", "ratio", "goal", ""});
  for (const Row& r : rows) line(r);
}

// How many cores this process gets right now: the time of a fixed CPU-bound task on one
// thread, against two threads doing it at once (2.0 on an idle 2-core machine). Other users'
// processes (and the kernel's autogroup scheduling) can leave this process about one core.
double effective_cores() {
  auto work = [] {
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < 30'000'000; ++i) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
    }
    asm volatile("" : : "r"(x));
  };
  auto t0 = Clock::now();
  work();
  const double one = seconds_since(t0);
  t0 = Clock::now();
  std::thread a(work), b(work);
  a.join();
  b.join();
  return 2 * one / seconds_since(t0);
}

std::string met(bool ok) { return ok ? "met" : "NOT met"; }

// The compute step of figure 4: an MLP block's forward (x W1, relu, W2) on a batch of `rows`.
struct Compute {
  torch::Tensor w1 = torch::randn({768, 3072}) * 0.02;
  torch::Tensor w2 = torch::randn({3072, 768}) * 0.02;
  torch::Tensor x;
  int64_t rows = 8;
  void step() {
    torch::NoGradGuard no_grad;
    torch::Tensor h = torch::relu(x.mm(w1)).mm(w2);
    asm volatile("" : : "r"(h.data_ptr()) : "memory");
  }
  // Chooses `rows` so that a step takes about `target` seconds; returns the step's median time.
  double calibrate(double target) {
    auto time_steps = [&] {
      x = torch::randn({rows, 768});
      step();  // warm
      std::vector<double> v;
      for (int i = 0; i < 5; ++i) {
        auto t0 = Clock::now();
        step();
        v.push_back(seconds_since(t0));
      }
      return median(v);
    };
    rows = 8;
    const double t8 = time_steps();
    rows = std::clamp<int64_t>(std::llround(8 * target / t8), 1, 1 << 14);
    return time_steps();
  }
};

int run_size(const fs::path& dir, int64_t size_mib, int rounds, int pairs, int writer_nice,
             FigureLog& figures) {
  Logs logs;
  const fs::path root = dir / fmt::format("{}MiB", size_mib);
  fs::create_directories(root / "sync");
  fs::create_directories(root / "async");
  const double cores_before = effective_cores();
  int64_t tensor_bytes = 0, tensors = 0;
  auto t_make = Clock::now();
  c10::impl::GenericDict sd = make_state_dict(size_mib, &tensor_bytes, &tensors);
  const double make_s = seconds_since(t_make);
  BenchRunner sync_runner((root / "sync").string(), sd);
  BenchRunner runner((root / "async").string(), sd);  // the same tensors
  HookConfig async_config = save_config(false);
  async_config.writer_nice = writer_nice;
  CheckpointHook sync_hook(save_config(true), logs.sink());
  CheckpointHook async_hook(async_config, logs.sink());
  sync_hook.before_train(sync_runner);
  async_hook.before_train(runner);
  int64_t epoch = 0;

  // One save through `hook` at epoch end; returns {stall, until idle} in seconds and the file
  // size. Every tensor changes right after the call returns, while an async writer works.
  auto save = [&](CheckpointHook& hook, BenchRunner& r, uintmax_t* size) {
    TimedSave t = timed_save(hook, r, epoch++, [&] { r.update_all(); });
    *size = t.bytes;
    return std::pair<double, double>{t.stall, t.idle};
  };

  // Warm-ups (untimed): the baselines' buffer, the sync hook's first save.
  uintmax_t file_bytes = 0;
  const double sync_first = save(sync_hook, sync_runner, &file_bytes).first;
  std::vector<char> buf(std::max<size_t>(file_bytes, static_cast<size_t>(tensor_bytes)), 'x');
  memcpy_seconds(runner.params(), buf);
  const std::string raw_path = (root / "baseline.bin").string();
  raw_write_seconds(raw_path, buf, file_bytes);

  // Memory: from here on, only the hooks allocate.
  const bool peak_reset = reset_peak_rss();
  const Rss rss0 = read_rss();
  uintmax_t sz = 0;
  const auto cold = save(async_hook, runner, &sz);

  std::vector<double> memcpy_s, raw_s, sha_s, sync_s, stall_s, idle_s;
  for (int r = 0; r < rounds; ++r) {  // interleaved
    memcpy_s.push_back(memcpy_seconds(runner.params(), buf));
    sha_s.push_back(sha256_seconds(buf, file_bytes));
    raw_s.push_back(raw_write_seconds(raw_path, buf, file_bytes));
    sync_s.push_back(save(sync_hook, sync_runner, &sz).first);
    if (sz != file_bytes) fmt::print("  note: sync file is {} bytes, first {}\n", sz, file_bytes);
    auto a = save(async_hook, runner, &sz);
    if (sz != file_bytes) fmt::print("  note: async file is {} bytes, sync {}\n", sz, file_bytes);
    stall_s.push_back(a.first);
    idle_s.push_back(a.second);
  }
  const Rss rss1 = read_rss();

  // --- 4. Training loop ----------------------------------------------------------------------
  Compute compute;
  const double step_s = compute.calibrate(0.030);
  const double idle_med = median(idle_s);
  const int64_t k = std::max<int64_t>(4, static_cast<int64_t>(std::ceil(4 * idle_med / step_s)));
  double with_s = 0, without_s = 0, end_wait_s = 0;
  std::vector<double> steps_with, steps_without;
  int64_t iter = 0;
  auto segment = [&](bool with_save) {
    auto t0 = Clock::now();
    for (int64_t i = 0; i < k; ++i, ++iter) {
      auto ti = Clock::now();
      compute.step();
      runner.update_one();
      runner.set_counters(epoch, iter + 1);
      async_hook.after_train_iter(runner, i);  // by_epoch hook: never saves here
      if (with_save && i == 0) async_hook.after_train_epoch(runner);
      // Iterations after the save call (which has its own figure): how the writer slows them.
      if (i > 0) (with_save ? steps_with : steps_without).push_back(seconds_since(ti));
    }
    if (with_save) {
      auto tw = Clock::now();
      async_hook.wait_idle();
      end_wait_s += seconds_since(tw);
    }
    const double s = seconds_since(t0);
    (with_save ? with_s : without_s) += s;
    if (with_save) {
      ++epoch;
      for (const std::string& p : async_hook.last_stage_saves()) fs::remove(p);  // untimed
    }
  };
  for (int p = 0; p < pairs; ++p) {  // ABBA order against drifting load
    segment(p % 2 == 1);
    segment(p % 2 == 0);
  }

  sync_hook.after_run(sync_runner);
  async_hook.after_run(runner);
  const double cores_after = effective_cores();

  // --- Report ------------------------------------------------------------------------------
  const double mb = static_cast<double>(file_bytes) / 1e6;
  const double memcpy_med = median(memcpy_s), raw_med = median(raw_s), sync_med = median(sync_s),
               stall_med = median(stall_s);
  const bool large = size_mib >= 1024;
  fmt::print(
      "state dict {} MiB: {} tensors, {} tensor bytes, file {} bytes; built in {:.1f} s; "
      "{} interleaved rounds (medians)\n",
      size_mib, tensors, tensor_bytes, file_bytes, make_s, rounds);
  std::vector<Row> rows;
  const double r1 = stall_med / memcpy_med;
  rows.push_back({"1 stall per save (async, warm)", fmt::format("{:.1f} ms", stall_med * 1e3),
                  fmt::format("memcpy {:.1f} ms", memcpy_med * 1e3), fmt::format("{:.2f}", r1),
                  "<= 1.3", met(r1 <= 1.3)});
  const double r2 = sync_med / stall_med;
  rows.push_back({"2 stall reduction vs sync save", fmt::format("sync {:.1f} ms", sync_med * 1e3),
                  fmt::format("async stall {:.1f} ms", stall_med * 1e3), fmt::format("{:.1f}x", r2),
                  large ? ">= 20x" : ">= 20x (1 GiB)",
                  large ? met(r2 >= 20) : (r2 >= 20 ? "(met)" : "(not met)")});
  const double r3 = raw_med / idle_med;
  rows.push_back({"3 persist throughput (to idle)",
                  fmt::format("{:.0f} MB/s ({:.1f} ms)", mb / idle_med, idle_med * 1e3),
                  fmt::format("write+fdatasync {:.0f} MB/s", mb / raw_med),
                  fmt::format("{:.2f}", r3), ">= 0.85", met(r3 >= 0.85)});
  const double sha_med = median(sha_s);
  rows.push_back({"3b persist vs SHA-256 alone (its bound)",
                  fmt::format("{:.0f} MB/s", mb / idle_med),
                  fmt::format("SHA-256 {:.0f} MB/s", mb / sha_med),
                  fmt::format("{:.2f}", sha_med / idle_med), "(no goal)", ""});
  const double r4 = with_s / without_s;
  rows.push_back({fmt::format("4 loop, async save every K={} iters", k),
                  fmt::format("{:.2f} s", with_s), fmt::format("no saves {:.2f} s", without_s),
                  fmt::format("{:.3f}", r4), "<= 1.05", met(r4 <= 1.05)});
  const double budget = static_cast<double>(tensor_bytes);
  const double metadata = static_cast<double>(file_bytes) - budget;
  const double extra = static_cast<double>(rss1.hwm - rss0.rss);
  const double blocks =
      static_cast<double>(ckptledger::kWriteBlocks * ckptledger::kWriteBlockBytes);
  rows.push_back({"peak extra RSS (VmHWM - VmRSS before)", fmt::format("{:.1f} MiB", mib(extra)),
                  fmt::format("budget {:.1f} + metadata {:.2f} MiB", mib(budget), mib(metadata)),
                  fmt::format("{:.3f}", extra / (budget + metadata)), "<= budget + metadata",
                  met(extra <= budget + metadata)});
  rows.push_back({"  the same with the write blocks", fmt::format("{:.1f} MiB", mib(extra)),
                  fmt::format("+ write blocks {:.0f} MiB", mib(blocks)),
                  fmt::format("{:.3f}", extra / (budget + metadata + blocks)),
                  "<= budget + metadata + blocks", met(extra <= budget + metadata + blocks)});
  print_table(rows);
  const std::string sz_name = size_mib % 1024 == 0 ? fmt::format("{} GiB", size_mib / 1024)
                                                   : fmt::format("{} MiB", size_mib);
  auto fig = [&](const std::string& what) { return fmt::format("async {}: {}", sz_name, what); };
  figures.add(fig("1. training-thread stall per save ÷ memcpy of the same bytes"), r1, "≤ 1.3",
              r1 <= 1.3, fmt::format("{:.1f} ms / {:.1f} ms", stall_med * 1e3, memcpy_med * 1e3));
  figures.add(fig("2. stall reduction: sync save ÷ async stall"), r2,
              large ? "≥ 20" : "(≥ 20 at 1 GiB)",
              large ? std::optional<bool>(r2 >= 20) : std::nullopt,
              fmt::format("{:.1f} ms / {:.1f} ms", sync_med * 1e3, stall_med * 1e3));
  figures.add(fig("3. persist throughput (call → wait_idle) ÷ write + fdatasync"), r3, "≥ 0.85",
              r3 >= 0.85, fmt::format("{:.0f} / {:.0f} MB/s", mb / idle_med, mb / raw_med));
  figures.add(fig("3b. persist throughput ÷ SHA-256 on one thread (its bound)"), sha_med / idle_med,
              fmt::format("{:.0f} / {:.0f} MB/s", mb / idle_med, mb / sha_med));
  figures.add(fig(fmt::format("4. loop, async save every K={} iterations ÷ no saves", k)), r4,
              "≤ 1.05", r4 <= 1.05, fmt::format("{:.2f} s / {:.2f} s", with_s, without_s));
  figures.add(fig("peak extra RSS ÷ (budget + metadata)"), extra / (budget + metadata), "≤ 1",
              extra <= budget + metadata,
              fmt::format("{:.1f} MiB / {:.1f} MiB", mib(extra), mib(budget + metadata)));
  figures.add(fig("peak extra RSS ÷ (budget + metadata + write blocks)"),
              extra / (budget + metadata + blocks), "≤ 1", extra <= budget + metadata + blocks,
              fmt::format("{:.1f} MiB / {:.1f} MiB", mib(extra), mib(budget + metadata + blocks)));
  fmt::print(
      "  first (cold) async save: stall {:.1f} ms, until idle {:.1f} ms; first sync save "
      "{:.1f} ms\n",
      cold.first * 1e3, cold.second * 1e3, sync_first * 1e3);
  fmt::print(
      "  loop: step {:.1f} ms (MLP forward on {} rows + one tensor update), {} pairs of {} "
      "iterations; wait_idle at save-segment ends {:.1f} ms in all\n",
      step_s * 1e3, compute.rows, pairs, k, end_wait_s * 1e3);
  fmt::print(
      "  loop iterations after the save call: median {:.1f} ms, slowest {:.1f} ms (no-save "
      "segments: median {:.1f} ms, slowest {:.1f} ms)\n",
      median(steps_with) * 1e3, *std::max_element(steps_with.begin(), steps_with.end()) * 1e3,
      median(steps_without) * 1e3,
      *std::max_element(steps_without.begin(), steps_without.end()) * 1e3);
  fmt::print("  RSS after the rounds: +{:.1f} MiB over before the first async save{}\n",
             mib(static_cast<double>(rss1.rss - rss0.rss)),
             peak_reset ? "" : " (VmHWM could not be reset: the peak may predate the hooks)");
  fmt::print("  cores available to this process (of {}): {:.2f} before, {:.2f} after\n",
             std::thread::hardware_concurrency(), cores_before, cores_after);
  if (logs.warnings + logs.errors > 0) {
    fmt::print("  hooks logged {} warning(s), {} error(s); first: {}\n", logs.warnings, logs.errors,
               logs.first);
  }
  fmt::print("\n");
  return 0;
}

std::vector<int64_t> parse_sizes(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    const int64_t v = std::stoll(item);
    if (v < 1) throw std::invalid_argument("size must be >= 1 MiB");
    out.push_back(v);
  }
  if (out.empty()) throw std::invalid_argument("no sizes");
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path parent = fs::temp_directory_path();
  std::vector<int64_t> sizes = {64, 1024};
  int rounds = 0;  // 0: per size
  int pairs = 0;   // 0: per size
  int writer_nice = HookConfig().writer_nice;
  std::string json;
  const char* usage =
      "usage: async_bench [--dir DIR] [--sizes MIB,MIB...] [--rounds N] [--pairs N] "
      "[--writer-nice 0..19] [--json FILE]";
  try {
    for (int i = 1; i < argc; i += 2) {
      const std::string a = argv[i];
      if (i + 1 >= argc) throw std::invalid_argument("option " + a + " needs a value");
      if (a == "--dir") {
        parent = argv[i + 1];
      } else if (a == "--sizes") {
        sizes = parse_sizes(argv[i + 1]);
      } else if (a == "--rounds") {
        rounds = std::max(1, std::stoi(argv[i + 1]));
      } else if (a == "--pairs") {
        pairs = std::max(1, std::stoi(argv[i + 1]));
      } else if (a == "--writer-nice") {
        writer_nice = std::stoi(argv[i + 1]);
        if (writer_nice < 0 || writer_nice > 19) {
          throw std::invalid_argument("--writer-nice must be 0..19");
        }
      } else if (a == "--json") {
        json = argv[i + 1];
      } else {
        throw std::invalid_argument("unknown option " + a);
      }
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "async_bench: {}\n{}\n", e.what(), usage);
    return 2;
  }
  torch::set_num_threads(1);
  const fs::path dir = fs::absolute(parent) / fmt::format("async_bench_{}", ::getpid());
  fs::create_directories(dir);
  fmt::print(
      "async_bench: dir {} (same filesystem for every figure), torch threads {}, writer_nice "
      "{}\n\n",
      dir.string(), torch::get_num_threads(), writer_nice);
  int rc = 0;
  FigureLog figures("async_bench");
  try {
    for (int64_t s : sizes) {
      const int n = rounds > 0 ? rounds : (s <= 256 ? 8 : 3);
      const int p = pairs > 0 ? pairs : (s <= 256 ? 5 : 6);  // fewer than ~5 pairs: +-15% noise
      rc |= run_size(dir, s, n, p, writer_nice, figures);
    }
    figures.write(json);
  } catch (const std::exception& e) {
    fmt::print(stderr, "async_bench: {}\n", e.what());
    rc = 1;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return rc;
}
