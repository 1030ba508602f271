#include "tools/train/demo_ranks.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "ckptledger/error.h"
#include "ckptledger/ledger.h"
#include "hook/checkpoint_format.h"
#include "policy/hook_events.h"
#include "policy/parts.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kIters = 200;
constexpr int64_t kInterval = 20;
constexpr int64_t kIterDelayMs = 10;

void say(const std::string& s) {
  std::fputs(s.c_str(), stdout);
  std::fflush(stdout);
}

// Runs `argv` with its stdout read line by line through `on_line` (which may act on the job) and
// its stderr appended to `log` (torchrun's and its ranks': 1.13 cannot leave them out of its own
// stderr under Python 3.11); returns the exit status.
int run_reading(const std::vector<std::string>& argv, const std::string& log,
                const std::function<void(const std::string&)>& on_line) {
  int fds[2];
  if (::pipe(fds) != 0) throw_error(ErrorCode::kIOError, "demo: pipe failed");
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // the job dies with the demo
    ::dup2(fds[1], STDOUT_FILENO);
    const int err = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (err >= 0) ::dup2(err, STDERR_FILENO);
    ::close(fds[0]);
    ::close(fds[1]);
    ::execv(args[0], args.data());
    std::perror("demo: exec");
    ::_exit(127);
  }
  ::close(fds[1]);
  FILE* in = ::fdopen(fds[0], "r");
  char* line = nullptr;
  size_t cap = 0;
  ssize_t n;
  while ((n = ::getline(&line, &cap, in)) > 0) on_line(std::string(line, static_cast<size_t>(n)));
  std::free(line);
  std::fclose(in);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// The pid of rank `rank` of the train job in `work_dir` (its environment's RANK), or 0.
pid_t rank_pid(const std::string& exe, const std::string& work_dir, int rank) {
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream cmd(entry.path() / "cmdline", std::ios::binary);
    std::string args((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
    if (args.compare(0, exe.size(), exe) != 0 || args.find(work_dir) == std::string::npos) continue;
    std::ifstream env(entry.path() / "environ", std::ios::binary);
    std::string vars((std::istreambuf_iterator<char>(env)), std::istreambuf_iterator<char>());
    const std::string wanted = std::string("\0RANK=", 6) + std::to_string(rank) + '\0';
    if ((std::string(1, '\0') + vars).find(wanted) != std::string::npos) {
      return static_cast<pid_t>(std::stol(name));
    }
  }
  return 0;
}

std::vector<std::string> torchrun(const DemoRanksOptions& o, const std::string& run_dir,
                                  const std::string& config, int port) {
  return {"/usr/bin/python3",
          "-m",
          "torch.distributed.run",
          "--nproc_per_node",
          std::to_string(o.ranks),
          "--max_restarts",
          "2",
          "--monitor_interval",
          "0.5",
          "--master_port",
          std::to_string(port),
          "--redirects",
          "2",
          "--tee",
          "2",
          "--log_dir",
          run_dir + ".logs",
          "--no_python",
          o.self_exe,
          "train",
          "--work-dir",
          run_dir,
          "--config",
          config,
          "--iters",
          std::to_string(kIters),
          "--iter-delay-ms",
          std::to_string(kIterDelayMs),
          "--progress"};
}

std::vector<Event> events_of(const std::string& work_dir) {
  LedgerOptions lo;
  lo.mode = OpenMode::kReadOnly;
  lo.one_look = true;
  std::unique_ptr<Ledger> ledger = Ledger::open(resolve_ledger_path(work_dir), lo);
  std::vector<Event> out;
  ledger->for_each([&](const Event& e) {
    out.push_back(e);
    return true;
  });
  return out;
}

// The checkpoint names on disk (the parts' names carry their run's number: left out).
std::set<std::string> checkpoint_names(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() == ".pth" && !is_part_name(name)) out.insert(name);
  }
  return out;
}

}  // namespace

int demo_ranks(const DemoRanksOptions& o) {
  if (o.ranks < 2 || o.ranks > 8) {
    throw_error(ErrorCode::kInvalidArgument,
                fmt::format("demo: --ranks must be between 1 and 8, got {}", o.ranks));
  }
  std::string dir = o.work_dir.value_or("");
  if (dir.empty()) {
    char stamp[32];
    const std::time_t t = std::time(nullptr);
    std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", std::localtime(&t));
    dir = std::string("ckptledger-demo-ranks-") + stamp;
  }
  dir = fs::absolute(dir).lexically_normal().string();
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_empty(dir, ec)) {
    throw_error(ErrorCode::kInvalidArgument,
                fmt::format("demo: {} is not empty: give a new or empty --work-dir", dir));
  }
  fs::create_directories(dir);
  const std::string config = dir + "/hook.json";
  const nlohmann::json hook = {{"interval", kInterval},
                               {"by_epoch", false},
                               {"max_keep_ckpts", 3},
                               {"save_best", "acc"},
                               {"save_layout", "spread"}};
  std::ofstream(config) << hook.dump() << "\n";
  std::mt19937 rng(std::random_device{}());
  const int victim = static_cast<int>(rng() % static_cast<unsigned>(o.ranks));
  const int64_t kill_iter = kInterval * (3 + static_cast<int64_t>(rng() % 5));  // 60 .. 140
  const std::string killed = dir + "/killed", reference = dir + "/reference";
  const int port = 29500 + static_cast<int>(rng() % 2000);
  say(fmt::format("ckptledger demo, {} ranks under torchrun: {}\n  hook: {}\n", o.ranks, dir,
                  hook.dump()));
  say(
      fmt::format("  command: /usr/bin/python3 -m torch.distributed.run --nproc_per_node {} "
                  "--max_restarts 2 --redirects 2 --tee 2 --log_dir DIR --no_python "
                  "ckptledger-train train --work-dir DIR --config hook.json --iters {}\n",
                  o.ranks, kIters));

  // 1. The run that loses a rank in the middle of a save.
  bool fired = o.no_kill;
  pid_t victim_pid = 0;
  const auto t0 = std::chrono::steady_clock::now();
  say(fmt::format(
      "1. {} iterations, rank {} SIGKILLed as it reaches the save at iteration {} ...\n", kIters,
      victim, kill_iter));
  int rc =
      run_reading(torchrun(o, killed, config, port), killed + ".log", [&](const std::string& line) {
        if (fired || line != fmt::format("iter {}\n", kill_iter)) return;
        victim_pid = rank_pid(o.self_exe, killed, victim);
        if (victim_pid > 0 && ::kill(victim_pid, SIGKILL) == 0) fired = true;
      });
  if (rc != 0) {
    throw_error(ErrorCode::kIOError, fmt::format("demo: the killed run's torchrun exited with {} "
                                                 "(its output: {}.log)",
                                                 rc, killed));
  }
  const double killed_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  say(fmt::format("   done in {:.1f} s (rank {} was pid {}; torchrun restarted the group)\n",
                  killed_s, victim, victim_pid));

  // 2. The reference: the same job, never killed.
  say("2. the same job, uninterrupted ...\n");
  rc = run_reading(torchrun(o, reference, config, port + 1), reference + ".log",
                   [](const std::string&) {});
  if (rc != 0) {
    throw_error(ErrorCode::kIOError,
                fmt::format("demo: the reference run's torchrun exited with {}", rc));
  }

  // 3. What the ledger recorded around the kill.
  say("3. the killed run's ledger around the kill:\n");
  const std::vector<Event> events = events_of(killed);
  for (size_t i = 0; i < events.size(); ++i) {
    const Event& e = events[i];
    std::string what;
    if (e.kind == EventKind::kRunStarted && e.seq > 1) {
      what = "run_started (torchrun's restart)";
    } else if (e.kind == EventKind::kResumed) {
      what = "resumed from " + fs::path(e.path).filename().string();
    } else if (e.kind == EventKind::kRecovered) {
      const auto p = from_detail<RecoveredPayload>(e.detail, e.seq);
      what = fmt::format("recovered: {} {} ({})", p.finding, fs::path(e.path).filename().string(),
                         p.action);
    } else if (e.kind == EventKind::kSaveFailed) {
      const auto p = from_detail<SavePayload>(e.detail, e.seq);
      what = fmt::format("save_failed {}: {}", fs::path(e.path).filename().string(), p.error);
    } else if (e.kind == EventKind::kSaveBegun) {
      bool done = false;
      for (size_t j = i + 1; j < events.size() && !done; ++j) {
        done = (events[j].kind == EventKind::kSaveCommitted ||
                events[j].kind == EventKind::kSaveFailed) &&
               events[j].path == e.path;
        if (events[j].kind == EventKind::kRunStarted) break;
      }
      if (!done) {
        what = fmt::format("save_begun {} at step {}: never committed (the kill)",
                           fs::path(e.path).filename().string(), e.step.value_or(0));
      }
    }
    if (!what.empty()) say(fmt::format("   seq {:>4}  {}\n", e.seq, what));
  }

  // 4. The comparison.
  say("4. killed-and-resumed vs uninterrupted:\n");
  bool same = true;
  auto exported = [&](const std::string& run) {
    const std::string out = run + ".final.pth";
    const int export_rc = run_reading({o.self_exe, "export", run, "-o", out}, run + ".log",
                                      [](const std::string&) {});
    if (export_rc != 0) {
      throw_error(ErrorCode::kIOError,
                  fmt::format("demo: export of {} failed ({})", run, export_rc));
    }
    return read_checkpoint(out).toGenericDict();
  };
  const c10::impl::GenericDict a = exported(killed), b = exported(reference);
  const auto sa = a.at("state_dict").toGenericDict(), sb = b.at("state_dict").toGenericDict();
  size_t tensors = 0, equal = 0;
  for (const auto& kv : sa) {
    ++tensors;
    if (sb.contains(kv.key()) && torch::equal(kv.value().toTensor(), sb.at(kv.key()).toTensor())) {
      ++equal;
    }
  }
  same = same && tensors == equal && sa.size() == sb.size();
  say(fmt::format("   final weights: {}/{} tensors bitwise equal\n", equal, tensors));
  auto hub = [](const c10::impl::GenericDict& d) {
    const auto info = d.at("message_hub").toGenericDict().at("runtime_info").toGenericDict();
    return info.contains("best_score") ? info.at("best_score").toDouble() : -1.0;
  };
  const bool best_same = hub(a) == hub(b);
  same = same && best_same;
  say(fmt::format("   best acc: {} vs {}: {}\n", hub(a), hub(b),
                  best_same ? "equal" : "DIFFERENT"));
  const bool names_same = checkpoint_names(killed) == checkpoint_names(reference);
  same = same && names_same;
  std::string names;
  for (const std::string& n : checkpoint_names(killed)) names += (names.empty() ? "" : ", ") + n;
  say(fmt::format("   checkpoints: {} ({})\n", names, names_same ? "the same" : "DIFFERENT"));
  LedgerOptions lo;
  lo.mode = OpenMode::kReadOnly;
  lo.one_look = true;
  const VerifyReport v = Ledger::open(resolve_ledger_path(killed), lo)->verify();
  same = same && v.ok();
  say(fmt::format("   ledger hash chain: {} ({} events)\n", v.ok() ? "intact" : v.problem,
                  v.events_checked));
  say(same ? "the killed and resumed job matches the uninterrupted one\n"
           : "MISMATCH between the killed and the uninterrupted job\n");
  return same ? 0 : 1;
}

}  // namespace ckptledger
