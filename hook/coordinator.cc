// The only translation unit that includes the Gloo process group (a large header: keep it here).
#include "hook/coordinator.h"

#include <cstdlib>
#include <cstring>

#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "ckptledger/distributed.h"
#include "ckptledger/error.h"

namespace ckptledger {
namespace {

// c10::Error's what() carries a C++ backtrace: the message alone.
std::string message_of(const std::exception& ex) {
  if (const auto* e = dynamic_cast<const c10::Error*>(&ex)) return e->what_without_backtrace();
  return ex.what();
}

}  // namespace

struct Coordinator::Impl {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  int rank = 0;
  int size = 1;

  void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* what) {
    try {
      work->wait();
    } catch (const std::exception& ex) {
      throw_error(ErrorCode::kIOError, std::string("rank ") + std::to_string(rank) +
                                           ": the checkpoint exchange (" + what + ") failed: " +
                                           message_of(ex) + " (another rank died or left the job)");
    }
  }
};

namespace {

std::shared_ptr<::gloo::transport::Device> gloo_device() {
  // As torch.distributed does: GLOO_SOCKET_IFNAME names the interface, else the host's address.
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

}  // namespace

Coordinator::Coordinator(const c10::intrusive_ptr<c10d::ProcessGroup>& job,
                         const c10::intrusive_ptr<c10d::Store>& store,
                         std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>()) {
  if (!job || !store) {
    throw_error(ErrorCode::kInvalidArgument,
                "CheckpointHook::join: the process group and its store must not be null");
  }
  impl_->rank = job->getRank();
  impl_->size = job->getSize();
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  options->devices.push_back(gloo_device());
  options->threads = 1;
  try {
    impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("ckptledger/", store), impl_->rank, impl_->size,
        options);
  } catch (const std::exception& ex) {
    throw_error(ErrorCode::kIOError, std::string("rank ") + std::to_string(impl_->rank) +
                                         ": cannot build the checkpoint group: " + message_of(ex));
  }
}

Coordinator::~Coordinator() = default;

int Coordinator::rank() const { return impl_->rank; }
int Coordinator::size_of(const c10::intrusive_ptr<c10d::ProcessGroup>& group) {
  return group ? group->getSize() : 1;
}
int Coordinator::size() const { return impl_->size; }

int64_t Coordinator::max(int64_t value) {
  std::vector<at::Tensor> t{at::empty({1}, at::kLong)};
  t[0].data_ptr<int64_t>()[0] = value;
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  impl_->wait(impl_->group->allreduce(t, o), "allreduce");
  return t[0].data_ptr<int64_t>()[0];
}

std::vector<std::string> Coordinator::gather(const std::string& mine) {
  // Gloo gathers equal sizes: every rank pads to the longest, behind an 8-byte length.
  const int64_t longest = max(static_cast<int64_t>(mine.size()));
  const int64_t slot = 8 + longest;
  std::vector<at::Tensor> input{at::zeros({slot}, at::kByte)};
  const int64_t n = static_cast<int64_t>(mine.size());
  std::memcpy(input[0].data_ptr<uint8_t>(), &n, 8);
  if (n > 0) std::memcpy(input[0].data_ptr<uint8_t>() + 8, mine.data(), mine.size());
  std::vector<std::vector<at::Tensor>> output;
  if (impl_->rank == 0) {
    output.emplace_back();
    for (int r = 0; r < impl_->size; ++r) output[0].push_back(at::zeros({slot}, at::kByte));
  }
  c10d::GatherOptions o;
  o.rootRank = 0;
  impl_->wait(impl_->group->gather(output, input, o), "gather");
  std::vector<std::string> out;
  if (impl_->rank != 0) return out;
  for (const at::Tensor& t : output[0]) {
    int64_t len = 0;
    std::memcpy(&len, t.data_ptr<uint8_t>(), 8);
    out.emplace_back(reinterpret_cast<const char*>(t.data_ptr<uint8_t>()) + 8,
                     static_cast<size_t>(len));
  }
  return out;
}

std::string Coordinator::broadcast(const std::string& value) {
  std::vector<at::Tensor> len{at::empty({1}, at::kLong)};
  len[0].data_ptr<int64_t>()[0] = impl_->rank == 0 ? static_cast<int64_t>(value.size()) : 0;
  impl_->wait(impl_->group->broadcast(len), "broadcast");
  const int64_t n = len[0].data_ptr<int64_t>()[0];
  if (n == 0) return {};
  std::vector<at::Tensor> body{at::empty({n}, at::kByte)};
  if (impl_->rank == 0) std::memcpy(body[0].data_ptr<uint8_t>(), value.data(), value.size());
  impl_->wait(impl_->group->broadcast(body), "broadcast");
  return std::string(reinterpret_cast<const char*>(body[0].data_ptr<uint8_t>()),
                     static_cast<size_t>(n));
}

// ---- ckptledger/distributed.h ---------------------------------------------------------------

JobGroup::JobGroup() = default;
JobGroup::~JobGroup() = default;
JobGroup::JobGroup(const JobGroup&) = default;
JobGroup& JobGroup::operator=(const JobGroup&) = default;

namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

int env_int(const char* name, const std::string& value, int low, int high) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(value.c_str(), &end, 10);
  if (errno != 0 || end == value.c_str() || *end != '\0' || v < low || v > high) {
    throw_error(ErrorCode::kInvalidArgument, std::string("environment variable ") + name + "=\"" +
                                                 value + "\" is not an integer in [" +
                                                 std::to_string(low) + ", " + std::to_string(high) +
                                                 "]");
  }
  return static_cast<int>(v);
}

}  // namespace

std::optional<JobGroup> join_from_env(std::chrono::milliseconds timeout) {
  const std::optional<std::string> world = env("WORLD_SIZE");
  if (!world) return std::nullopt;
  JobGroup g;
  g.world_size = env_int("WORLD_SIZE", *world, 1, 1 << 20);
  if (g.world_size == 1) return std::nullopt;
  const std::optional<std::string> rank = env("RANK");
  const std::optional<std::string> addr = env("MASTER_ADDR");
  const std::optional<std::string> port = env("MASTER_PORT");
  for (const auto& [name, v] :
       {std::pair<const char*, const std::optional<std::string>*>{"RANK", &rank},
        {"MASTER_ADDR", &addr},
        {"MASTER_PORT", &port}}) {
    if (!*v) {
      throw_error(ErrorCode::kInvalidArgument,
                  std::string("WORLD_SIZE=") + *world + " but " + name +
                      " is not set: launch the ranks with torchrun (docs/distributed.md)");
    }
  }
  g.rank = env_int("RANK", *rank, 0, g.world_size - 1);
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(env_int("MASTER_PORT", *port, 1, 65535));
  // torchrun's agent serves the store itself (TORCHELASTIC_USE_AGENT_STORE): every rank is a
  // client. Launched otherwise, rank 0 serves it.
  const bool agent_store = env("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
  so.isServer = !agent_store && g.rank == 0;
  so.numWorkers = static_cast<size_t>(g.world_size);
  so.waitWorkers = false;
  so.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(*addr, so);
  } catch (const std::exception& ex) {
    throw_error(ErrorCode::kIOError, "rank " + *rank + ": cannot reach the job's store at " +
                                         *addr + ":" + *port + ": " + message_of(ex));
  }
  // A restarted group (torchrun --max_restarts) rendezvouses afresh under its attempt's prefix,
  // as torch.distributed's own rendezvous does.
  g.attempt =
      env("TORCHELASTIC_RESTART_COUNT")
          ? env_int("TORCHELASTIC_RESTART_COUNT", *env("TORCHELASTIC_RESTART_COUNT"), 0, 1 << 20)
          : 0;
  g.store =
      c10::make_intrusive<c10d::PrefixStore>("/worker/attempt_" + std::to_string(g.attempt), store);
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  options->devices.push_back(gloo_device());
  try {
    g.group = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("job/", g.store), g.rank, g.world_size, options);
  } catch (const std::exception& ex) {
    throw_error(ErrorCode::kIOError,
                "rank " + *rank + ": cannot build the job's Gloo group: " + message_of(ex));
  }
  return g;
}

void allreduce_sum(JobGroup& group, std::vector<at::Tensor>& tensors) {
  if (!group.group || tensors.empty()) return;
  // One flat buffer, one collective (Gloo reduces a list of equal tensors, one per device).
  std::vector<at::Tensor> flat;
  for (const at::Tensor& t : tensors) flat.push_back(t.reshape({-1}));
  std::vector<at::Tensor> buffer{at::cat(flat)};
  try {
    group.group->allreduce(buffer)->wait();
  } catch (const std::exception& ex) {
    throw_error(ErrorCode::kIOError, "rank " + std::to_string(group.rank) + ": allreduce failed: " +
                                         message_of(ex) + " (another rank died or left the job)");
  }
  int64_t at = 0;
  for (at::Tensor& t : tensors) {
    const int64_t n = t.numel();
    t.copy_(buffer[0].slice(0, at, at + n).view(t.sizes()));
    at += n;
  }
}

}  // namespace ckptledger
