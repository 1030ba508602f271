// dist_bench: saves of a job of 1, 2 and 4 ranks on loopback Gloo (docs/distributed.md), each
// figure a ratio to one process saving the same bytes in the same run.
//
//   dist_bench [--sizes 256,1024] [--ranks 2,4] [--saves 4] [--dir DIR] [--json FILE]
//
// The driver runs, per size: the baseline (this binary alone, `--worker`, no process group), then
// for each rank count and layout ("main", "spread") the same worker under torchrun. A worker holds
// a model-like state dict of the size (bench_util.h), saves it `--saves` times through the hook
// (interval 1, max_keep_ckpts 1; the ranks meet at a barrier on the job's group before each save)
// and writes, per save: the training thread's time in the hook call (the stall: building the
// content and staging this rank's share), the time until the save was committed (the call to the
// end of wait_idle(); on rank 0 that is the commit, on the others the outcome received) and, on
// rank 0, the coordination cost (CheckpointHook::exchange_timings: the last rank's arrival at the
// exchange to the end of the commit transaction, no writes). The first save is a warm-up (fresh
// staging buffers): the medians are over the others.
// Figures: spread's per-rank stall ÷ the baseline's stall (goal <= 1/N + 0.1; the slowest rank);
// time until commit ÷ the baseline's (goal <= 1.1, one shared disk; main and spread); the
// coordination cost p50 (goal < 5 ms). Beside them, the machine's bound on the stall figure: N
// threads each copying 1/N of the bytes at once ÷ the copy one process's stager makes (min(cores,
// 4) threads, stager.h), best of 5. The staging copy is bound by the host's cores and memory
// bandwidth, which ranks on one host share: when every rank stages its share at the same moment
// (data parallelism keeps them in step), the stall falls to 1/N only where each rank has cores and
// bandwidth of its own (another host, socket or GPU).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bench/bench_util.h"
#include "bench/figures.h"
#include "ckptledger/distributed.h"

namespace fs = std::filesystem;
using namespace ckptledger;         // NOLINT
using namespace ckptledger::bench;  // NOLINT

namespace {

struct WorkerOptions {
  std::string dir;
  int64_t mib = 256;
  int64_t saves = 4;
  std::string layout = "main";
  std::string out;  // JSON results of this rank: <out>.<rank>.json
};

int worker(const WorkerOptions& o) {
  torch::set_num_threads(1);
  torch::manual_seed(7);  // the same state on every rank (replicated, as after DDP's broadcast)
  int64_t bytes = 0, tensors = 0;
  c10::impl::GenericDict sd = model_like_state_dict(o.mib, &bytes, &tensors);
  BenchRunner runner(o.dir, sd);
  HookConfig c;
  c.interval = 1;
  c.by_epoch = false;
  c.max_keep_ckpts = 1;
  c.save_last = false;
  c.save_optimizer = false;
  c.save_param_scheduler = false;
  c.save_layout = o.layout;
  Logs logs;
  CheckpointHook hook(c, logs.sink());
  std::optional<JobGroup> job = join_from_env();
  if (job) hook.join(job->group, job->store);
  hook.before_train(runner);
  nlohmann::json r = {{"rank", hook.rank()}, {"world", hook.world_size()}, {"bytes", bytes}};
  std::vector<double> stall, commit;
  for (int64_t i = 0; i < o.saves; ++i) {
    if (job) {  // every rank starts the save together
      std::vector<at::Tensor> one{torch::ones({1})};
      allreduce_sum(*job, one);
    }
    runner.set_counters(0, i);
    const auto t0 = Clock::now();
    hook.after_train_iter(runner, i);
    stall.push_back(seconds_since(t0));
    hook.wait_idle();
    commit.push_back(seconds_since(t0));
  }
  hook.after_train(runner);
  hook.after_run(runner);
  r["stall_s"] = stall;
  r["commit_s"] = commit;
  r["exchange_us"] = hook.exchange_timings();
  r["warnings"] = logs.warnings;
  r["errors"] = logs.errors;
  std::ofstream(o.out + "." + std::to_string(hook.rank()) + ".json") << r.dump() << "\n";
  return 0;
}

// N threads copying `bytes` / N each, at once, ÷ min(cores, 4) threads copying `bytes` (best of 5).
double concurrent_copy_ratio(int64_t bytes, int n) {
  std::vector<char> src(static_cast<size_t>(bytes), 1), dst(static_cast<size_t>(bytes), 2);
  auto timed = [&](int threads) {
    double best = 1e9;
    for (int round = 0; round < 5; ++round) {
      const size_t share = src.size() / static_cast<size_t>(threads);
      const auto t0 = Clock::now();
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back(
            [&, t] { std::memcpy(dst.data() + share * t, src.data() + share * t, share); });
      }
      for (std::thread& th : pool) th.join();
      best = std::min(best, seconds_since(t0));
    }
    return best;
  };
  const int cores =
      static_cast<int>(std::max(1u, std::min(4u, std::thread::hardware_concurrency())));
  const double one = timed(cores);
  return timed(n) / one;
}

// Runs `argv`, returns its exit status.
int run(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execv(args[0], args.data());
    std::perror("exec");
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

double median_of(const nlohmann::json& v, size_t skip) {
  std::vector<double> x;
  for (size_t i = skip; i < v.size(); ++i) x.push_back(v[i].get<double>());
  if (x.empty()) return 0;
  return median(x);
}

struct Result {
  double stall = 0;        // the slowest rank's median stall
  double commit = 0;       // rank 0's median time until commit
  double exchange_ms = 0;  // rank 0's median coordination cost
};

Result read_results(const std::string& out, int world) {
  Result res;
  for (int r = 0; r < world; ++r) {
    std::ifstream in(out + "." + std::to_string(r) + ".json");
    if (!in) throw std::runtime_error("no results from rank " + std::to_string(r) + ": " + out);
    nlohmann::json j = nlohmann::json::parse(in);
    if (j["errors"].get<int>() > 0)
      throw std::runtime_error("rank " + std::to_string(r) + " logged errors");
    res.stall = std::max(res.stall, median_of(j["stall_s"], 1));
    if (r == 0) {
      res.commit = median_of(j["commit_s"], 1);
      std::vector<double> ex;
      for (size_t i = 1; i < j["exchange_us"].size(); ++i)
        ex.push_back(j["exchange_us"][i].get<double>() / 1000.0);
      res.exchange_ms = ex.empty() ? 0 : median(ex);
    }
  }
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dist_bench: multi-rank saves vs one process, same bytes, same run"};
  bool is_worker = false;
  WorkerOptions w;
  std::string sizes = "256,1024", ranks = "2,4", json_out, dir = "/tmp/ckptledger-dist-bench";
  int64_t saves = 4;
  app.add_flag("--worker", is_worker)->group("");
  app.add_option("--mib", w.mib)->group("");
  app.add_option("--layout", w.layout)->group("");
  app.add_option("--out", w.out)->group("");
  app.add_option("--work-dir", w.dir)->group("");
  app.add_option("--sizes", sizes, "state sizes in MiB, comma-separated (default 256,1024)");
  app.add_option("--ranks", ranks, "rank counts, comma-separated (default 2,4)");
  app.add_option("--saves", saves, "saves per configuration, the first a warm-up (default 4)");
  app.add_option("--dir", dir, "scratch directory (default /tmp/ckptledger-dist-bench)");
  app.add_option("--json", json_out, "write the figures here (bench/figures.h)");
  CLI11_PARSE(app, argc, argv);
  if (is_worker) {
    w.saves = saves;
    return worker(w);
  }
  auto split = [](const std::string& s) {
    std::vector<int64_t> v;
    std::stringstream ss(s);
    for (std::string x; std::getline(ss, x, ',');) v.push_back(std::stoll(x));
    return v;
  };
  const std::string self = fs::canonical("/proc/self/exe").string();
  FigureLog log("dist_bench");
  int port = 29600;
  for (int64_t mib : split(sizes)) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    const std::string base_out = dir + "/alone";
    if (run({self, "--worker", "--mib", std::to_string(mib), "--saves", std::to_string(saves),
             "--work-dir", dir + "/alone-w", "--out", base_out}) != 0) {
      std::cerr << "dist_bench: the baseline failed\n";
      return 1;
    }
    const Result base = read_results(base_out, 1);
    fs::remove_all(dir + "/alone-w");
    fmt::print("{} MiB, one process: stall {:.1f} ms, until commit {:.1f} ms\n", mib,
               base.stall * 1e3, base.commit * 1e3);
    for (int64_t n : split(ranks)) {
      for (const std::string layout : {"main", "spread"}) {
        const std::string tag = fmt::format("{}-{}r-{}", layout, n, mib);
        const std::string out = dir + "/" + tag;
        const int rc = run({"/usr/bin/python3",
                            "-m",
                            "torch.distributed.run",
                            "--nproc_per_node",
                            std::to_string(n),
                            "--master_port",
                            std::to_string(port++),
                            "--redirects",
                            "2",
                            "--tee",
                            "2",
                            "--log_dir",
                            dir + "/logs-" + tag,
                            "--no_python",
                            self,
                            "--worker",
                            "--mib",
                            std::to_string(mib),
                            "--saves",
                            std::to_string(saves),
                            "--layout",
                            layout,
                            "--work-dir",
                            dir + "/w-" + tag,
                            "--out",
                            out});
        if (rc != 0) {
          std::cerr << "dist_bench: torchrun failed for " << tag << " (logs in " << dir << ")\n";
          return 1;
        }
        const Result r = read_results(out, static_cast<int>(n));
        fs::remove_all(dir + "/w-" + tag);
        const double stall_ratio = r.stall / base.stall, commit_ratio = r.commit / base.commit;
        fmt::print(
            "  {} ranks {:6}: stall {:.1f} ms ({:.2f}x), until commit {:.1f} ms ({:.2f}x), "
            "coordination p50 {:.2f} ms\n",
            n, layout, r.stall * 1e3, stall_ratio, r.commit * 1e3, commit_ratio, r.exchange_ms);
        const double stall_goal = 1.0 / static_cast<double>(n) + 0.1;
        const std::string what = fmt::format("{} ranks, {}, {} MiB", n, layout, mib);
        if (layout == "spread") {
          const double bound = concurrent_copy_ratio(mib << 20, static_cast<int>(n));
          fmt::print(
              "  machine bound: {} threads copying 1/{} each at once ÷ one process's copy: "
              "{:.2f}\n",
              n, n, bound);
          log.add(fmt::format("machine bound: {} concurrent copies of 1/{} ÷ one process's, {} MiB",
                              n, n, mib),
                  bound, "memcpy, best of 5");
          log.add("per-rank stall ÷ one process, " + what, stall_ratio,
                  fmt::format("<= {:.2f}", stall_goal), stall_ratio <= stall_goal,
                  fmt::format("{:.1f} ms vs {:.1f} ms", r.stall * 1e3, base.stall * 1e3));
        } else {
          log.add("per-rank stall ÷ one process, " + what, stall_ratio,
                  fmt::format("{:.1f} ms vs {:.1f} ms", r.stall * 1e3, base.stall * 1e3));
        }
        log.add("time until commit ÷ one process, " + what, commit_ratio, "<= 1.1",
                commit_ratio <= 1.1,
                fmt::format("{:.1f} ms vs {:.1f} ms", r.commit * 1e3, base.commit * 1e3));
        log.add("coordination per save p50 (ms), " + what, r.exchange_ms, "< 5 ms",
                r.exchange_ms < 5.0, fmt::format("{:.2f} ms", r.exchange_ms));
      }
    }
  }
  fs::remove_all(dir);
  log.write(json_out);
  return 0;
}
