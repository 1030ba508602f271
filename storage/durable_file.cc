#include "storage/durable_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <mutex>
#include <new>
#include <system_error>
#include <thread>
#include <vector>

#include "ckptledger/error.h"
#include "ledger/sha256.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void io_fail(const std::string& what, const std::string& path, int err) {
  throw_error(ErrorCode::kIOError, what + " " + path + ": " + std::strerror(err));
}

void fsync_dir(const std::string& dir, FileSystem& fs) {
  const std::string d = dir.empty() ? "." : dir;
  int fd = fs.open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0) io_fail("cannot open directory", d, errno);
  if (fs.fsync(fd) != 0) {
    int err = errno;
    fs.close(fd);
    io_fail("cannot fsync directory", d, err);
  }
  fs.close(fd);
}

// Closes and unlinks the temp file unless released: a failed write leaves nothing behind.
class TempFile {
 public:
  TempFile(std::string path, FileSystem& fs) : path_(std::move(path)), fs_(fs) {
    fd_ = fs_.open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) io_fail("cannot create", path_, errno);
  }
  ~TempFile() {
    if (fd_ >= 0) fs_.close(fd_);
    if (!released_) fs_.unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  void close_checked() {
    int rc = fs_.close(fd_);
    fd_ = -1;
    if (rc != 0) io_fail("cannot close", path_, errno);
  }
  void release() { released_ = true; }

 private:
  std::string path_;
  FileSystem& fs_;
  int fd_ = -1;
  bool released_ = false;
};

// Large files go through page-aligned blocks of kBlockSize: the caller's thread copies the stream
// into them, and each full block is handed to two threads at once: one hashes it (SHA-256), one
// writes it, with O_DIRECT where the filesystem allows (the device reads the block itself; a
// buffered write() costs the kernel about as much CPU per byte as SHA-256 on this kind of VM, and
// evicts the page cache training uses). A block is reused once both are done with it, so the
// memory is kBlocks * kBlockSize whatever the file's size. Files smaller than one block are
// hashed and written inline, buffered, without threads.
constexpr size_t kBlockSize = kWriteBlockBytes;
constexpr size_t kBlocks = kWriteBlocks;
constexpr size_t kAlignment = 4096;  // O_DIRECT: buffer address, file offset and length
// Buffered writes (no O_DIRECT) start writeback every this many bytes, so that the final
// fdatasync waits only for the tail.
constexpr uint64_t kWritebackEvery = 8 << 20;

class BlockPipeline {
 public:
  BlockPipeline(int fd, const std::string& path, FileSystem& fs, Sha256& sha)
      : fd_(fd), path_(path), fs_(fs), sha_(sha), blocks_(kBlocks) {}
  ~BlockPipeline() {
    stop();
    for (Block& b : blocks_) {
      if (b.mem) ::munmap(b.mem, kBlockSize);
    }
  }
  BlockPipeline(const BlockPipeline&) = delete;
  BlockPipeline& operator=(const BlockPipeline&) = delete;

  // Copies the bytes in; every block that fills up is handed over. Rethrows a thread's failure.
  void append(const char* data, size_t size) {
    while (size > 0) {
      if (current_ == kNone) current_ = acquire();
      Block& b = blocks_[current_];
      const size_t n = std::min(size, kBlockSize - b.used);
      std::memcpy(b.mem + b.used, data, n);
      b.used += n;
      data += n;
      size -= n;
      if (b.used == kBlockSize) dispatch();
    }
  }

  // Hands the last block over and waits until every byte is written and hashed.
  void finish() {
    if (!started_) {  // smaller than a block: inline
      if (current_ != kNone) {
        const Block& b = blocks_[current_];
        sha_.update(b.mem, b.used);
        write_block(b, /*last=*/true);
      }
      return;
    }
    if (current_ != kNone) dispatch();
    std::unique_lock<std::mutex> lock(mu_);
    closing_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return error_ || (to_hash_.empty() && to_write_.empty() && busy_ == 0); });
    if (error_) std::rethrow_exception(error_);
  }

  // Abandons whatever is queued and joins the threads.
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = closing_ = true;
    }
    cv_.notify_all();
    if (hasher_.joinable()) hasher_.join();
    if (writer_.joinable()) writer_.join();
  }

  uint64_t bytes() const { return written_; }

 private:
  static constexpr size_t kNone = static_cast<size_t>(-1);
  struct Block {
    char* mem = nullptr;
    size_t used = 0;
    int users = 0;  // threads that have yet to process it
  };

  size_t acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    size_t found = kNone;
    cv_.wait(lock, [&] {
      if (error_) return true;
      for (size_t i = 0; i < blocks_.size(); ++i) {
        if (blocks_[i].users == 0 && i != current_) {
          found = i;
          return true;
        }
      }
      return false;
    });
    if (error_) std::rethrow_exception(error_);
    Block& b = blocks_[found];
    if (!b.mem) {
      // Mapped, not malloc'ed: page-aligned, and returned to the system when the write ends
      // (a malloc arena would keep them resident in every thread that ever wrote a file).
      void* mem =
          ::mmap(nullptr, kBlockSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (mem == MAP_FAILED) throw std::bad_alloc();
      b.mem = static_cast<char*>(mem);
    }
    b.used = 0;
    return found;
  }

  void dispatch() {
    if (!started_) {
      started_ = true;
      hasher_ = std::thread([this] { run(&BlockPipeline::hash_one, to_hash_); });
      writer_ = std::thread([this] { run(&BlockPipeline::write_one, to_write_); });
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (error_) std::rethrow_exception(error_);
      blocks_[current_].users = 2;
      to_hash_.push_back(current_);
      to_write_.push_back(current_);
    }
    current_ = kNone;
    cv_.notify_all();
  }

  // A consumer thread: takes blocks from `queue` in order until closing and drained (or stopped,
  // or another thread failed).
  void run(void (BlockPipeline::*work)(const Block&), std::deque<size_t>& queue) {
    for (;;) {
      size_t i;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || error_ || !queue.empty() || closing_; });
        if (stopping_ || error_ || queue.empty()) return;
        i = queue.front();
        queue.pop_front();
        ++busy_;
      }
      std::exception_ptr failure;
      try {
        (this->*work)(blocks_[i]);
      } catch (...) {
        failure = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        --busy_;
        --blocks_[i].users;
        if (failure && !error_) error_ = failure;
      }
      cv_.notify_all();
    }
  }

  void hash_one(const Block& b) { sha_.update(b.mem, b.used); }
  void write_one(const Block& b) { write_block(b, b.used < kBlockSize); }

  void leave_direct() {
    direct_ = false;
    if (fs_.set_direct_io(fd_, false) != 0) io_fail("cannot leave O_DIRECT on", path_, errno);
  }

  // Writes a block at the end of the file. Only the writer thread calls it once threads run.
  void write_block(const Block& b, bool last) {
    if (!direct_tried_ && !last) {
      direct_tried_ = true;
      direct_ = fs_.set_direct_io(fd_, true) == 0;
    }
    if (direct_ && last && b.used % kAlignment != 0) {
      leave_direct();  // the tail is not a whole number of device blocks: finish it buffered
    }
    const char* p = b.mem;
    size_t left = b.used;
    while (left > 0) {
      ssize_t n = fs_.write(fd_, p, left);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EINVAL && direct_) {
        leave_direct();  // the filesystem takes O_DIRECT but not these writes: go buffered
        continue;
      }
      if (n < 0) io_fail("cannot write", path_, errno);
      p += n;
      left -= static_cast<size_t>(n);
      written_ += static_cast<uint64_t>(n);
    }
    if (!direct_ && written_ - writeback_from_ >= kWritebackEvery) {
      fs_.start_writeback(fd_, static_cast<off_t>(writeback_from_),
                          static_cast<off_t>(written_ - writeback_from_));
      writeback_from_ = written_;
    }
  }

  const int fd_;
  const std::string& path_;
  FileSystem& fs_;
  Sha256& sha_;  // touched by the hashing thread only, once it runs
  std::vector<Block>
      blocks_;              // a block's bytes: the producer's until dispatched, then the threads'
  size_t current_ = kNone;  // the block being filled (producer only)
  bool started_ = false;    // producer only
  // Writer thread only (or the producer before the threads start):
  bool direct_tried_ = false, direct_ = false;
  uint64_t written_ = 0, writeback_from_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<size_t> to_hash_, to_write_;
  int busy_ = 0;
  bool closing_ = false, stopping_ = false;
  std::exception_ptr error_;
  std::thread hasher_, writer_;  // last: started after every other member is ready
};

}  // namespace

int FileSystem::open(const char* path, int flags, mode_t mode) { return ::open(path, flags, mode); }
ssize_t FileSystem::write(int fd, const void* data, size_t size) { return ::write(fd, data, size); }
int FileSystem::fdatasync(int fd) { return ::fdatasync(fd); }
int FileSystem::set_direct_io(int fd, bool on) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return -1;
  return ::fcntl(fd, F_SETFL, on ? (flags | O_DIRECT) : (flags & ~O_DIRECT));
}
int FileSystem::start_writeback(int fd, off_t offset, off_t size) {
  return ::sync_file_range(fd, offset, size, SYNC_FILE_RANGE_WRITE);
}
int FileSystem::fsync(int fd) { return ::fsync(fd); }
int FileSystem::close(int fd) { return ::close(fd); }
int FileSystem::rename(const char* from, const char* to) { return ::rename(from, to); }
int FileSystem::unlink(const char* path) { return ::unlink(path); }

FileSystem& FileSystem::posix() {
  static FileSystem fs;
  return fs;
}

void make_parent_dirs(const std::string& path) {
  fs::path parent = fs::path(path).parent_path();
  if (parent.empty()) return;
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) io_fail("cannot create directory", parent.string(), ec.value());
}

WrittenFile write_durably(const std::string& path,
                          const std::function<void(const ByteSink&)>& produce, FileSystem& fsys,
                          const std::function<void(const WrittenFile&)>& before_rename) {
  make_parent_dirs(path);
  fs::path p(path);
  std::string dir = p.parent_path().string();
  TempFile tmp((p.parent_path() / ("." + p.filename().string() + kTempSuffix)).string(), fsys);
  Sha256 sha;
  WrittenFile out;
  {
    BlockPipeline pipeline(tmp.fd(), tmp.path(), fsys, sha);
    std::exception_ptr sink_error;  // the sink's first failure; it is not called again after one
    produce([&](const void* data, size_t size) {
      if (sink_error) std::rethrow_exception(sink_error);
      try {
        pipeline.append(static_cast<const char*>(data), size);
      } catch (...) {
        sink_error = std::current_exception();
        throw;
      }
    });
    if (sink_error) std::rethrow_exception(sink_error);  // the producer swallowed it
    pipeline.finish();
    out.bytes = pipeline.bytes();
  }  // both threads joined: the digest is complete
  if (fsys.fdatasync(tmp.fd()) != 0) io_fail("cannot fdatasync", path, errno);
  tmp.close_checked();
  out.sha256 = sha.hex_digest();
  if (before_rename) before_rename(out);  // throws: the temp file is removed, `path` untouched
  if (fsys.rename(tmp.path().c_str(), path.c_str()) != 0) {
    io_fail("cannot rename onto", path, errno);
  }
  tmp.release();
  fsync_dir(dir, fsys);
  return out;
}

void write_text_durably(const std::string& path, const std::string& text, FileSystem& fsys) {
  write_durably(
      path, [&](const ByteSink& sink) { sink(text.data(), text.size()); }, fsys);
}

bool remove_durably(const std::string& path, FileSystem& fsys) {
  std::error_code ec;
  auto st = fs::symlink_status(path, ec);
  if (ec || !fs::exists(st)) return false;
  if (fs::is_directory(st)) {
    fs::remove_all(path, ec);
    if (ec) io_fail("cannot remove", path, ec.value());
  } else if (fsys.unlink(path.c_str()) != 0) {
    io_fail("cannot remove", path, errno);
  }
  fsync_dir(fs::path(path).parent_path().string(), fsys);
  return true;
}

}  // namespace ckptledger
