// A job of several ranks on torch.distributed's c10d (docs/distributed.md).
//
//   std::optional<ckptledger::JobGroup> job = ckptledger::join_from_env();  // torchrun's env
//   if (job) hook.join(job->group, job->store);   // before resume() / before_train()
//
// With a TorchRunner, `if (job) runner.set_job(*job);` instead: every rank gets rank 0's weights,
// runner.allreduce_gradients() reduces the gradients, and the reference loops (loops.h) join the
// hook to runner.job() (torch_runner.h).
//
// join_from_env() reads what torchrun sets (WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT,
// TORCHELASTIC_RESTART_COUNT, TORCHELASTIC_USE_AGENT_STORE): it connects to the job's TCPStore,
// under the restart attempt's prefix as torch's own rendezvous does, and builds a Gloo group of
// every rank. A program that builds its group otherwise (NCCL, its own store) passes that group
// and its store to CheckpointHook::join instead. No c10d header is included here.
#pragma once

#include <chrono>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>

namespace c10d {
class ProcessGroup;
class Store;
}  // namespace c10d

namespace ckptledger {

struct JobGroup {
  JobGroup();
  ~JobGroup();
  JobGroup(const JobGroup&);
  JobGroup& operator=(const JobGroup&);

  c10::intrusive_ptr<c10d::Store> store;         // the attempt's store (a PrefixStore)
  c10::intrusive_ptr<c10d::ProcessGroup> group;  // Gloo, every rank
  int rank = 0;
  int world_size = 1;
  int attempt = 0;  // TORCHELASTIC_RESTART_COUNT
};

// nullopt when WORLD_SIZE is unset or 1 (one process: no group). Error(kInvalidArgument) names
// a missing or malformed variable; Error(kIOError) a store or group that cannot be reached.
std::optional<JobGroup> join_from_env(
    std::chrono::milliseconds timeout = std::chrono::milliseconds(300000));

// Sums `tensors` (CPU) over every rank of `group`, in place (the gradients of data parallelism).
void allreduce_sum(JobGroup& group, std::vector<at::Tensor>& tensors);

// Replaces `tensors` on every rank by rank 0's, in place (any dtypes, bit for bit: DDP's broadcast
// of the replicas at construction). Every rank passes tensors of the same shapes and dtypes in the
// same order. Error(kInvalidArgument) when `group`'s rank or size is not the process group's;
// Error(kIOError), naming the rank, when the broadcast fails.
void broadcast_from_rank0(JobGroup& group, std::vector<at::Tensor>& tensors);

}  // namespace ckptledger
