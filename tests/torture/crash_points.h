// Crash points for the crash-at-every-durable-step test (tests/crash_steps_test.py): one
// process-wide, ordered count of the operations that change what is on disk, and a SIGKILL just
// before the K-th of them.
//
// Counted, in the order they happen (one mutex):
//   - through the hook's FileSystem seam (CrashPointFileSystem): open with O_CREAT, write,
//     fdatasync, fsync, rename, unlink;
//   - through a SQLite VFS shim registered as the default VFS (install_sqlite_crash_points): the
//     first xWrite to a file after its last xSync (a ledger transaction starts: killed there, it
//     never happened), every xSync (killed there, its frames are written: a process kill keeps
//     them), xTruncate and xDelete.
// A kill between a transaction's first write and its sync leaves a partly written WAL that SQLite
// ignores on the next open: the same state as a kill before its first write.
#pragma once

#include <cstdint>
#include <string>

#include "storage/durable_file.h"

namespace crash_points {

// Kill the process just before operation `k` (1-based; 0 = never).
void arm(int64_t k);
// Record every operation; write_log() writes them, one "N OP PATH" line each.
void record_to(const std::string& log_path);
void write_log();
// Counts `op` on `path`; SIGKILLs the process first when it is the armed one.
void count(const char* op, const std::string& path);

// The FileSystem seam with every durable operation counted.
class CrashPointFileSystem : public ckptledger::FileSystem {
 public:
  int open(const char* path, int flags, mode_t mode) override;
  ssize_t write(int fd, const void* data, size_t size) override;
  int fdatasync(int fd) override;
  int fsync(int fd) override;
  int rename(const char* from, const char* to) override;
  int unlink(const char* path) override;
};

// Registers the counting VFS as SQLite's default (before any ledger is opened).
void install_sqlite_crash_points();

}  // namespace crash_points
