// What the hook benchmarks share (hook_bench, async_bench): clocks and medians, a Runner whose
// checkpoint is a fixed state dict, the raw write + fdatasync baseline, the save configuration, a
// log sink that counts, and one timed save. Every figure is printed beside a baseline measured in
// the same run: this machine is shared and noisy.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "ckptledger/checkpoint_hook.h"
#include "ckptledger/hook_config.h"
#include "ckptledger/loops.h"

namespace ckptledger::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// A model-like state dict of `mib` MiB: 75% in 4 MiB tensors, ~23% in 1 MiB tensors, the rest in
// 16 KiB and 4 KiB tensors (biases, norms). Float32, random content (every page touched). `bytes`
// (may be null) and `tensors` receive its tensor bytes and count.
inline c10::impl::GenericDict model_like_state_dict(int64_t mib, int64_t* bytes, int64_t* tensors) {
  c10::impl::GenericDict sd(c10::StringType::get(), c10::TensorType::get());
  const int64_t total = mib << 20;
  const int64_t n4 = total * 3 / 4 / (4 << 20);
  const int64_t n1 = (total - n4 * (4 << 20)) * 15 / 16 / (1 << 20);
  int64_t left = total - n4 * (4 << 20) - n1 * (1 << 20);
  int64_t nbytes = 0;
  *tensors = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    torch::Tensor t = torch::randn(shape);
    nbytes += static_cast<int64_t>(t.nbytes());
    ++*tensors;
    sd.insert(name, t);
  };
  for (int64_t i = 0; i < n4; ++i) add(fmt::format("layers.{}.mlp.weight", i), {1024, 1024});
  for (int64_t i = 0; i < n1; ++i) add(fmt::format("layers.{}.attn.weight", i), {512, 512});
  for (int64_t i = 0; left >= (4 << 10); ++i) {
    const bool big = left >= (16 << 10) && i % 4 != 3;
    add(fmt::format("layers.{}.norm.{}", i, big ? "weight" : "bias"), {big ? 4096 : 1024});
    left -= big ? (16 << 10) : (4 << 10);
  }
  if (bytes) *bytes = nbytes;
  return sd;
}

// A runner whose counters the bench sets and whose checkpoint state is its (live) state dict.
class BenchRunner : public LoopRunner {
 public:
  BenchRunner(std::string work_dir, c10::impl::GenericDict state_dict)
      : work_dir_(std::move(work_dir)), state_dict_(std::move(state_dict)) {
    for (const auto& kv : state_dict_) params_.push_back(kv.value().toTensor());
    set_max(1'000'000'000, 1'000'000'000'000);
  }
  std::string work_dir() const override { return work_dir_; }
  c10::impl::GenericDict checkpoint_state(bool, bool) override {
    c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
    d.insert("state_dict", state_dict_);
    return d;
  }
  bool has_param_schedulers() const override { return false; }
  void load_checkpoint(const c10::impl::GenericDict& ckpt, bool resume) override {
    if (resume) restore_counters(ckpt);
  }

  // What an optimizer step does to the parameters: every one changes, in place.
  void update_all() {
    torch::NoGradGuard no_grad;
    for (torch::Tensor& p : params_) p.mul_(0.999).add_(1e-4);
  }
  // One parameter tensor (rotating), the per-iteration update of a training loop.
  void update_one() {
    torch::NoGradGuard no_grad;
    params_[next_++ % params_.size()].mul_(0.999).add_(1e-4);
  }
  const std::vector<torch::Tensor>& params() const { return params_; }

 private:
  std::string work_dir_;
  c10::impl::GenericDict state_dict_;
  std::vector<torch::Tensor> params_;
  size_t next_ = 0;
};

// The baseline: write `size` bytes of `buf` into a new file, fdatasync, close (then remove it,
// untimed). Seconds.
inline double raw_write_seconds(const std::string& path, const std::vector<char>& buf,
                                size_t size) {
  auto t0 = Clock::now();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("open " + path + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::write(fd, buf.data() + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::runtime_error("write " + path + ": " + std::strerror(errno));
    done += static_cast<size_t>(n);
  }
  if (::fdatasync(fd) != 0) throw std::runtime_error("fdatasync " + path);
  if (::close(fd) != 0) throw std::runtime_error("close " + path);
  const double s = seconds_since(t0);
  std::filesystem::remove(path);
  return s;
}

// Saves every epoch, the model only (sync: the synchronous path, for comparison).
inline HookConfig save_config(bool sync) {
  HookConfig c;
  c.interval = 1;
  c.by_epoch = true;
  c.sync = sync;
  c.save_optimizer = false;
  c.save_param_scheduler = false;
  return c;
}

// Counts warnings and errors (a bench whose hook complained reports it).
struct Logs {
  int warnings = 0, errors = 0;
  std::string first;
  LogSink sink() {
    return [this](LogLevel level, const std::string& msg) {
      if (level == LogLevel::kInfo) return;
      (level == LogLevel::kWarning ? warnings : errors)++;
      if (first.empty()) first = msg;
    };
  }
};

struct TimedSave {
  double stall = 0;  // seconds the hook call blocked the training thread
  double idle = 0;   // seconds from the call until wait_idle() returned (durable)
  uintmax_t bytes = 0;
};

// One save through `hook` at the end of epoch `epoch`; `after_call` runs right after the hook
// returns (say, an optimizer step mutating the tensors while an async writer works). The file is
// removed afterwards, untimed, so that every save goes to a fresh file.
template <typename AfterCall>
TimedSave timed_save(CheckpointHook& hook, BenchRunner& runner, int64_t epoch,
                     AfterCall&& after_call) {
  runner.set_counters(epoch, 0);
  TimedSave t;
  auto t0 = Clock::now();
  hook.after_train_epoch(runner);
  t.stall = seconds_since(t0);
  after_call();
  hook.wait_idle();
  t.idle = seconds_since(t0);
  if (hook.last_stage_saves().size() != 1) throw std::runtime_error("expected one save");
  const std::string path = hook.last_stage_saves().front();
  t.bytes = std::filesystem::file_size(path);
  std::filesystem::remove(path);
  return t;
}

}  // namespace ckptledger::bench
