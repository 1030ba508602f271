// The only translation unit that includes the Gloo process group (a large header: keep it here).
#include "hook/coordinator.h"

#include <cstdlib>
#include <cstring>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
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
  c10::intrusive_ptr<c10d::Store> store;  // the hook's prefix of the job's store
  int rank = 0;
  int size = 1;
  std::chrono::milliseconds write_timeout{0};
  int64_t meets = 0;   // meetings so far (meet, gather with wait_for_all; the same on every rank)
  bool left = false;   // leave() was called
  std::string broken;  // the first failure

  // Every call starts here: a group that failed once is not used again.
  void check_usable() const {
    if (!broken.empty()) {
      throw_error(ErrorCode::kIOError,
                  "rank " + std::to_string(rank) +
                      ": the checkpoint exchange is unusable after an earlier failure: " + broken);
    }
  }

  // What the ranks that left the job (leave()) said, as " (rank r stopped: ...)"; "" when none
  // did or the store cannot say.
  std::string stopped_ranks() const {
    std::string out;
    for (int r = 0; r < size; ++r) {
      if (r == rank) continue;
      try {
        const std::string key = "stopped/" + std::to_string(r);
        if (!store->check({key})) continue;
        const std::vector<uint8_t> why = store->get(key);
        out += " (rank " + std::to_string(r) + " stopped: " + std::string(why.begin(), why.end()) +
               ")";
      } catch (const std::exception&) {
        return out;  // the store went with a dead rank
      }
    }
    return out;
  }

  // The first failure breaks the group for good, and closes this rank's connections: a peer still
  // in an exchange with this rank fails at once instead of at its timeout.
  [[noreturn]] void fail(const std::string& message) {
    const std::string full = message + stopped_ranks();
    if (broken.empty()) broken = full;
    group.reset();
    throw_error(ErrorCode::kIOError, full);
  }

  void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* what) {
    try {
      work->wait();
    } catch (const std::exception& ex) {
      fail(std::string("rank ") + std::to_string(rank) + ": the checkpoint exchange (" + what +
           ") failed: " + message_of(ex) + " (another rank died or left the job)");
    }
  }

  // The largest of every rank's `value` (`what`: the exchange it serves, for the message).
  int64_t max(int64_t value, const char* what);

  // The n-th meeting (meet(), gather(..., wait_for_all)): "arrived/<n>" counts the ranks in, the
  // rank that completes the count sets "ready/<n>" = "A", and every rank waits for that key. A
  // rank that leaves the job sets it to "S" (leave()), so that no rank waits for one that will not
  // come. One blocking wait, not a poll: a TCPStore wait that times out leaves its answer pending
  // on the connection (torch 1.13), so the first timeout is final.
  std::string ready_key() const { return "ready/" + std::to_string(meets); }

  void meet_all() {
    const std::string n = std::to_string(meets);
    std::vector<uint8_t> value;
    try {
      // Arriving at n, rank 0 has passed meeting n-1, so every rank counted itself in n-1 and is
      // done with n-2. (Not n-1: a peer may still be reading ready/<n-1>, say behind a broadcast
      // that rank 0 finished first.)
      if (rank == 0 && meets >= 2) {
        store->deleteKey("arrived/" + std::to_string(meets - 2));
        store->deleteKey("ready/" + std::to_string(meets - 2));
      }
      if (store->add("arrived/" + n, 1) == size) store->set(ready_key(), {'A'});
      store->wait({ready_key()}, write_timeout);
      value = store->get(ready_key());
    } catch (const std::exception& ex) {
      fail("rank " + std::to_string(rank) +
           ": waited for every rank to finish its work and reach the checkpoint exchange: " +
           message_of(ex));
    }
    ++meets;
    if (value.empty() || value[0] != 'A') {
      fail("rank " + std::to_string(rank) +
           ": a rank left the job before this checkpoint exchange");
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

// PrefixStore keeps its prefix to itself; a pointer to the member, taken in a subclass, reads it.
struct PrefixOf : c10d::PrefixStore {
  static const std::string& of(const c10d::PrefixStore& store) {
    return store.*(&PrefixOf::prefix_);
  }
};

// The hook's own connection to the job's TCPStore, under the same prefixes: a TCPStore client runs
// one operation at a time (torch 1.13), so the hook's long waits on its writer thread (meet_all)
// must not hold up the training's own use of the store. Other stores are shared as they are.
c10::intrusive_ptr<c10d::Store> own_connection(const c10::intrusive_ptr<c10d::Store>& store,
                                               std::chrono::milliseconds timeout) {
  std::vector<std::string> prefixes;  // outermost first
  c10::intrusive_ptr<c10d::Store> inner = store;
  while (auto* p = dynamic_cast<c10d::PrefixStore*>(inner.get())) {
    prefixes.push_back(PrefixOf::of(*p));
    inner = p->getUnderlyingStore();
  }
  const auto* tcp = dynamic_cast<const c10d::TCPStore*>(inner.get());
  if (tcp == nullptr) return store;
  c10d::TCPStoreOptions o;
  o.port = tcp->getPort();
  o.isServer = false;
  o.waitWorkers = false;
  o.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> out = c10::make_intrusive<c10d::TCPStore>(tcp->getHost(), o);
  for (auto it = prefixes.rbegin(); it != prefixes.rend(); ++it)
    out = c10::make_intrusive<c10d::PrefixStore>(*it, out);
  return out;
}

}  // namespace

Coordinator::Coordinator(const c10::intrusive_ptr<c10d::ProcessGroup>& job,
                         const c10::intrusive_ptr<c10d::Store>& store,
                         std::chrono::milliseconds timeout, std::chrono::milliseconds write_timeout)
    : impl_(std::make_unique<Impl>()) {
  if (!job || !store) {
    throw_error(ErrorCode::kInvalidArgument,
                "CheckpointHook::join: the process group and its store must not be null");
  }
  impl_->rank = job->getRank();
  impl_->size = job->getSize();
  impl_->write_timeout = write_timeout;
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  options->devices.push_back(gloo_device());
  options->threads = 1;
  try {
    // The k-th hook this rank joins on this store gets the prefix "ckptledger/<k>/": every rank
    // counts its own joins, so two hooks of one job (or a hook joined again) never share keys.
    const int64_t k = store->add("ckptledger/joins/" + std::to_string(impl_->rank), 1) - 1;
    impl_->store = c10::make_intrusive<c10d::PrefixStore>("ckptledger/" + std::to_string(k),
                                                          own_connection(store, timeout));
    impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("gloo", impl_->store), impl_->rank, impl_->size,
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

std::string Coordinator::broken() const { return impl_->broken; }

void Coordinator::leave(const std::string& why) {
  if (impl_->left) return;
  impl_->left = true;
  try {
    impl_->store->set("stopped/" + std::to_string(impl_->rank),
                      std::vector<uint8_t>(why.begin(), why.end()));
  } catch (const std::exception&) {
    // The store is gone (a dead rank 0 served it): the others see the closed connections.
  }
  try {
    // The others may wait for this rank at the next exchange (meet_all): not any more.
    impl_->store->set(impl_->ready_key(), std::vector<uint8_t>{'S'});
    // A TCPStore set has no reply: one round trip, so that the store holds both keys before the
    // peers see this rank's connections close and look for its reason.
    impl_->store->check({"stopped/" + std::to_string(impl_->rank)});
  } catch (const std::exception&) {
  }
  if (impl_->broken.empty()) impl_->broken = "this rank left the job: " + why;
  impl_->group.reset();  // closes this rank's connections: the others' exchanges fail at once
}

int64_t Coordinator::max(int64_t value) {
  impl_->check_usable();
  return impl_->max(value, "allreduce");
}

int64_t Coordinator::Impl::max(int64_t value, const char* what) {
  std::vector<at::Tensor> t{at::empty({1}, at::kLong)};
  t[0].data_ptr<int64_t>()[0] = value;
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  wait(group->allreduce(t, o), what);
  return t[0].data_ptr<int64_t>()[0];
}

std::vector<std::string> Coordinator::gather(const std::string& mine, bool wait_for_all) {
  impl_->check_usable();
  if (wait_for_all) impl_->meet_all();
  // Gloo gathers equal sizes: every rank pads to the longest, behind an 8-byte length.
  const int64_t longest = impl_->max(static_cast<int64_t>(mine.size()), "gather");
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

void Coordinator::meet() {
  impl_->check_usable();
  impl_->meet_all();
}

std::string Coordinator::broadcast(const std::string& value) {
  impl_->check_usable();
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

void broadcast_from_rank0(JobGroup& group, std::vector<at::Tensor>& tensors) {
  if (!group.group || tensors.empty()) return;
  if (group.group->getRank() != group.rank || group.group->getSize() != group.world_size) {
    throw_error(ErrorCode::kInvalidArgument,
                "broadcast_from_rank0: the JobGroup says rank " + std::to_string(group.rank) +
                    " of " + std::to_string(group.world_size) + ", its process group rank " +
                    std::to_string(group.group->getRank()) + " of " +
                    std::to_string(group.group->getSize()));
  }
  // One flat byte buffer, one collective: every dtype travels as its bytes, each tensor at an
  // offset aligned for any element type.
  constexpr int64_t kAlign = 16;
  std::vector<int64_t> offsets;
  int64_t bytes = 0;
  for (const at::Tensor& t : tensors) {
    offsets.push_back(bytes);
    bytes += (static_cast<int64_t>(t.nbytes()) + kAlign - 1) / kAlign * kAlign;
  }
  std::vector<at::Tensor> buffer{at::zeros({bytes}, at::kByte)};
  uint8_t* base = buffer[0].data_ptr<uint8_t>();
  auto view = [&](const at::Tensor& t, size_t i) {
    return at::from_blob(base + offsets[i], t.sizes(), t.options().device(at::kCPU));
  };
  at::NoGradGuard no_grad;  // the tensors may be a model's parameters
  if (group.rank == 0) {
    for (size_t i = 0; i < tensors.size(); ++i) view(tensors[i], i).copy_(tensors[i]);
  }
  try {
    group.group->broadcast(buffer)->wait();
  } catch (const std::exception& ex) {
    throw_error(ErrorCode::kIOError, "rank " + std::to_string(group.rank) +
                                         ": broadcast from rank 0 failed: " + message_of(ex) +
                                         " (another rank died or left the job)");
  }
  for (size_t i = 0; i < tensors.size(); ++i) tensors[i].copy_(view(tensors[i], i));
}

}  // namespace ckptledger
