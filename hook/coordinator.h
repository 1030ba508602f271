// Coordinator: the hook's own collectives in a job of several ranks (docs/distributed.md).
//
// They run on a Gloo group of the hook's own, built over the job's store under the prefix
// "ckptledger/<k>/" (k: how many hooks this rank joined on that store before; as
// torch.distributed.checkpoint's async_save builds a separate Gloo group), so that the exchanges
// the writer pool makes never interleave with the training's collectives on the job's group, nor
// with another hook's. Every rank must make the same calls in the same order; a peer that died
// makes the call throw (Gloo: connection reset) or time out. After the first failure the group is
// broken: every later call throws at once, naming that failure (no call waits on a dead group).
// Thread safety: one thread at a time (the writer pool's strand, or the training thread while the
// pool is idle). No c10d type appears here: the Gloo headers stay in coordinator.cc.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <c10/util/intrusive_ptr.h>

namespace c10d {
class ProcessGroup;
class Store;
}  // namespace c10d

namespace ckptledger {

class Coordinator {
 public:
  // Builds the hook's group: a rendezvous, so every rank of `job` calls it. `store` is the store
  // the job's group was built on. `timeout`: how long a collective waits for a rank that neither
  // answers nor dies; `write_timeout`: how long a rank waits for the others to reach a
  // gather(..., wait_for_all) (their writes before it: see gather).
  Coordinator(const c10::intrusive_ptr<c10d::ProcessGroup>& job,
              const c10::intrusive_ptr<c10d::Store>& store, std::chrono::milliseconds timeout,
              std::chrono::milliseconds write_timeout);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  int rank() const;
  int size() const;
  // The number of ranks of `group` (1 when it is null).
  static int size_of(const c10::intrusive_ptr<c10d::ProcessGroup>& group);
  // Rank 0 receives every rank's bytes, in rank order; the other ranks receive nothing.
  // `wait_for_all`: every rank first waits, through the store (up to write_timeout), until every
  // rank reaches this call, so that `timeout` counts the exchange itself and not the writes each
  // rank makes before it (a part, or in the "main" layout rank 0's whole checkpoint). Every rank
  // passes the same value.
  std::vector<std::string> gather(const std::string& mine, bool wait_for_all = false);
  // Waits, through the store (up to write_timeout), until every rank reaches a meet (or a
  // gather(..., wait_for_all)): the collective after it times out on the exchange alone, not on
  // the work a rank does before it (rank 0 opening the ledger, a rank reading its part).
  void meet();
  // Every rank receives rank 0's `value` (the others' argument is ignored).
  std::string broadcast(const std::string& value);
  // The largest of every rank's `value`, on every rank.
  int64_t max(int64_t value);
  // The first failure, once a call failed ("" while the group works).
  std::string broken() const;
  // This rank stops taking part (it raised an error to its caller, or its hook goes away before
  // the run's end): `why` is left in the store for the others' messages, and the group is closed,
  // so that an exchange that waits for this rank fails at once instead of at its timeout. Later
  // calls throw; a second leave does nothing.
  void leave(const std::string& why);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckptledger
