// WriterPool: where checkpoint bytes, ledger appends and deletions happen (docs/persistence.md).
//
// A boost::asio::thread_pool with one strand: jobs run one at a time, in the order they were
// posted (decision order), on a pool thread; with `sync` they run inline on the caller's thread.
// Pool threads run at a lower CPU priority than the thread that created the pool (`nice`
// increments, Linux per-thread nice values; threads they start inherit it): on a machine whose
// cores training keeps busy, serialisation and hashing take what training leaves.
// A job's exception is sticky (LevelDB bg_error_): recorded once, later jobs are skipped, and
// take_error() hands it to the next hook call on the training thread. A collective job (a job
// of several ranks' exchange, which every rank must take part in) is never skipped: it runs with
// the pending failure, so that this rank still takes its turn and tells the others.
// Thread safety: post(), drain() and take_error() are called by the training thread only.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>

namespace ckptledger {

class WriterPool {
 public:
  // threads == 0: synchronous (every job runs inside post(); failures are sticky all the same).
  // nice: 0..19, added to the creating thread's nice value for the pool threads (capped at 19).
  explicit WriterPool(size_t threads, int nice = 0);
  ~WriterPool();  // drains
  WriterPool(const WriterPool&) = delete;
  WriterPool& operator=(const WriterPool&) = delete;

  // Runs `job` after every job posted before it. `on_error` runs on the pool thread with the
  // exception when this job throws (record save_failed, roll back); it must not throw.
  void post(std::function<void()> job, std::function<void(std::exception_ptr)> on_error = nullptr);
  // Runs `job` in order like post(), also after an earlier job failed: `pending` is then that
  // failure (null otherwise). Its own exception is recorded as any job's (the first one stays).
  void post_collective(std::function<void(std::exception_ptr pending)> job,
                       std::function<void(std::exception_ptr)> on_error = nullptr);
  // Blocks until every posted job has finished.
  void drain();
  // The first failure since the last call, or null. When there is one, waits until every job
  // posted before the call has run (or been skipped) before later jobs may run again.
  std::exception_ptr take_error();
  bool synchronous() const { return sync_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  bool sync_;
};

}  // namespace ckptledger
