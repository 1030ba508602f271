// `ckptledger`: the command-line tool. Each verb opens ledgers read-only unless it says otherwise.
//
// Exit codes: 0 ok; 1 problems found (verify); 2 usage error; 3 ledger not found;
// 4 corrupt or foreign ledger; 5 ledger of a newer version; 6 I/O error; 7 busy.
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "catalog/simulate.h"
#include "ledger/ledger.h"

namespace {

int exit_code_for(const ckptledger::Error& e) {
  switch (e.code()) {
    case ckptledger::ErrorCode::kInvalidArgument:
      return 4;
    case ckptledger::ErrorCode::kNotFound:
      return 3;
    case ckptledger::ErrorCode::kCorruption:
      return 4;
    case ckptledger::ErrorCode::kVersion:
      return 5;
    case ckptledger::ErrorCode::kIOError:
      return 6;
    case ckptledger::ErrorCode::kBusy:
      return 7;
  }
  return 6;
}

int run_verify(const std::string& target) {
  ckptledger::LedgerOptions ro;
  ro.mode = ckptledger::OpenMode::kReadOnly;
  auto ledger = ckptledger::Ledger::open(ckptledger::resolve_ledger_path(target), ro);
  ckptledger::VerifyReport r = ledger->verify();
  if (r.ok()) {
    fmt::print("{}: hash chain intact ({} events)\n", ledger->path(), r.events_checked);
    return 0;
  }
  fmt::print("{}: hash chain BROKEN: {}\n", ledger->path(), r.problem);
  return 1;
}

// The running binary, for `simulate` to start its runs with.
std::string self_exe(const char* argv0) {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return argv0;
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ckptledger: MMEngine's CheckpointHook on an append-only SQLite ledger"};
  app.set_version_flag("--version", std::string("ckptledger ") + CKPTLEDGER_VERSION);
  app.require_subcommand(0, 1);

  std::string verify_target;
  auto* verify = app.add_subcommand("verify", "Recompute the ledger's hash chain");
  verify->add_option("ledger", verify_target, "ledger file or work_dir")->required();

  std::string sim_scenario, sim_root, sim_output;
  auto* simulate = app.add_subcommand(
      "simulate", "Run a scenario through the real hook (one process per run) and write its trace");
  simulate->add_option("scenario", sim_scenario, "SCENARIO.json, or a case file")->required();
  simulate->add_option("--root", sim_root, "scenario root: created if missing, must be empty")
      ->required();
  simulate->add_option("-o,--output", sim_output, "trace file (default: stdout)");

  // Hidden: one run of a scenario, started by `simulate` in the scenario root.
  std::string run_scenario, run_root, run_out;
  int run_index = 0;
  auto* simulate_run = app.add_subcommand("simulate-run", "");
  simulate_run->group("");
  simulate_run->add_option("scenario", run_scenario)->required();
  simulate_run->add_option("--root", run_root)->required();
  simulate_run->add_option("--run", run_index)->required();
  simulate_run->add_option("--out", run_out)->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  try {
    if (*verify) return run_verify(verify_target);
    if (*simulate) {
      ckptledger::SimulateOptions o;
      o.scenario_path = sim_scenario;
      o.root = sim_root;
      if (!sim_output.empty()) o.output = sim_output;
      o.self_exe = self_exe(argv[0]);
      ckptledger::simulate(o);
      return 0;
    }
    if (*simulate_run) {
      return ckptledger::simulate_run(run_scenario, run_root, run_index, run_out);
    }
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const ckptledger::Error& e) {
    fmt::print(stderr, "ckptledger: error: {}\n", e.what());
    return exit_code_for(e);
  } catch (const std::exception& e) {
    fmt::print(stderr, "ckptledger: error: {}\n", e.what());
    return 6;
  }
}
