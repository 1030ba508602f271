// Time to resume (docs/crash-safety.md: resume): open the ledger, replay it, reconcile it with the
// disk, verify the newest checkpoint's SHA-256 and load it, for a ledger of ~100,000 events and a
// 256 MiB checkpoint, beside the time to just load that checkpoint file (our reader, as a resume
// reads it) measured in the same run. Goal: resume / load <= 1.2.
//
//   resume_bench [--dir DIR] [--events N] [--mib M] [--rounds R] [--keep 1] [--json FILE]
//
// The work_dir is built once: a run of ~N events appended the way the hook appends them (a
// regular save every step with rotation, max_keep_ckpts 1; a validation every step; a best save
// replacing the previous best every 10th step), then the real hook, resuming from it, saves one
// M MiB regular checkpoint of ~424 float32 tensors (as hook_bench): the resume target.
// Then, in R interleaved rounds, with the files in the page cache (warm) and again after evicting
// the checkpoint and the ledger from it (cold, posix_fadvise DONTNEED; the residency left is
// printed):
//   load     read_checkpoint(target)
//   resume   CheckpointHook::resume(runner): open + replay + reconcile + SHA-256 + load
// and, warm only, the parts: open + replay + reconcile (resume=false), SHA-256 of the file alone,
// a replay of the ledger alone and a full hash-chain verify (not part of a resume).
// The runner keeps what it is given (a real runner copies it into its model), so freeing the
// loaded tensors is outside both timings. Files go to DIR/resume_bench_<pid> (DIR defaults to the
// system temp dir), removed at the end unless --keep 1. --json FILE: also writes the figures
// there, machine-readable (bench/figures.h).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "bench/bench_util.h"
#include "bench/figures.h"
#include "ckptledger/checkpoint_hook.h"
#include "ckptledger/hook_config.h"
#include "ckptledger/hook_state.h"
#include "ckptledger/ledger.h"
#include "ckptledger/runner.h"
#include "hook/checkpoint_format.h"
#include "ledger/sha256.h"
#include "policy/hook_events.h"
#include "storage/durable_file.h"

namespace {

namespace fs = std::filesystem;
using namespace ckptledger;
using namespace ckptledger::bench;  // NOLINT: bench_util.h

std::string join_path(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

struct Spread {
  double med, lo, hi;
};
Spread spread(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

// bench_util's runner, keeping the checkpoint it is given to load (as a model would), so that
// freeing the loaded tensors is outside the timing.
class KeepingRunner : public BenchRunner {
 public:
  using BenchRunner::BenchRunner;
  void load_checkpoint(const c10::impl::GenericDict& ckpt, bool resume) override {
    loaded_ = ckpt;
    if (resume) restore_counters(ckpt);
  }

 private:
  std::optional<c10::impl::GenericDict> loaded_;
};

HookConfig bench_config() {
  HookConfig c;
  c.interval = 1;
  c.max_keep_ckpts = 1;
  c.save_best = nlohmann::json("acc");
  c.sync = true;
  c.save_optimizer = false;
  c.save_param_scheduler = false;
  return c;
}

// A small real checkpoint at `path`; returns its size and digest as a commit records them.
WrittenFile write_small_checkpoint(const std::string& path) {
  c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
  d.insert("state_dict", torch::zeros({4}));
  return write_durably(path, [&](const ByteSink& sink) { write_checkpoint(c10::IValue(d), sink); });
}

// Appends ~`target` events of a long run the way the hook appends them; returns the last step.
int64_t append_history(const std::string& work_dir, int64_t target) {
  auto ledger = Ledger::open(join_path(work_dir, kDefaultLedgerName));
  std::vector<Event> batch;
  int64_t appended = 0;
  auto push = [&](Event e) {
    batch.push_back(std::move(e));
    if (batch.size() >= 2000) {
      ledger->append_batch(batch);
      appended += static_cast<int64_t>(batch.size());
      batch.clear();
    }
  };
  auto make = [](EventKind kind, const std::string& path, int64_t step) {
    Event e;
    e.kind = kind;
    e.path = path;
    e.step = step;
    e.epoch = step;
    e.iter = step * 100;
    return e;
  };
  auto regular = [&](int64_t s) { return fmt::format("{}/epoch_{}.pth", work_dir, s); };
  auto best = [&](int64_t s) { return fmt::format("{}/best_acc_epoch_{}.pth", work_dir, s); };

  RunStartedPayload rs;
  rs.config = bench_config().to_json().dump();
  rs.work_dir = rs.out_dir = work_dir;
  rs.pid = ::getpid();
  rs.host = "bench";
  rs.version = "bench";
  Event run = make(EventKind::kRunStarted, "", 0);
  run.detail = to_detail(rs);
  push(run);

  const int64_t steps = std::max<int64_t>(2, (target - 1) * 10 / 44);
  int64_t last_best = 0;
  for (int64_t s = 1; s <= steps; ++s) {
    // The files of the last step (and the best still live then) exist for real.
    auto digest_of = [&](const std::string& path, Event& committed, bool real) {
      if (real) {
        WrittenFile w = write_small_checkpoint(path);
        committed.bytes = static_cast<int64_t>(w.bytes);
        committed.digest = w.sha256;
      } else {
        committed.bytes = 1'000'000 + s;
        committed.digest = Sha256::hex(path);
      }
    };
    SavePayload sp;
    sp.role = "regular";
    sp.keep_tracked = true;
    sp.keep_ckpt_ids = {s};
    Event begun = make(EventKind::kSaveBegun, regular(s), s);
    begun.detail = to_detail(sp);
    push(begun);
    Event committed = make(EventKind::kSaveCommitted, regular(s), s);
    committed.detail = to_detail(sp);
    digest_of(regular(s), committed, s == steps);
    push(committed);
    if (s > 1) {
      Event prune = make(EventKind::kPruned, regular(s - 1), s - 1);
      PrunePayload pp;
      pp.reason = "rotation";
      pp.superseded_by = regular(s);
      prune.detail = to_detail(pp);
      push(prune);
    }
    if (s % 10 == 0 || s == steps) {
      SavePayload bp;
      bp.role = "best";
      bp.key = "acc";
      Event bbegun = make(EventKind::kSaveBegun, best(s), s);
      bbegun.detail = to_detail(bp);
      push(bbegun);
      Event bcommitted = make(EventKind::kSaveCommitted, best(s), s);
      bcommitted.detail = to_detail(bp);
      digest_of(best(s), bcommitted, s == steps);
      push(bcommitted);
      Event updated = make(EventKind::kBestUpdated, best(s), s);
      updated.metric = "acc";
      updated.score = 1e-6 * static_cast<double>(s);
      BestPayload b;
      b.rule = "greater";
      b.previous_path = last_best > 0 ? best(last_best) : "";
      b.had_previous_score = last_best > 0;
      b.previous_score = 1e-6 * static_cast<double>(last_best);
      updated.detail = to_detail(b);
      push(updated);
      if (last_best > 0) {
        Event prune = make(EventKind::kPruned, best(last_best), last_best);
        PrunePayload pp;
        pp.reason = "best_replaced";
        pp.superseded_by = best(s);
        prune.detail = to_detail(pp);
        push(prune);
      }
      last_best = s;
    }
    Event validated = make(EventKind::kValidated, "", s);
    ValidatedPayload vp;
    vp.metrics = {{"acc", 1e-6 * static_cast<double>(s)}};
    validated.detail = to_detail(vp);
    push(validated);
  }
  if (!batch.empty()) ledger->append_batch(batch);
  write_text_durably(join_path(work_dir, "last_checkpoint"), regular(steps));
  return steps;
}

// Drops `path` from the page cache (its pages are clean: they were fsynced); returns the
// fraction of its pages still resident afterwards.
double evict(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  struct stat st {};
  double resident = 0;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) {
    void* m = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    if (m != MAP_FAILED) {
      const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
      const size_t pages = (static_cast<size_t>(st.st_size) + page - 1) / page;
      std::vector<unsigned char> vec(pages);
      if (::mincore(m, static_cast<size_t>(st.st_size), vec.data()) == 0) {
        size_t in = 0;
        for (unsigned char v : vec) in += v & 1;
        resident = static_cast<double>(in) / static_cast<double>(pages);
      }
      ::munmap(m, static_cast<size_t>(st.st_size));
    }
  }
  ::close(fd);
  return resident;
}

int run(const fs::path& dir, int64_t events, int64_t mib, int rounds, const std::string& json) {
  const std::string work = (dir / "work").string();
  fs::create_directories(work);
  Logs logs;
  const LogSink sink = logs.sink();

  // --- the work_dir: a long history, then one big checkpoint saved by the real hook ----------
  auto t_build = Clock::now();
  const int64_t last_step = append_history(work, events - 4);
  int64_t tensors = 0;
  std::string target;
  {
    KeepingRunner runner(work, model_like_state_dict(mib, nullptr, &tensors));
    runner.set_counters(last_step, last_step * 100);
    CheckpointHook hook(bench_config(), sink);
    if (hook.resume(runner) != join_path(work, fmt::format("epoch_{}.pth", last_step))) {
      throw std::runtime_error("the synthetic history does not resume from its last step");
    }
    hook.before_train(runner);
    hook.after_train_epoch(runner);  // saves epoch_<last_step + 1>.pth, prunes epoch_<last_step>
    if (hook.last_stage_saves().size() != 1) throw std::runtime_error("expected one save");
    target = hook.last_stage_saves().front();
    hook.after_run(runner);
  }
  const std::string ledger_file = join_path(work, kDefaultLedgerName);
  int64_t ledger_events = 0;
  {
    LedgerOptions ro;
    ro.mode = OpenMode::kReadOnly;
    ledger_events = Ledger::open(ledger_file, ro)->last_seq();
  }
  const uint64_t file_bytes = fs::file_size(target);
  fmt::print(
      "work_dir built in {:.1f} s: {} events in {} ({:.1f} MiB), resume target {} "
      "({} tensors, {:.1f} MiB)\n\n",
      seconds_since(t_build), ledger_events, ledger_file, fs::file_size(ledger_file) / 1048576.0,
      fs::path(target).filename().string(), tensors, file_bytes / 1048576.0);

  const HookConfig cfg = bench_config();
  auto time_load = [&] {
    auto t0 = Clock::now();
    c10::IValue v = read_checkpoint(target);
    const double s = seconds_since(t0);
    if (!v.isGenericDict()) throw std::runtime_error("not a dict");
    return s;  // the tensors are freed here, outside the timing
  };
  auto time_resume = [&](bool resume) {
    KeepingRunner runner(work,
                         c10::impl::GenericDict(c10::StringType::get(), c10::TensorType::get()));
    CheckpointHook hook(cfg, sink);
    auto t0 = Clock::now();
    std::optional<std::string> loaded = hook.resume(runner, resume);
    const double s = seconds_since(t0);
    if (resume ? loaded != target : loaded.has_value()) {
      throw std::runtime_error("resume loaded " + loaded.value_or("nothing"));
    }
    return s;  // the hook closes its ledger, and the runner frees the tensors, outside the timing
  };
  const std::string target_digest = Sha256::file_hex(target);
  auto time_verified = [&] {
    auto t0 = Clock::now();
    VerifiedCheckpoint v = read_checkpoint_verified(target, target_digest);
    const double s = seconds_since(t0);
    if (!v.matches || !v.value.isGenericDict()) throw std::runtime_error("does not verify");
    return s;
  };
  auto time_sha = [&] {
    auto t0 = Clock::now();
    Sha256::file_hex(target);
    return seconds_since(t0);
  };
  auto time_replay = [&] {
    LedgerOptions ro;
    ro.mode = OpenMode::kReadOnly;
    auto t0 = Clock::now();
    auto l = Ledger::open(ledger_file, ro);
    HookState state;
    HookStateFold fold(state);
    l->replay(fold);
    return seconds_since(t0);
  };
  auto time_verify = [&] {
    LedgerOptions ro;
    ro.mode = OpenMode::kReadOnly;
    auto t0 = Clock::now();
    auto l = Ledger::open(ledger_file, ro);
    if (!l->verify().ok()) throw std::runtime_error("the chain does not verify");
    return seconds_since(t0);
  };
  auto evict_all = [&] {
    double r = evict(target);
    evict(ledger_file);
    return r;
  };

  // Untimed warm-up: the first resume may record reconciliation findings once.
  time_resume(true);
  time_load();
  std::vector<double> load, resume, open_only, verified, sha, replay, verify, cold_load,
      cold_resume;
  double resident = 0;
  for (int r = 0; r < rounds; ++r) {  // interleaved
    load.push_back(time_load());
    resume.push_back(time_resume(true));
    open_only.push_back(time_resume(false));
    verified.push_back(time_verified());
    sha.push_back(time_sha());
    replay.push_back(time_replay());
    verify.push_back(time_verify());
    resident = std::max(resident, evict_all());
    cold_load.push_back(time_load());
    evict_all();
    cold_resume.push_back(time_resume(true));
  }

  const double mb = static_cast<double>(file_bytes) / 1e6;
  auto line = [&](const char* name, const std::vector<double>& v, double base) {
    const Spread s = spread(v);
    fmt::print("   {:<50} {:8.1f} ms [{:7.1f}..{:7.1f}]  {:6.0f} MB/s  {:5.2f}\n", name,
               s.med * 1e3, s.lo * 1e3, s.hi * 1e3, mb / s.med, s.med / base);
  };
  fmt::print(
      "(median of {} interleaved rounds, min..max in brackets; MB = 1e6 bytes; last "
      "column: / load)\n",
      rounds);
  fmt::print("warm (page cache):\n");
  const double base = spread(load).med;
  line("load: read_checkpoint", load, base);
  line("resume: open + replay + reconcile + SHA-256 + load", resume, base);
  line("  part: open + replay + reconcile (resume=false)", open_only, base);
  line("  part: SHA-256 + load in one read (read_checkpoint_verified)", verified, base);
  line("  part: SHA-256 of the file alone (Sha256::file_hex)", sha, base);
  line("  part: open read-only + replay into the fold", replay, base);
  line("  not in a resume: open + full hash-chain verify", verify, base);
  fmt::print("   ratio resume / load: {:.2f} median, {:.2f} best  (goal <= 1.2: {})\n\n",
             spread(resume).med / base, spread(resume).lo / spread(load).lo,
             spread(resume).med / base <= 1.2 ? "met" : "NOT met");
  fmt::print(
      "cold (checkpoint and ledger evicted with POSIX_FADV_DONTNEED; at most {:.0f}% of the "
      "checkpoint stayed resident):\n",
      resident * 100);
  const double cold_base = spread(cold_load).med;
  line("load: read_checkpoint", cold_load, cold_base);
  line("resume: open + replay + reconcile + SHA-256 + load", cold_resume, cold_base);
  fmt::print("   ratio resume / load: {:.2f} median  (goal <= 1.2: {})\n",
             spread(cold_resume).med / cold_base,
             spread(cold_resume).med / cold_base <= 1.2 ? "met" : "NOT met");
  if (logs.warnings + logs.errors > 0) {
    fmt::print("\nhook logged {} warning(s), {} error(s); first: {}\n", logs.warnings, logs.errors,
               logs.first);
  }

  FigureLog figures("resume_bench");
  const std::string what = fmt::format("{} events, {:.0f} MiB checkpoint", ledger_events,
                                       static_cast<double>(file_bytes) / 1048576.0);
  auto ms = [](const std::vector<double>& v) { return spread(v).med * 1e3; };
  const double r = spread(resume).med / base;
  figures.add(fmt::format("resume: warm resume ({}) ÷ load (read_checkpoint)", what), r, "≤ 1.2",
              r <= 1.2, fmt::format("{:.1f} ms / {:.1f} ms", ms(resume), base * 1e3));
  figures.add("resume: part, open + replay + reconcile ÷ load", ms(open_only) / (base * 1e3),
              fmt::format("{:.1f} ms", ms(open_only)));
  figures.add("resume: part, SHA-256 + load in one read (read_checkpoint_verified) ÷ load",
              ms(verified) / (base * 1e3), fmt::format("{:.1f} ms", ms(verified)));
  figures.add("resume: part, SHA-256 of the file alone ÷ load", ms(sha) / (base * 1e3),
              fmt::format("{:.1f} ms", ms(sha)));
  const double rc = spread(cold_resume).med / cold_base;
  figures.add("resume: cold resume ÷ cold load (page cache evicted)", rc, "≤ 1.2", rc <= 1.2,
              fmt::format("{:.1f} ms / {:.1f} ms", ms(cold_resume), cold_base * 1e3));
  figures.write(json);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path parent = fs::temp_directory_path();
  int64_t events = 100'000;
  int64_t mib = 256;
  int rounds = 5;
  bool keep = false;
  std::string json;
  for (int i = 1; i < argc; i += 2) {
    std::string a = argv[i];
    if (i + 1 >= argc) {
      fmt::print(stderr, "option {} needs a value\n", a);
      return 2;
    }
    if (a == "--dir")
      parent = argv[i + 1];
    else if (a == "--events")
      events = std::max<int64_t>(100, std::stoll(argv[i + 1]));
    else if (a == "--mib")
      mib = std::max<int64_t>(1, std::stoll(argv[i + 1]));
    else if (a == "--rounds")
      rounds = std::max(1, std::stoi(argv[i + 1]));
    else if (a == "--keep")
      keep = std::stoi(argv[i + 1]) != 0;
    else if (a == "--json")
      json = argv[i + 1];
    else {
      fmt::print(stderr,
                 "unknown option {}\nusage: resume_bench [--dir DIR] [--events N] [--mib M] "
                 "[--rounds R] [--keep 1] [--json FILE]\n",
                 a);
      return 2;
    }
  }
  const fs::path dir = fs::absolute(parent) / fmt::format("resume_bench_{}", ::getpid());
  fs::create_directories(dir);
  fmt::print("resume_bench: dir {}, torch threads {}\n", dir.string(), torch::get_num_threads());
  int rc = 1;
  try {
    rc = run(dir, events, mib, rounds, json);
  } catch (const std::exception& e) {
    fmt::print(stderr, "resume_bench: {}\n", e.what());
  }
  std::error_code ec;
  if (!keep) fs::remove_all(dir, ec);
  return rc;
}
