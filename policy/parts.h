// The files of a checkpoint written by several ranks (docs/distributed.md).
//
// Part 0 is the checkpoint's own path (rank 0 writes it: the whole checkpoint in the "main"
// layout, the skeleton and rank 0's share in "spread", rank 0's state in "sharded"). Part r > 0
// is a file beside it, named per save so that no rename ever replaces a part another checkpoint
// still lists: <stem>.part<r>-r<run>s<save>.pth, where <run> is the ledger's run count and <save>
// the save's number within the run (the same on every rank: every rank makes the same saves).
// A part no live checkpoint lists is an orphan (a save that never committed, or one pruned):
// reconciliation removes it.
#pragma once

#include <cstdint>
#include <string>

namespace ckptledger {

inline std::string part_path(const std::string& checkpoint, int rank, int64_t run, int64_t save) {
  std::string stem = checkpoint;
  if (stem.size() > 4 && stem.compare(stem.size() - 4, 4, ".pth") == 0)
    stem.resize(stem.size() - 4);
  return stem + ".part" + std::to_string(rank) + "-r" + std::to_string(run) + "s" +
         std::to_string(save) + ".pth";
}

// Whether a file name is a part's (<anything>.part<digits>-r<digits>s<digits>.pth).
inline bool is_part_name(const std::string& name) {
  if (name.size() < 4 || name.compare(name.size() - 4, 4, ".pth") != 0) return false;
  const size_t at = name.rfind(".part");
  if (at == std::string::npos || at == 0) return false;
  size_t i = at + 5;
  auto digits = [&]() {
    const size_t from = i;
    while (i < name.size() && name[i] >= '0' && name[i] <= '9') ++i;
    return i > from;
  };
  auto expect = [&](char c) { return i < name.size() && name[i++] == c; };
  return digits() && expect('-') && expect('r') && digits() && expect('s') && digits() &&
         i == name.size() - 4;
}

}  // namespace ckptledger
