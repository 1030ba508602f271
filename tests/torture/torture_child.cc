// torture_child: the training job tests/torture_test.py kills with SIGKILL and restarts
// (docs/crash-safety.md, "The torture test").
//
//   torture_child SCENARIO.json --root DIR [--slow-ms N] [--ballast-mib N]
//                 [--crash-at K | --count-ops FILE]
//
// Runs run 0 of the scenario's plan (plan_runs) in DIR with SimRunner, the reference loops and the
// real CheckpointHook, with auto-resume always on (an empty or missing ledger starts fresh) and the
// async writer on (the scenario's `sync` is overridden to false). Exits 0 once training, publishing
// and after_run completed; 1 with a message on stderr on any error; 2 on a usage error. The hook's
// log lines go to stderr; stdout gets one line, "torture_child: ready", once the libraries are
// loaded and the hook and runner are built, just before the loop (and its resume) starts.
//
// Deterministic: one torch thread, seed 0, the batch of iteration I derived from I (SimRunner), so
// a job resumed from any committed checkpoint continues bitwise-identically. meta.time is pinned to
// a constant (kPinnedTime): the published files' names are the SHA-256 of their bytes, meta
// included, so an interrupted job and the uninterrupted one publish under the same names only when
// the wall clock is out of the bytes. (The runner's meta_extra supplies "time" first; the hook's
// own insert of the key does not replace it.)
//
// --ballast-mib N adds a constant N MiB tensor (state_dict "ballast") to every checkpoint, so that
// files exceed write_durably's 1 MiB block and kills land in its hashing/O_DIRECT writing threads.
//
// --crash-at K SIGKILLs the process just before its K-th durable operation, --count-ops FILE
// writes them all, one "N OP PATH" line each, at a normal exit (tests/torture/crash_points.h;
// tests/crash_steps_test.py enumerates them).
//
// --slow-ms N sleeps N ms after each train step, so that a kill at a random moment lands as often
// in the background writer's work (temp write, rename, prune, ledger transaction) as in the
// training thread's.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "ckptledger/checkpoint_hook.h"
#include "ckptledger/hook_config.h"
#include "ckptledger/loops.h"
#include "tools/train/scenario.h"
#include "tests/torture/crash_points.h"
#include "tools/train/sim_runner.h"

namespace {

namespace fs = std::filesystem;
using ckptledger::ordered_json;

constexpr const char* kPinnedTime = "20260101_000000";

class TortureRunner : public ckptledger::SimRunner {
 public:
  TortureRunner(const ckptledger::SimRunnerOptions& o, int64_t ballast_mib)
      : SimRunner(o),
        ballast_(ballast_mib > 0 ? torch::arange(ballast_mib << 18, torch::kFloat)
                                 : torch::Tensor()) {}
  c10::impl::GenericDict checkpoint_state(bool with_optimizer, bool with_schedulers) override {
    c10::impl::GenericDict state = SimRunner::checkpoint_state(with_optimizer, with_schedulers);
    if (ballast_.defined()) state.at("state_dict").toGenericDict().insert("ballast", ballast_);
    return state;
  }
  c10::impl::GenericDict meta_extra() const override {
    c10::impl::GenericDict meta = SimRunner::meta_extra();
    meta.insert("time", std::string(kPinnedTime));
    return meta;
  }

 private:
  torch::Tensor ballast_;
};

const ckptledger::ValStep* find_val(const std::vector<ckptledger::ValStep>& val, int64_t step) {
  for (const ckptledger::ValStep& v : val) {
    if (v.step == step) return &v;
  }
  return nullptr;
}

ckptledger::Metrics to_metrics(const std::vector<ckptledger::Metric>& in) {
  ckptledger::Metrics out;
  for (const ckptledger::Metric& m : in) out.emplace_back(m.key, m.value);
  return out;
}

int usage(const char* msg) {
  std::fprintf(stderr,
               "torture_child: %s\nusage: torture_child SCENARIO.json --root DIR [--slow-ms N] "
               "[--ballast-mib N] [--crash-at K | --count-ops FILE]\n",
               msg);
  return 2;
}

int run(const std::string& scenario_path, const std::string& root_arg, int64_t slow_ms,
        int64_t ballast_mib, ckptledger::FileSystem* files) {
  fs::create_directories(root_arg);
  const std::string root = fs::canonical(root_arg).string();
  const ckptledger::Scenario scenario = ckptledger::load_scenario_file(scenario_path);
  const std::vector<ckptledger::RunPlan> plans = ckptledger::plan_runs(scenario, root);
  const ckptledger::RunPlan& plan = plans.at(0);

  torch::set_num_threads(1);
  ckptledger::HookConfig config =
      ckptledger::HookConfig::from_json(nlohmann::json::parse(plan.hook.dump()));
  config.sync = false;  // the async writer: kills land in background writes too
  ckptledger::CheckpointHook hook(config, [](ckptledger::LogLevel level, const std::string& msg) {
    std::fprintf(stderr, "[%s] %s\n", ckptledger::log_level_name(level), msg.c_str());
  }, files);

  ckptledger::SimRunnerOptions ro;
  ro.work_dir = plan.work_dir;
  ro.param_scheduler = plan.param_scheduler;
  ro.seed = 0;
  ro.experiment_name = scenario.name.empty() ? "torture" : scenario.name;
  ro.cfg = plan.hook.dump();
  TortureRunner runner(ro, ballast_mib);

  ckptledger::LoopOptions lo;
  lo.resume = true;  // auto-resume, always: an empty ledger starts fresh
  lo.val_due = [&plan](int64_t step) { return find_val(plan.val, step) != nullptr; };
  lo.validate = [&plan](int64_t step) { return to_metrics(find_val(plan.val, step)->metrics); };
  ckptledger::TrainStep step = [&runner, slow_ms](int64_t) {
    runner.train_step();
    if (slow_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(slow_ms));
  };

  // The harness times its kills from this line: what follows is resume (reconciliation, verified
  // load), training, saves, prunes, publishing and the ledger's transactions.
  std::fputs("torture_child: ready\n", stdout);
  std::fflush(stdout);
  if (plan.loop == ckptledger::LoopKind::kEpoch) {
    ckptledger::EpochLoop loop(runner, hook, plan.loop_max_epochs(), plan.iters_per_epoch, step,
                               lo);
    loop.run();
  } else {
    ckptledger::IterLoop loop(runner, hook, plan.loop_max_iters(), plan.iters_per_epoch, step, lo);
    loop.run();
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string scenario_path, root;
  int64_t slow_ms = 0, ballast_mib = 0, crash_at = 0;
  std::string count_ops;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--root" && i + 1 < argc) {
      root = argv[++i];
    } else if (a == "--slow-ms" && i + 1 < argc) {
      char* end = nullptr;
      slow_ms = std::strtoll(argv[++i], &end, 10);
      if (end == nullptr || *end != '\0' || slow_ms < 0) return usage("--slow-ms takes N >= 0");
    } else if (a == "--ballast-mib" && i + 1 < argc) {
      char* end = nullptr;
      ballast_mib = std::strtoll(argv[++i], &end, 10);
      if (end == nullptr || *end != '\0' || ballast_mib < 0 || ballast_mib > 4096) {
        return usage("--ballast-mib takes N in 0..4096");
      }
    } else if (a == "--crash-at" && i + 1 < argc) {
      char* end = nullptr;
      crash_at = std::strtoll(argv[++i], &end, 10);
      if (end == nullptr || *end != '\0' || crash_at < 1) return usage("--crash-at takes K >= 1");
    } else if (a == "--count-ops" && i + 1 < argc) {
      count_ops = argv[++i];
    } else if (!a.empty() && a[0] != '-' && scenario_path.empty()) {
      scenario_path = a;
    } else {
      return usage(("unexpected argument " + a).c_str());
    }
  }
  if (scenario_path.empty() || root.empty()) return usage("SCENARIO.json and --root are required");
  crash_points::CrashPointFileSystem counted;
  ckptledger::FileSystem* files = nullptr;
  if (crash_at > 0 || !count_ops.empty()) {
    crash_points::arm(crash_at);
    if (!count_ops.empty()) crash_points::record_to(count_ops);
    crash_points::install_sqlite_crash_points();
    files = &counted;
  }
  try {
    const int rc = run(scenario_path, root, slow_ms, ballast_mib, files);
    crash_points::write_log();
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "torture_child: error: %s\n", e.what());
    return 1;
  }
}
