// `ckptledger-train export SOURCE -o FILE.pth`: one checkpoint, whatever its layout, as one file in
// MMEngine's layout that Python's torch.load opens (docs/cli.md: export a checkpoint).
//
// SOURCE is a work_dir or a ledger file: the newest committed regular checkpoint whose every part
// verifies (size and SHA-256 of each, as a resume chooses); or a checkpoint file: that checkpoint,
// which must be live in the ledger of its directory (or of `ledger`). A file that no ledger has
// recorded is exported as it is, after checking that it loads and is a whole checkpoint (not a
// part, not a "spread" checkpoint's part 0).
//
// What is written, by the checkpoint's layout (docs/distributed.md):
//   one process, "main"  the file's bytes, checked against the recorded SHA-256 as they are copied
//   "spread"             the parts assembled (assemble_spread): the replicated checkpoint
//   "sharded"            rank 0's part, with "optimizer_shards": every rank's "optimizer" value
//   (None
//                        where a part has none), in rank order, rank 0 first. "optimizer" stays
//                        rank 0's, so the file also resumes or loads as an ordinary checkpoint.
// The output is written durably (temp file, fsync, rename, directory fsync); an existing output is
// refused unless `force`, and so is an output that is the checkpoint or one of its parts.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ckptledger {

struct ExportOptions {
  std::string source;                 // work_dir, ledger file, or checkpoint file
  std::string output;                 // FILE.pth
  std::optional<std::string> ledger;  // the ledger (or work_dir) that lists a checkpoint SOURCE
  bool force = false;                 // replace an existing output
};

struct ExportResult {
  std::string checkpoint;  // "" when no checkpoint of the work_dir verifies (nothing written)
  std::string ledger;      // "" for a file no ledger recorded
  std::string layout;      // "main", "spread", "sharded"; "" for one process or an unrecorded file
  int64_t parts = 1;
  int64_t step = 0;
  uint64_t bytes = 0;  // of the output
  std::string sha256;  // of the output
  // Newer candidates of the work_dir that did not verify: (checkpoint, reason), newest first.
  std::vector<std::pair<std::string, std::string>> skipped;
};

// Throws Error: kNotFound (no such source, no ledger at --ledger, a checkpoint the ledger does not
// hold live), kCorruption (a named checkpoint's part missing or damaged: the message names the
// part and the checkpoint), kInvalidArgument (an existing output without `force`, a part or a
// "spread" part 0 given as a plain file), kIOError.
ExportResult export_checkpoint(const ExportOptions& options);

}  // namespace ckptledger
