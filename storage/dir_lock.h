// DirLock: one training process per directory. The ledger's own lock (Ledger::open) guards the
// ledger file; a process given another `ledger_path` would still write checkpoints into a work_dir
// (or out_dir) that another process is writing, overwriting its committed files. So the hook also
// holds a lock in each directory it writes: an OFD write lock on <dir>/.ckptledger.lock, which dies
// with its process (kill -9 included) and is taken whatever `ledger_path` says.
//
// The file holds the holder's pid, host and ledger, for the message of the process refused. It is
// never deleted (deleting it would let two processes lock two different files of the same name).
#pragma once

#include <memory>
#include <string>

namespace ckptledger {

inline constexpr const char* kDirLockName = ".ckptledger.lock";

class DirLock {
 public:
  // Locks `dir` for the calling process. Throws Error(kBusy) naming the holder when another
  // process (or another open in this one) holds it, Error(kIOError) when the file cannot be
  // created or locked.
  static std::unique_ptr<DirLock> acquire(const std::string& dir, const std::string& ledger_path);
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

 private:
  DirLock() = default;
  int fd_ = -1;
};

}  // namespace ckptledger
