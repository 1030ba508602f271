#include "hook/stager.h"

#include <ATen/Functions.h>
#include <ATen/core/Dict.h>
#include <ATen/core/List.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <utility>

#include "ckptledger/error.h"

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

namespace {

// Below this, a save is copied on the caller's thread alone (waking helpers costs ~0.1 ms).
constexpr size_t kShareAbove = 4 << 20;
// From this size on, a copy bypasses the caches (non-temporal stores): the staged bytes are read
// again only by the writer, long after they would have left the cache, and skipping the
// read-for-ownership of every destination line makes a large copy ~1.4x faster here.
constexpr size_t kStreamAbove = 256 << 10;

#if defined(__x86_64__)
__attribute__((target("avx2"))) void stream_copy_avx2(char* dst, const char* src, size_t n) {
  size_t head = (32 - (reinterpret_cast<uintptr_t>(dst) & 31)) & 31;
  head = std::min(head, n);
  std::memcpy(dst, src, head);
  dst += head;
  src += head;
  n -= head;
  const size_t body = n & ~size_t{127};
  for (size_t i = 0; i < body; i += 128) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 32));
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 64));
    const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 96));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i), a);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 32), b);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 64), c);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 96), d);
  }
  std::memcpy(dst + body, src + body, n - body);
  _mm_sfence();  // streamed stores are visible before whoever waits on this copy reads them
}
#endif

void copy_bytes(char* dst, const char* src, size_t n) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2 && n >= kStreamAbove) {
    stream_copy_avx2(dst, src, n);
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

}  // namespace

Stager::Stager(size_t max_sets, size_t copy_helpers)
    : copy_helpers_(copy_helpers), sets_(std::max<size_t>(1, max_sets)) {}

Stager::~Stager() {
  {
    std::lock_guard<std::mutex> lock(helper_state_.mu);
    helper_state_.stop = true;
  }
  helper_state_.cv.notify_all();
  for (std::thread& t : helpers_) t.join();
}

size_t Stager::default_copy_helpers() {
  const unsigned cores = std::thread::hardware_concurrency();
  return cores <= 1 ? 0 : std::min<size_t>(3, cores - 1);
}

void Stager::helper_loop(size_t index) {
  HelperState& h = helper_state_;
  uint64_t seen = 0;
  for (;;) {
    std::vector<CopyTask> share;
    {
      std::unique_lock<std::mutex> lock(h.mu);
      h.cv.wait(lock, [&] { return h.stop || h.round != seen; });
      if (h.stop) return;
      seen = h.round;
      share.swap(h.shares[index]);
    }
    for (const CopyTask& t : share) copy_bytes(t.dst, t.src, t.n);
    {
      std::lock_guard<std::mutex> lock(h.mu);
      --h.pending;
    }
    h.cv.notify_all();
  }
}

void Stager::run_copies(const std::vector<CopyTask>& tasks) {
  size_t total = 0;
  for (const CopyTask& t : tasks) total += t.n;
  if (copy_helpers_ == 0 || total < kShareAbove) {
    for (const CopyTask& t : tasks) copy_bytes(t.dst, t.src, t.n);
    return;
  }
  // Equal shares of the bytes, cut at cache-line multiples inside tensors where needed.
  const size_t parts = copy_helpers_ + 1;
  const size_t per = ((total + parts - 1) / parts + 63) & ~size_t{63};
  std::vector<std::vector<CopyTask>> shares(parts);
  size_t part = 0, room = per;
  for (CopyTask t : tasks) {
    while (t.n > 0) {
      const size_t n = part + 1 == parts ? t.n : std::min(t.n, room);
      shares[part].push_back({t.dst, t.src, n});
      t.dst += n;
      t.src += n;
      t.n -= n;
      room -= std::min(room, n);
      if (room == 0 && part + 1 < parts) {
        ++part;
        room = per;
      }
    }
  }
  HelperState& h = helper_state_;
  {
    std::lock_guard<std::mutex> lock(h.mu);
    if (helpers_.empty()) {
      h.shares.resize(copy_helpers_);
      for (size_t i = 0; i < copy_helpers_; ++i)
        helpers_.emplace_back([this, i] { helper_loop(i); });
    }
    for (size_t i = 0; i < copy_helpers_; ++i) h.shares[i] = std::move(shares[i + 1]);
    h.pending = copy_helpers_;
    ++h.round;
  }
  h.cv.notify_all();
  for (const CopyTask& t : shares[0]) copy_bytes(t.dst, t.src, t.n);
  std::unique_lock<std::mutex> lock(h.mu);
  h.cv.wait(lock, [&] { return h.pending == 0; });
}

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
  std::vector<CopyTask> tasks;
  // The set is ours alone while in_use: no lock needed to touch its buffers.
  out->content_ = copy(content, sets_[chosen], next, *out, tasks);
  run_copies(tasks);
  return out;
}

c10::IValue Stager::copy(const c10::IValue& v, BufferSet& set, size_t& next, Staged& out,
                         std::vector<CopyTask>& tasks) {
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
    } else if (t.layout() == c10::kStrided && t.device().is_cpu() && t.is_contiguous()) {
      // Bytes copied later, shared with the helpers.
      if (t.nbytes() > 0) {
        tasks.push_back({static_cast<char*>(buf.data_ptr()), static_cast<const char*>(t.data_ptr()),
                         t.nbytes()});
      }
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
    for (const auto& kv : d) r.insert(kv.key(), copy(kv.value(), set, next, out, tasks));
    return r;
  }
  if (v.isList()) {
    c10::impl::GenericList r(c10::AnyType::get());
    for (const c10::IValue& x : v.toListRef()) r.push_back(copy(x, set, next, out, tasks));
    return r;
  }
  if (v.isTuple()) {
    std::vector<c10::IValue> items;
    for (const c10::IValue& x : v.toTupleRef().elements())
      items.push_back(copy(x, set, next, out, tasks));
    return c10::ivalue::Tuple::create(std::move(items));
  }
  // Scalars and strings are immutable values.
  return v;
}

}  // namespace ckptledger
