// CheckpointHook: MMEngine's CheckpointHook (docs/behaviour.md) on the ledger.
//
// Contract: construction validates the config (Error(kInvalidArgument) before anything touches the
// disk). Call the stages in MMEngine's runner order (the reference loops in ckptledger/loops.h
// do): resume() (optional), before_train, after_train_iter / after_train_epoch / after_val_epoch,
// after_train, after_run. The hook's state (the message hub values: best scores and paths,
// last_ckpt, keep_ckpt_ids) is the fold of the ledger's committed events; resume() rebuilds it by
// replay (docs/crash-safety.md: state = fold(events)). Every save, prune, best update, validation
// and publish is a ledger event. Thread safety: one training thread calls the hook; checkpoint
// bytes are written per `sync`.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckptledger/hook_config.h"
#include "ckptledger/hook_state.h"
#include "ckptledger/runner.h"

namespace c10d {
class ProcessGroup;
class Store;
}  // namespace c10d

namespace ckptledger {

class FileSystem;  // the filesystem seam (internal: tests inject faults through it)

class CheckpointHook {
 public:
  // `fs`: where files are written (tests inject faults); default the real filesystem. Not owned.
  explicit CheckpointHook(const HookConfig& config, LogSink log = {}, FileSystem* fs = nullptr);
  ~CheckpointHook();
  CheckpointHook(const CheckpointHook&) = delete;
  CheckpointHook& operator=(const CheckpointHook&) = delete;

  // A job of several ranks (docs/distributed.md): call on every rank, before resume() and
  // before_train(), with the job's process group and the store it was built on
  // (ckptledger/distributed.h: join_from_env gives both under torchrun; the reference loops of
  // ckptledger/loops.h call it with Runner::job()). The hook builds its own Gloo group over
  // `store` (a rendezvous: every rank must call join) for its exchanges, which never interleave
  // with the job's collectives. Rank 0 is the ledger's only writer; every rank makes the same
  // decisions; config.save_layout says what each rank writes. A group of one rank changes
  // nothing. Error(kInvalidArgument) after resume()/before_train(), or with on_error "warn";
  // Error(kIOError) when the group cannot be built.
  // `timeout`: how long an exchange waits for a rank that neither answers nor dies.
  // `write_timeout`: how long the other ranks wait for rank 0 to finish writing a save and reach
  // its exchange (in the "main" layout rank 0 writes the whole checkpoint; a slow disk must not
  // count against `timeout`). A rank that dies fails every exchange at once either way.
  void join(const c10::intrusive_ptr<c10d::ProcessGroup>& group,
            const c10::intrusive_ptr<c10d::Store>& store,
            std::chrono::milliseconds timeout = std::chrono::milliseconds(300000),
            std::chrono::milliseconds write_timeout = std::chrono::hours(24));
  int rank() const;        // 0 without join
  int world_size() const;  // 1 without join
  // Rank 0 of a job: each committed save's coordination cost in microseconds, in commit order:
  // from the last rank's arrival at the exchange to the end of the commit transaction (no
  // writes). Empty on other ranks and without join.
  std::vector<int64_t> exchange_timings() const;

  // Before before_train. resume && !load_from: auto-resume from the newest committed regular
  // checkpoint in the ledger of runner.work_dir() whose digest verifies (falls back to the previous
  // one). resume && load_from: resume from that file. !resume && load_from: load weights only; the
  // hook state starts fresh. Returns the absolute path loaded, or nullopt.
  std::optional<std::string> resume(Runner& runner, bool resume = true,
                                    const std::optional<std::string>& load_from = std::nullopt);

  void before_train(Runner& runner);
  void after_train_iter(Runner& runner, int64_t batch_idx);
  void after_train_epoch(Runner& runner);
  void after_val_epoch(Runner& runner, const Metrics& metrics);
  void after_train(Runner& runner);
  void after_run(Runner& runner);  // drains pending writes, records run_finished

  // Waits until every accepted save is committed (or failed). The stages above call it when they
  // need to; tools call it before looking at the disk.
  void wait_idle();

  // Message hub values that are set: best_score*, best_ckpt*, last_ckpt, keep_ckpt_ids.
  nlohmann::json hub_info() const;
  const std::string& out_dir() const;  // absolute, after before_train
  const ValidatedConfig& config() const;
  // Absolute paths of the checkpoint files written by the most recent stage call, in order.
  const std::vector<std::string>& last_stage_saves() const;
  // Absolute paths of the files published so far by this instance, in order.
  const std::vector<std::string>& published() const;
  std::string ledger_path() const;
  // True when the validation at these counters was recorded and what it triggered committed.
  // After a resume, a loop runs a due validation again when this is false (nothing due is
  // skipped after a resume); the reference loops in ckptledger/loops.h do.
  bool validation_complete(int64_t epoch, int64_t iter) const;
  // The live state (the fold of every event this hook appended or replayed). Read it after
  // wait_idle(): the writer pool patches committed files' bytes, digest and seq into it.
  const HookState& state() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckptledger
