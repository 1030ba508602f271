// `ckptledger simulate` (docs/behaviour.md: simulate traces): runs a scenario through the real
// CheckpointHook, ledger and writer, one child process per run, and writes the trace.
//
// The parent (simulate()) validates the scenario, prepares the root, then for each run fork+execs
// `ckptledger simulate-run` (simulate_run()) with the root as its working directory. The child
// drives SimRunner with the reference loops (ckptledger/loops.h) and appends one JSON record per
// line to a file as it goes (written with write(2) before anything else happens), so a run that
// kills itself with SIGKILL keeps what it recorded. The parent assembles runs[] and the final state
// from those records and the disk, normalises paths ($ROOT, <stem>-<sha8#N>.pth) and writes the
// trace.
//
// Errors: a malformed scenario or a non-empty root is Error(kInvalidArgument) before any run.
// What a run ends in (completed, crashed, error) is a result, not a failure.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ckptledger {

struct SimulateOptions {
  std::string scenario_path;          // a scenario or a case file {"scenario", "trace"}
  std::string root;                   // created when missing; must be empty
  std::optional<std::string> output;  // the trace file; nullopt: stdout
  std::string self_exe;               // the ckptledger binary that provides `simulate-run`
};

// Runs every run of the scenario and writes the trace. Returns the trace as written.
nlohmann::ordered_json simulate(const SimulateOptions& options);

// The hidden `simulate-run` verb: run `run_index` of the scenario, in this process, with the
// current directory as the scenario root `root` (absolute). Appends records to `out_path`.
// Returns the process exit status (0 when the run ended, whatever it ended in).
int simulate_run(const std::string& scenario_path, const std::string& root, int run_index,
                 const std::string& out_path);

// ---- Trace pieces (also used by tests) ------------------------------------------------------

// Sorted paths, relative to `root`, of every file under it, except ledger files (a basename of
// ckptledger.sqlite, or a path in `ledger_paths`, with or without -wal / -shm / -journal).
std::vector<std::string> list_root_files(const std::string& root,
                                         const std::vector<std::string>& ledger_paths = {});

// {keys, meta: {epoch, iter}, hub, n_param_schedulers} of a checkpoint file, read back from disk;
// meta only when it has meta, hub only when it has a message_hub, n_param_schedulers only when it
// has param_schedulers.
// {"error": message} when the file cannot be read.
nlohmann::ordered_json checkpoint_summary(const std::string& path);

}  // namespace ckptledger
