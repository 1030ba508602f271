// Durable file operations: the only way ckptledger puts bytes under a checkpoint's name.
//
// write_durably: temp file beside the destination -> stream + SHA-256 on the fly -> fdatasync ->
// rename over the destination -> fsync the directory (LevelDB SetCurrentFile, PyTorch DCP). A
// failure removes the temp file and leaves the destination as it was.
//
// Performance: the SHA-256 of a large file runs on a second thread, overlapped with the producer
// (serialisation, zip CRC-32) and the kernel's copy; writeback is started every few MiB
// (sync_file_range) so that the final fdatasync waits only for the tail.
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

// How long the chunks that `produce` hands to the sink stay valid and unchanged.
enum class ChunkLifetime {
  // Only during the sink call (any producer: reused buffers, temporaries). The sink returns once
  // the chunk is written and hashed; small chunks are copied for the hashing thread.
  kCall,
  // Until write_durably returns (say CPU tensors nobody mutates meanwhile): the hash may trail
  // the writes, so the producer's next chunk overlaps the hashing of this one.
  kWholeWrite,
};

struct WrittenFile {
  uint64_t bytes = 0;
  std::string sha256;  // lowercase hex
};

// Suffix of temp files; a file ending in it is never a checkpoint (reconciliation removes them).
inline constexpr const char* kTempSuffix = ".ckptledger-tmp";

// Creates missing parent directories of `path`. Throws Error(kIOError) naming the directory.
void make_parent_dirs(const std::string& path);

// `produce` writes the content into the sink it is given. Throws Error(kIOError) naming `path`;
// an exception from `produce` propagates unchanged. Either way the temp file is removed and no
// thread started here is left running.
WrittenFile write_durably(const std::string& path,
                          const std::function<void(const ByteSink&)>& produce,
                          FileSystem& fs = FileSystem::posix(),
                          ChunkLifetime chunks = ChunkLifetime::kCall);

// write_durably of a small text (last_checkpoint).
void write_text_durably(const std::string& path, const std::string& text,
                        FileSystem& fs = FileSystem::posix());

// Removes a file (a directory recursively, as MMEngine does for DeepSpeed layouts) and fsyncs its
// directory. Returns false when there was nothing to remove.
bool remove_durably(const std::string& path, FileSystem& fs = FileSystem::posix());

}  // namespace ckptledger
