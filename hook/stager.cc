#include "hook/stager.h"

#include <ATen/Functions.h>
#include <ATen/core/Dict.h>
#include <ATen/core/List.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <thread>
#include <utility>

#include "ledger/error.h"

namespace ckptledger {

Staged::~Staged() {
  // Drop every reference into the set's buffers before the set can be handed to the next save.
  content_ = c10::IValue();
  ready_waits_.clear();
  if (owner_) owner_->release(set_);
}

void Staged::wait_ready() const {
  for (const auto& wait : ready_waits_) wait();
}

Stager::Stager(size_t max_sets) : sets_(std::max<size_t>(1, max_sets)) {}

Stager::~Stager() = default;

uint64_t Stager::allocated_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t total = 0;
  for (const BufferSet& s : sets_) {
    for (const at::Tensor& b : s.buffers) total += b.nbytes();
  }
  return total;
}

void Stager::release(size_t set) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    sets_[set].in_use = false;
  }
  free_.notify_one();
}

std::unique_ptr<Staged> Stager::stage(const c10::IValue& content, std::chrono::nanoseconds* stall) {
  auto t0 = std::chrono::steady_clock::now();
  size_t chosen = 0;
  {
    std::unique_lock<std::mutex> lock(mu_);
    auto find_free = [&] {
      for (size_t i = 0; i < sets_.size(); ++i) {
        if (!sets_[i].in_use) {
          chosen = i;
          return true;
        }
      }
      return false;
    };
    free_.wait(lock, find_free);
    sets_[chosen].in_use = true;
  }
  if (stall) *stall = std::chrono::steady_clock::now() - t0;
  std::unique_ptr<Staged> out(new Staged());
  out->owner_ = this;
  out->set_ = chosen;
  size_t next = 0;
  // The set is ours alone while in_use: no lock needed to touch its buffers.
  out->content_ = copy(content, sets_[chosen], next, *out);
  return out;
}

c10::IValue Stager::copy(const c10::IValue& v, BufferSet& set, size_t& next, Staged& out) {
  if (v.isTensor()) {
    const at::Tensor& t = v.toTensor();
    size_t i = next++;
    if (i >= set.buffers.size()) set.buffers.resize(i + 1);
    at::Tensor& buf = set.buffers[i];
    const bool cuda = t.is_cuda();
    if (!buf.defined() || buf.sizes() != t.sizes() || buf.scalar_type() != t.scalar_type()) {
      // Allocated once per shape; later saves of the same model copy into warm pages.
      buf = at::empty(t.sizes(), at::TensorOptions().dtype(t.scalar_type()).pinned_memory(cuda));
    }
    if (cuda) {
      // Side stream ordered after the training stream's work up to now; the writer waits on the
      // event, the training thread does not.
      c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
      c10::Device dev = t.device();
      c10::Stream current = impl.getStream(dev);
      c10::Stream side = impl.getStreamFromGlobalPool(dev, /*isHighPriority=*/false);
      c10::Event produced(c10::DeviceType::CUDA);
      produced.record(current);
      produced.block(side);
      c10::Stream prev = impl.exchangeStream(side);
      buf.copy_(t, /*non_blocking=*/true);
      impl.exchangeStream(prev);
      auto copied = std::make_shared<c10::Event>(c10::DeviceType::CUDA);
      copied->record(side);
      // The training stream must not free or overwrite `t` before the copy read it.
      t.record_stream(side);
      // c10::Event has no host-side wait in libtorch 1.13: poll it (on the writer thread only).
      out.ready_waits_.push_back([copied] {
        while (!copied->query()) std::this_thread::sleep_for(std::chrono::microseconds(50));
      });
    } else {
      buf.copy_(t);
    }
    out.bytes_ += t.nbytes();
    return buf;
  }
  if (v.isGenericDict()) {
    const c10::impl::GenericDict& d = v.toGenericDict();
    c10::impl::GenericDict r(d.keyType(), d.valueType());
    r.reserve(d.size());
    for (const auto& kv : d) r.insert(kv.key(), copy(kv.value(), set, next, out));
    return r;
  }
  if (v.isList()) {
    c10::impl::GenericList r(c10::AnyType::get());
    for (const c10::IValue& x : v.toListRef()) r.push_back(copy(x, set, next, out));
    return r;
  }
  if (v.isTuple()) {
    std::vector<c10::IValue> items;
    for (const c10::IValue& x : v.toTupleRef().elements()) items.push_back(copy(x, set, next, out));
    return c10::ivalue::Tuple::create(std::move(items));
  }
  // Scalars and strings are immutable values.
  return v;
}

}  // namespace ckptledger
