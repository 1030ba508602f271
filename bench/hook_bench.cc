// CheckpointHook performance benchmarks. Every figure is printed beside a baseline measured in
// the same run, because this machine is shared and noisy: ratios are what to compare across runs.
//
//   hook_bench [--dir DIR] [--rounds N] [--mib M] [--batches N] [--python PATH|none]
//              [--json FILE]
//
// 1. Per-iteration overhead of after_train_iter when nothing is saved (by_epoch=true hook, and an
//    iteration hook whose interval is not due) vs an empty call the compiler cannot inline.
// 2. Synchronous save of an M MiB state dict (after_train_epoch, sync=true) vs write + fdatasync +
//    close of the same number of bytes into a new file in the same directory.
// 3. Asynchronous save (sync=false): how long after_train_epoch blocks (stall) and how long until
//    wait_idle() returns, vs the same baseline.
// 4. What a training thread blocks on to save the same state dict without ckptledger, in the same
//    interleaved rounds, beside the hook's async stall and sync save (2 and 3):
//    - Python torch.save(checkpoint, file) (Debian's python3-torch, PATH default /usr/bin/python3,
//      a child process running bench/torch_save_baseline.py on tensors of the same names, shapes
//      and dtype), and the body of MMEngine's save_checkpoint (torch.save into a BytesIO, then one
//      write of getvalue() to the file). Neither fsyncs: an fsync of the closed file is timed
//      separately and reported beside them. --python none skips these.
//    - libtorch torch::save(std::vector<Tensor>, file) of the same tensors (a TorchScript
//      archive; no fsync: an fdatasync of the closed file is timed separately), and
//      torch::pickle_save(the same dict) written to a file (the Python-readable libtorch API).
// Files go to a fresh directory DIR/hook_bench_<pid> (DIR defaults to the system temp dir), which
// is removed at the end. --json FILE: also writes the figures there, machine-readable
// (bench/figures.h).
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include "bench/bench_util.h"
#include "bench/figures.h"
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

// fdatasync of an already written and closed file, in seconds (what making it durable adds).
double fdatasync_seconds(const std::string& path) {
  auto t0 = Clock::now();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::fdatasync(fd) != 0) throw std::runtime_error("fdatasync " + path);
  ::close(fd);
  return seconds_since(t0);
}

// bench/torch_save_baseline.py in a child /usr/bin/python3, driven line by line over pipes so
// that its saves interleave with ours. See that script for what it times.
class PythonSaver {
 public:
  struct Result {
    double save_s = 0, fsync_s = 0;
    uintmax_t bytes = 0;
  };

  PythonSaver(const std::string& python, const std::string& script,
              const c10::impl::GenericDict& sd) {
    int to_child[2], from_child[2];
    if (::pipe2(to_child, O_CLOEXEC) != 0 || ::pipe2(from_child, O_CLOEXEC) != 0) {
      throw std::runtime_error("pipe failed");
    }
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::dup2(to_child[0], 0);
      ::dup2(from_child[1], 1);
      ::execl(python.c_str(), python.c_str(), script.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(to_child[0]);
    ::close(from_child[1]);
    in_ = ::fdopen(to_child[1], "w");
    out_ = ::fdopen(from_child[0], "r");
    try {
      start(python, script, sd);
    } catch (...) {
      stop();
      throw;
    }
  }
  ~PythonSaver() { stop(); }
  PythonSaver(const PythonSaver&) = delete;
  PythonSaver& operator=(const PythonSaver&) = delete;

  // One save by `cmd` ("torch.save" or "mmengine") to `path`, which the child removes.
  Result save(const std::string& cmd, const std::string& path) {
    send(cmd + " " + path + "\n");
    std::istringstream in(line());
    Result r;
    if (!(in >> r.save_s >> r.fsync_s >> r.bytes)) throw std::runtime_error("python: bad reply");
    return r;
  }

 private:
  void start(const std::string& python, const std::string& script,
             const c10::impl::GenericDict& sd) {
    std::string spec = fmt::format("tensors {}\n", sd.size());
    for (const auto& kv : sd) {
      spec += kv.key().toStringRef();
      for (int64_t d : kv.value().toTensor().sizes()) spec += fmt::format(" {}", d);
      spec += "\n";
    }
    send(spec);
    const std::string ready = line();
    if (ready.rfind("ready ", 0) != 0) {
      throw std::runtime_error(
          fmt::format("{} {} did not start (got '{}')", python, script, ready));
    }
  }
  // Asks the child to quit (EOF on its stdin does too) and reaps it. SIGPIPE is ignored (main).
  void stop() {
    if (in_) {
      std::fputs("quit\n", in_);
      std::fclose(in_);
      in_ = nullptr;
    }
    if (out_) {
      std::fclose(out_);
      out_ = nullptr;
    }
    int st = 0;
    if (pid_ > 0) ::waitpid(pid_, &st, 0);
    pid_ = -1;
  }
  void send(const std::string& s) {
    if (std::fputs(s.c_str(), in_) < 0 || std::fflush(in_) != 0) {
      throw std::runtime_error("python: write to the child failed");
    }
  }
  std::string line() {
    std::string s;
    int c = 0;
    while ((c = std::fgetc(out_)) != EOF && c != '\n') s.push_back(static_cast<char>(c));
    if (c == EOF && s.empty()) throw std::runtime_error("python: the child exited");
    return s;
  }

  pid_t pid_ = -1;
  std::FILE* in_ = nullptr;
  std::FILE* out_ = nullptr;
};

int run(const fs::path& dir, int rounds, int64_t mib, int batches, const std::string& python,
        const std::string& json) {
  constexpr int kCallsPerBatch = 1000;
  Logs logs;
  FigureLog figures("hook_bench");

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
    figures.add("hook: after_train_iter, no save (by_epoch hook) ÷ empty call via fn pointer",
                median(by_epoch) / base, "< 1 µs", median(by_epoch) < 1000,
                fmt::format("{:.1f} ns / {:.1f} ns", median(by_epoch), base));
    figures.add("hook: after_train_iter, no save (iteration hook, not due) ÷ empty call",
                median(by_iter) / base, "< 1 µs", median(by_iter) < 1000,
                fmt::format("{:.1f} ns / {:.1f} ns", median(by_iter), base));
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

  // Section 4's savers: the same tensors through libtorch, and through Python in a child.
  std::vector<torch::Tensor> tensors;
  c10::impl::GenericDict plain(c10::StringType::get(), c10::AnyType::get());
  for (const auto& kv : sd) tensors.push_back(kv.value().toTensor());
  plain.insert("state_dict", sd);
  const std::string ts_path = (dir / "torch_save.pt").string();
  const std::string pk_path = (dir / "pickle_save.pth").string();
  const std::string py_path = (dir / "python_save.pth").string();
  uintmax_t ts_bytes = 0, pk_bytes = 0, py_bytes = 0, mm_bytes = 0;
  auto libtorch_save = [&] {  // {save seconds, fdatasync seconds afterwards}
    auto t0 = Clock::now();
    torch::save(tensors, ts_path);
    const double s = seconds_since(t0);
    const double f = fdatasync_seconds(ts_path);
    ts_bytes = fs::file_size(ts_path);
    fs::remove(ts_path);
    return std::pair<double, double>{s, f};
  };
  auto pickle_save = [&] {
    auto t0 = Clock::now();
    std::vector<char> bytes = torch::pickle_save(c10::IValue(plain));
    std::ofstream f(pk_path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    f.close();
    const double s = seconds_since(t0);
    pk_bytes = bytes.size();
    fs::remove(pk_path);
    return s;
  };
  std::unique_ptr<PythonSaver> py;
  std::string py_note;
  if (python != "none") {
    try {
      auto t0 = Clock::now();
      py = std::make_unique<PythonSaver>(
          python, std::string(CKPTLEDGER_BENCH_SOURCE_DIR) + "/torch_save_baseline.py", sd);
      py_note =
          fmt::format("{} started and built the tensors in {:.1f} s", python, seconds_since(t0));
    } catch (const std::exception& e) {
      py_note = fmt::format("skipped: {}", e.what());
    }
  }

  uintmax_t file_bytes = 0;
  // Untimed warm-up of the async hook: its first save allocates the staging buffers.
  auto cold = save(async_hook, async_runner, &file_bytes);
  std::vector<char> buf(file_bytes, 'x');  // reused; every page touched before timing
  raw_write_seconds((dir / "baseline.bin").string(), buf, buf.size());  // untimed warm-up, as above
  libtorch_save();  // untimed warm-ups, as above
  pickle_save();
  if (py) {
    py->save("torch.save", py_path);
    py->save("mmengine", py_path);
  }
  std::vector<double> base_s, sync_s, async_stall, async_idle, ts_s, ts_sync, pk_s, py_s, py_sync,
      mm_s, mm_sync;
  for (int r = 0; r < rounds; ++r) {  // interleaved
    uintmax_t sz = 0;
    base_s.push_back(raw_write_seconds((dir / "baseline.bin").string(), buf, buf.size()));
    sync_s.push_back(save(sync_hook, sync_runner, &sz).second);
    if (sz != file_bytes) fmt::print("note: sync file is {} bytes, async {}\n", sz, file_bytes);
    auto a = save(async_hook, async_runner, &sz);
    async_stall.push_back(a.first);
    async_idle.push_back(a.second);
    auto t = libtorch_save();
    ts_s.push_back(t.first);
    ts_sync.push_back(t.second);
    pk_s.push_back(pickle_save());
    if (py) {
      PythonSaver::Result p = py->save("torch.save", py_path);
      py_s.push_back(p.save_s);
      py_sync.push_back(p.fsync_s);
      py_bytes = p.bytes;
      p = py->save("mmengine", py_path);
      mm_s.push_back(p.save_s);
      mm_sync.push_back(p.fsync_s);
      mm_bytes = p.bytes;
    }
  }
  py.reset();

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
  figures.add(fmt::format("hook: sync save of {} MiB ({} tensors), MB/s ÷ write + fdatasync MB/s",
                          mib, sd_tensors),
              b.med / s.med, "≥ 0.8", b.med / s.med >= 0.8,
              fmt::format("{:.0f} / {:.0f} MB/s", mb / s.med, mb / b.med));

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
  figures.add("hook: async save, MB/s until wait_idle ÷ write + fdatasync MB/s", b.med / id.med,
              fmt::format("{:.0f} / {:.0f} MB/s", mb / id.med, mb / b.med));

  // --- 4. the same state saved without ckptledger ----------------------------------------------
  fmt::print(
      "\n4. what the training thread blocks on, same {} tensors ({:.1f} MiB), medians of {} "
      "interleaved rounds\n",
      sd_tensors, sd_bytes / 1048576.0, rounds);
  auto row4 = [&](const std::string& name, const std::vector<double>& v, uintmax_t bytes,
                  const std::string& extra) {
    const Spread x = spread(v);
    fmt::print("   {:<58} {:8.1f} ms [{:7.1f}..{:7.1f}]  file {:>10} B{}\n", name, x.med * 1e3,
               x.lo * 1e3, x.hi * 1e3, bytes, extra);
  };
  auto fsync_note = [&](const std::vector<double>& v) {
    return fmt::format("  (+ fsync after: {:.1f} ms)", median(v) * 1e3);
  };
  row4("ckptledger async: after_train_epoch returns (stall)", async_stall, file_bytes, "");
  row4("ckptledger sync: after_train_epoch (durable, fdatasync)", sync_s, file_bytes, "");
  if (!py_s.empty()) {
    row4("Python torch.save(checkpoint, file), no fsync", py_s, py_bytes, fsync_note(py_sync));
    row4("Python MMEngine save_checkpoint (BytesIO + write), no fsync", mm_s, mm_bytes,
         fsync_note(mm_sync));
  } else {
    fmt::print("   Python torch.save: {}\n", py_note);
  }
  row4("libtorch torch::save(vector<Tensor>, file), no fsync", ts_s, ts_bytes, fsync_note(ts_sync));
  row4("libtorch torch::pickle_save(dict) + ofstream write, no fsync", pk_s, pk_bytes, "");
  if (!py_note.empty() && !py_s.empty()) fmt::print("   ({})\n", py_note);
  const double stall = st.med, sync = s.med, ts = median(ts_s), ts_d = ts + median(ts_sync);
  fmt::print("   ratios (time ÷ time):\n");
  auto ratio = [&](const std::string& name, double ours, double theirs, const std::string& value) {
    fmt::print("   {:<78} {:7.3f}\n", name, ours / theirs);
    figures.add("hook: " + name, ours / theirs, value);
  };
  auto ms2 = [](double x, double y) {
    return fmt::format("{:.1f} ms / {:.1f} ms", x * 1e3, y * 1e3);
  };
  if (!py_s.empty()) {
    const double py_t = median(py_s), py_d = py_t + median(py_sync), mm = median(mm_s);
    ratio("async stall ÷ Python torch.save to the file (no fsync)", stall, py_t, ms2(stall, py_t));
    ratio("async stall ÷ MMEngine save_checkpoint body (torch.save to BytesIO + write)", stall, mm,
          ms2(stall, mm));
    ratio("sync save (durable) ÷ Python torch.save (no fsync)", sync, py_t, ms2(sync, py_t));
    ratio("sync save (durable) ÷ Python torch.save + fsync", sync, py_d, ms2(sync, py_d));
  }
  ratio("async stall ÷ libtorch torch::save (no fsync)", stall, ts, ms2(stall, ts));
  ratio("sync save (durable) ÷ libtorch torch::save (no fsync)", sync, ts, ms2(sync, ts));
  ratio("sync save (durable) ÷ libtorch torch::save + fdatasync", sync, ts_d, ms2(sync, ts_d));
  if (logs.warnings + logs.errors > 0) {
    fmt::print("\nhook logged {} warning(s), {} error(s); first: {}\n", logs.warnings, logs.errors,
               logs.first);
  }
  sync_hook.after_run(sync_runner);
  async_hook.after_run(async_runner);
  figures.write(json);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path parent = fs::temp_directory_path();
  int rounds = 5;
  int64_t mib = 256;
  int batches = 1000;
  std::string python = "/usr/bin/python3", json;
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
    else if (a == "--python")
      python = argv[i + 1];
    else if (a == "--json")
      json = argv[i + 1];
    else {
      fmt::print(stderr,
                 "unknown option {}\nusage: hook_bench [--dir DIR] [--rounds N] [--mib M] "
                 "[--batches N] [--python PATH|none] [--json FILE]\n",
                 a);
      return 2;
    }
  }
  std::signal(SIGPIPE, SIG_IGN);  // a Python child that died must not kill the bench
  const fs::path dir = fs::absolute(parent) / fmt::format("hook_bench_{}", ::getpid());
  fs::create_directories(dir);
  fmt::print("hook_bench: dir {} (same filesystem for every figure), torch threads {}\n\n",
             dir.string(), torch::get_num_threads());
  int rc = 1;
  try {
    rc = run(dir, rounds, mib, batches, python, json);
  } catch (const std::exception& e) {
    fmt::print(stderr, "hook_bench: {}\n", e.what());
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return rc;
}
