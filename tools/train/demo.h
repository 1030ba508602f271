// `ckptledger demo`: the whole product on a real (small) libtorch training, end to end.
//
// The parent (demo()) keeps no state of its own that matters: every decision is read back from the
// ledgers, so a demo killed at any moment (by anyone) finishes the job when run again on its
// work_dir:
//   1. <work_dir>/ckptledger.sqlite holds no run_started: train in a child process (fork + exec of
//      the hidden `ckptledger demo-train`), SIGKILL it in the middle of epoch K of N (unless
//      --no-kill), then start it again with auto-resume and let it finish.
//      It holds run_started but no run_finished after the last one: a previous demo was
//      interrupted: resume (auto-resume from the ledger), with no kill injected.
//   2. The same for <work_dir>/reference (the same training, never killed by the demo).
//   3. The summary, read from both ledgers and the disk: history around the kill, live and best
//      checkpoints, published files, the resumed-vs-reference comparison (best scores, file sets,
//      final weights bitwise), the ledger's verification, and three SQL queries with their
//      output. Also written as <work_dir>/demo_summary.json. A finished work_dir only gets step 3.
// The child dies with its parent (PR_SET_PDEATHSIG), so a killed demo leaves no writer behind.
//
// Errors: UsageError (exit 2) for a work_dir that is not a demo's (non-empty, no demo.json);
// Error(kIOError) when a training process fails (its exit status or signal named).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ckptledger {

struct DemoOptions {
  std::optional<std::string> work_dir;  // nullopt: ./ckptledger-demo-<timestamp>/ (fresh)
  std::optional<std::string> size;      // "small" | "full"; nullopt: the work_dir's, else full
  bool no_kill = false;                 // train uninterrupted (no SIGKILL injected)
  std::string self_exe;                 // the ckptledger binary that provides `demo-train`
};

// Returns the process exit status (0: the resumed run matched the reference; 1: it did not).
int demo(const DemoOptions& options);

// The hidden `demo-train` verb: one training process (DemoRunner, the reference EpochLoop, the
// CheckpointHook with the demo's config). `status_fd` >= 0: one line per batch ("b E B") and per
// validation ("v E") is written there, for the parent to time its SIGKILL.
struct DemoTrainOptions {
  std::string work_dir;  // absolute
  std::string size = "full";
  int64_t seed = 0;
  bool resume = false;
  int status_fd = -1;
  std::string label = "train";  // shown in the progress lines
};
int demo_train(const DemoTrainOptions& options);

}  // namespace ckptledger
