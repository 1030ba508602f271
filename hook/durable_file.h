// Durable file operations: the only way ckptledger puts bytes under a checkpoint's name.
//
// write_durably: temp file beside the destination -> stream + SHA-256 on the fly -> fdatasync ->
// rename over the destination -> fsync the directory (LevelDB SetCurrentFile, PyTorch DCP). A
// failure removes the temp file and leaves the destination as it was.
#pragma once

#include <sys/types.h>

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

// Suffix of temp files; a file ending in it is never a checkpoint (reconciliation removes them).
inline constexpr const char* kTempSuffix = ".ckptledger-tmp";

// Creates missing parent directories of `path`. Throws Error(kIOError) naming the directory.
void make_parent_dirs(const std::string& path);

// `produce` writes the content into the sink it is given. Throws Error(kIOError) naming `path`.
WrittenFile write_durably(const std::string& path,
                          const std::function<void(const ByteSink&)>& produce,
                          FileSystem& fs = FileSystem::posix());

// write_durably of a small text (last_checkpoint).
void write_text_durably(const std::string& path, const std::string& text,
                        FileSystem& fs = FileSystem::posix());

// Removes a file (a directory recursively, as MMEngine does for DeepSpeed layouts) and fsyncs its
// directory. Returns false when there was nothing to remove.
bool remove_durably(const std::string& path, FileSystem& fs = FileSystem::posix());

}  // namespace ckptledger
