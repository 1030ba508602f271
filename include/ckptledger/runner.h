// Runner: what CheckpointHook needs from a training loop (MMEngine's runner, spec §1, §8, §10).
//
// The loop owns the runner; the hook calls it on the training thread only. Counters follow spec §1:
// epoch() is E (0-based, completed epochs once an epoch ends), iter() is I (iterations done).
#pragma once

#include <ATen/core/Dict.h>
#include <ATen/core/ivalue.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ckptledger {

enum class LogLevel { kInfo, kWarning, kError };
const char* log_level_name(LogLevel level);  // "INFO" | "WARNING" | "ERROR"
using LogSink = std::function<void(LogLevel, const std::string&)>;

// A validation's metrics in the order the evaluator produced them; nullopt is Python's None.
using Metrics = std::vector<std::pair<std::string, std::optional<double>>>;

class Runner {
 public:
  virtual ~Runner() = default;
  virtual int64_t epoch() const = 0;
  virtual int64_t iter() const = 0;
  virtual int64_t max_epochs() const = 0;
  virtual int64_t max_iters() const = 0;
  virtual std::string work_dir() const = 0;  // absolute

  // The parts of MMEngine's runner.save_checkpoint that are the runner's: "state_dict" (name ->
  // tensor), "optimizer" and "param_schedulers" when asked for and available. Tensors may be the
  // live ones: the hook snapshots them before the call returns.
  virtual c10::impl::GenericDict checkpoint_state(bool with_optimizer, bool with_schedulers) = 0;
  virtual bool has_param_schedulers() const = 0;
  // Extra meta keys (seed, experiment_name, cfg, ...); epoch/iter are the hook's.
  virtual c10::impl::GenericDict meta_extra() const {
    return c10::impl::GenericDict(c10::StringType::get(), c10::AnyType::get());
  }
  // Restores a checkpoint's content: weights always; optimizer, schedulers and counters (from
  // meta) when `resume`.
  virtual void load_checkpoint(const c10::impl::GenericDict& ckpt, bool resume) = 0;
};

}  // namespace ckptledger
