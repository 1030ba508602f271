// `ckptledger demo --ranks N` (N >= 2): the multi-rank story under torchrun (docs/distributed.md).
//
// Two runs of the train job (`ckptledger-train train`, save_layout "spread", a save every 20
// iterations, the best by accuracy), each N ranks under torchrun with --max_restarts 2:
//   <work_dir>/killed     a random rank is SIGKILLed as it reaches a random save (its iteration
//                         printed, the hook's save next); torchrun restarts the whole group, the
//                         ranks resume from the ledger's newest committed checkpoint;
//   <work_dir>/reference  the same job, never killed.
// Then the summary: what the ledger recorded around the kill (the save that never committed, the
// orphan parts reconciliation removed, the resume), and the comparison: final weights bitwise
// (each run's newest checkpoint exported as one file), best score, checkpoint names, `verify`.
// The work_dir must be new or empty. Exit status 0 when the runs match, 1 when they do not.
#pragma once

#include <optional>
#include <string>

namespace ckptledger {

struct DemoRanksOptions {
  std::optional<std::string> work_dir;  // nullopt: ./ckptledger-demo-ranks-<timestamp>/
  int ranks = 2;
  bool no_kill = false;
  std::string self_exe;  // ckptledger-train (its `train` and `export` verbs)
};

int demo_ranks(const DemoRanksOptions& options);

}  // namespace ckptledger
