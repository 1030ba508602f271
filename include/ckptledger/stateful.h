// Stateful: a user object whose state a checkpoint carries (a data loader's position, a custom
// scheduler, an EMA model), like torch.distributed.checkpoint's Stateful protocol. Register it
// with TorchRunner::add_stateful under a key of the checkpoint.
//
// state_dict() is called on the training thread at each save; its tensors may be the live ones
// (the hook snapshots them before the save returns). load_state_dict() is called on resume with
// what a state_dict() returned (read back from the file: ints are int64, floats double, lists
// generic); it should validate before it changes anything and throw ckptledger::Error
// (kInvalidArgument) naming the key it refuses.
#pragma once

#include "ckptledger/runner.h"

namespace ckptledger {

class Stateful {
 public:
  virtual ~Stateful();
  virtual Dict state_dict() = 0;
  virtual void load_state_dict(const Dict& state) = 0;
};

}  // namespace ckptledger
