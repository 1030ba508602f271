// The "spread" layout's bodies and their assembly (docs/distributed.md).
//
// The replicated checkpoint's tensors, numbered in depth-first order through its dicts, lists
// and tuples, are divided among the ranks by bytes: largest first, each to the rank with the
// fewest bytes so far (ties: the lower rank). Equal checkpoints give equal assignments on every
// rank, with no exchange. Rank 0 writes the checkpoint itself with every other rank's tensor
// replaced by the string "ckptledger-part:<rank>:<number>"; rank r > 0 writes
// {"ckptledger_part": {"layout", "rank", "world_size"}, "tensors": {"<number>": tensor, ...}}.
// Each body is a file torch.load opens.
#pragma once

#include <string>
#include <vector>

#include <ATen/core/ivalue.h>

namespace ckptledger {

// The rank of each tensor of `ckpt`, in depth-first order.
std::vector<int> assign_spread(const c10::IValue& ckpt, int world);

// What `rank` writes of `ckpt` (its tensors are shared with `ckpt`, not copied).
c10::IValue spread_body(const c10::IValue& ckpt, int rank, int world);

// The checkpoint from part 0 and the other parts in rank order (`others[r - 1]` is part r).
// Error(kCorruption) names a placeholder whose tensor no part holds.
c10::IValue assemble_spread(const c10::IValue& part0, const std::vector<c10::IValue>& others);

// Whether a loaded file is a "spread" part of rank > 0 (it has "ckptledger_part").
bool is_spread_part(const c10::IValue& body);

// Whether a loaded file holds a placeholder: part 0 of a "spread" checkpoint read without its
// other parts.
bool has_spread_placeholder(const c10::IValue& body);

}  // namespace ckptledger
