// Runner: what CheckpointHook needs from a training loop (the part of MMEngine's runner it uses:
// counters, checkpoint content, loading).
//
// The loop owns the runner; the hook calls it on the training thread only. Counters are MMEngine's:
// epoch() is E (0-based, completed epochs once an epoch ends), iter() is I (iterations done).
#pragma once

#include <ATen/core/Dict.h>
#include <ATen/core/ivalue.h>

#include "ckptledger/log.h"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ckptledger {

struct JobGroup;  // ckptledger/distributed.h

// A checkpoint's dictionaries as PyTorch writes them (str -> any: tensors, numbers, strings,
// lists, nested dicts). `Dict d = make_dict(); d.insert("lr", 0.1);`
using Dict = c10::impl::GenericDict;
using List = c10::impl::GenericList;
inline Dict make_dict() { return Dict(c10::StringType::get(), c10::AnyType::get()); }
inline List make_list() { return List(c10::AnyType::get()); }

class Runner {
 public:
  virtual ~Runner();
  virtual int64_t epoch() const = 0;
  virtual int64_t iter() const = 0;
  virtual int64_t max_epochs() const = 0;
  virtual int64_t max_iters() const = 0;
  virtual std::string work_dir() const = 0;  // absolute

  // The parts of MMEngine's runner.save_checkpoint that are the runner's: "state_dict" (name ->
  // tensor), "optimizer" and "param_schedulers" when asked for and available. Tensors may be the
  // live ones: the hook snapshots them before the call returns. Any other key of the returned dict
  // (RNG state, a data loader's position, ...) is saved after these, as it is; "meta" and
  // "message_hub" are the hook's and are not taken from here.
  virtual Dict checkpoint_state(bool with_optimizer, bool with_schedulers) = 0;
  virtual bool has_param_schedulers() const = 0;
  // Extra meta keys (seed, experiment_name, cfg, ...); epoch/iter are the hook's.
  virtual Dict meta_extra() const;  // default: none
  // Restores a checkpoint's content: weights always; optimizer, schedulers and counters (from
  // meta) when `resume`.
  virtual void load_checkpoint(const Dict& ckpt, bool resume) = 0;
  // The job of several ranks this runner trains in (ckptledger/distributed.h), or nullptr (the
  // default): a process alone. The reference loops (loops.h) join the hook to it.
  virtual const JobGroup* job() const;
};

}  // namespace ckptledger
