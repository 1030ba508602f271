// Durable file operations: the only way ckptledger puts bytes under a checkpoint's name.
//
// write_durably: temp file beside the destination -> stream + SHA-256 on the fly -> fdatasync ->
// rename over the destination -> fsync the directory (LevelDB SetCurrentFile, PyTorch DCP). A
// failure removes the temp file and leaves the destination as it was.
//
// Performance: a large file is copied into a few page-aligned 1 MiB blocks; a hashing thread
// (SHA-256) and a writing thread (O_DIRECT where the filesystem takes it, else buffered with
// writeback started every few MiB) work on each block while the producer fills the next one.
// O_DIRECT spares the CPU the kernel's page-cache copy and leaves training's page cache alone.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace ckptledger {

// The filesystem seam (LevelDB Env): POSIX calls with POSIX conventions (-1 and errno on
// failure). Tests derive from it to inject ENOSPC, EIO, failed renames and slow disks.
class FileSystem {
 public:
  virtual ~FileSystem() = default;
  virtual int open(const char* path, int flags, mode_t mode);
  virtual ssize_t write(int fd, const void* data, size_t size);
  virtual int fdatasync(int fd);
  // Turns O_DIRECT on or off for an open file (fcntl F_SETFL); -1 where the filesystem refuses.
  virtual int set_direct_io(int fd, bool on);
  // Starts writeback of a written range without waiting for it (Linux sync_file_range with
  // SYNC_FILE_RANGE_WRITE): a hint, never a durability guarantee; callers ignore its failures
  // (fdatasync reports them).
  virtual int start_writeback(int fd, off_t offset, off_t size);
  virtual int fsync(int fd);
  virtual int close(int fd);
  virtual int rename(const char* from, const char* to);
  virtual int unlink(const char* path);
  static FileSystem& posix();
};

// Receives the file's bytes in order; returns when they are written (throws on failure).
using ByteSink = std::function<void(const void* data, size_t size)>;

struct WrittenFile {
  uint64_t bytes = 0;
  std::string sha256;  // lowercase hex
};

// Memory a large write_durably uses for its blocks, whatever the file's size.
inline constexpr size_t kWriteBlockBytes = 1 << 20;
inline constexpr size_t kWriteBlocks = 4;

// Suffix of temp files; a file ending in it is never a checkpoint (reconciliation removes them).
inline constexpr const char* kTempSuffix = ".ckptledger-tmp";

// Creates missing parent directories of `path`. Throws Error(kIOError) naming the directory.
void make_parent_dirs(const std::string& path);

// `produce` writes the content into the sink it is given; a chunk need only stay valid during
// the sink call (it is copied). Throws Error(kIOError) naming `path`; an exception from `produce`
// propagates unchanged. Either way the temp file is removed and no thread started here is left
// running. `before_rename`, when set, is called with the size and SHA-256 once the bytes are
// durable under the temp name and before the rename (the hook records a replacement there); an
// exception from it aborts the write the same way.
WrittenFile write_durably(const std::string& path,
                          const std::function<void(const ByteSink&)>& produce,
                          FileSystem& fs = FileSystem::posix(),
                          const std::function<void(const WrittenFile&)>& before_rename = nullptr);

// write_durably of a small text (last_checkpoint).
void write_text_durably(const std::string& path, const std::string& text,
                        FileSystem& fs = FileSystem::posix());

// Removes a file (a directory recursively, as MMEngine does for DeepSpeed layouts) and fsyncs its
// directory. Returns false when there was nothing to remove.
bool remove_durably(const std::string& path, FileSystem& fs = FileSystem::posix());

}  // namespace ckptledger
