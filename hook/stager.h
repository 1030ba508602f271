// Stager: the training thread's only cost of an asynchronous save; serialisation, hashing, fsync
// and ledger writes happen on the writer pool (docs/crash-safety.md: off the critical path).
//
// stage() deep-copies a checkpoint's content: containers are rebuilt, every tensor is copied into
// a staging buffer that is allocated once and reused by later saves (fresh pages cost 6-7x a copy
// into warm ones on this machine). After stage() returns, training may mutate its tensors freely.
// CUDA tensors are copied into pinned host buffers on a side stream, ordered after the training
// stream's pending work by an event; the writer waits for that event (Staged::wait_ready) before
// reading the bytes, so the training thread never blocks on the copy.
//
// The bytes of contiguous CPU tensors are copied after the containers are rebuilt, large ones
// with non-temporal stores, and shared between the training thread and helper threads (one
// memcpy thread reaches about half of this kind of machine's memory bandwidth): one helper per
// extra core, at most 3, for saves of 4 MiB and up.
//
// Memory is bounded: buffers come in sets, one set per checkpoint in flight; acquire() waits
// (back-pressure) while every set is in use, and reports how long it waited.
// Thread safety: stage()/acquire() on the training thread; release() from the writer thread.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace ckptledger {

class Stager;

// One staged checkpoint: the copied content, holding a buffer set until destroyed.
class Staged {
 public:
  ~Staged();
  Staged(const Staged&) = delete;
  Staged& operator=(const Staged&) = delete;
  const c10::IValue& content() const { return content_; }
  uint64_t bytes() const { return bytes_; }
  // Blocks until device-to-host copies are complete (no-op for CPU tensors).
  void wait_ready() const;

 private:
  friend class Stager;
  Staged() = default;
  Stager* owner_ = nullptr;
  size_t set_ = 0;
  c10::IValue content_;
  uint64_t bytes_ = 0;
  std::vector<std::function<void()>> ready_waits_;
};

class Stager {
 public:
  // max_sets >= 1: checkpoints that may be in flight at once. copy_helpers: threads that share
  // the copying with the caller (default: one per core beyond the first, at most 3).
  explicit Stager(size_t max_sets, size_t copy_helpers = default_copy_helpers());
  ~Stager();

  // Copies `content` into a free buffer set (waiting for one if needed). `stall` receives the
  // time spent waiting for a free set (the back-pressure stall).
  std::unique_ptr<Staged> stage(const c10::IValue& content, std::chrono::nanoseconds* stall);
  size_t sets() const { return sets_.size(); }
  // Bytes allocated across all buffer sets (the staging memory footprint).
  uint64_t allocated_bytes() const;
  static size_t default_copy_helpers();

 private:
  friend class Staged;
  struct BufferSet {
    std::vector<at::Tensor> buffers;  // reused positionally: the i-th tensor of a save
    bool in_use = false;
  };
  // A byte range to copy (contiguous CPU tensor -> its staging buffer).
  struct CopyTask {
    char* dst;
    const char* src;
    size_t n;
  };
  c10::IValue copy(const c10::IValue& v, BufferSet& set, size_t& next, Staged& out,
                   std::vector<CopyTask>& tasks);
  // Copies every task's bytes, the caller's share last; returns when all are copied.
  void run_copies(const std::vector<CopyTask>& tasks);
  void helper_loop(size_t index);
  void release(size_t set);

  // Copy helpers: started at the first large save; each takes its share of `work_` per round.
  struct HelperState {
    std::mutex mu;
    std::condition_variable cv;
    uint64_t round = 0;  // bumped when a new set of shares is posted
    size_t pending = 0;  // helpers still copying this round
    bool stop = false;
    std::vector<std::vector<CopyTask>> shares;  // [helper index]
  };
  const size_t copy_helpers_;
  HelperState helper_state_;
  std::vector<std::thread> helpers_;

  mutable std::mutex mu_;
  std::condition_variable free_;
  std::vector<BufferSet> sets_;
};

}  // namespace ckptledger
