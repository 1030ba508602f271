#include "hook/durable_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

#include "ledger/error.h"
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

// Chunks below this size (zip headers, small records) are copied for the hashing thread; larger
// ones are hashed where they lie.
constexpr size_t kCopyBelow = 64 << 10;
// Bounds of the hashing queue: queued chunks, and bytes held in copies.
constexpr size_t kMaxQueued = 256;
constexpr size_t kMaxCopiedBytes = 1 << 20;
// The hashing thread checks for an abort between pieces of this size.
constexpr size_t kHashPiece = 1 << 20;
// One write() call carries at most this much, and writeback starts every this many bytes.
size_t write_piece() {
  static const size_t v = [] {
    const char* e = std::getenv("CKPT_EXP_PIECE");
    return e ? static_cast<size_t>(std::atoll(e)) : static_cast<size_t>(8 << 20);
  }();
  return v;
}
size_t writeback_every() {
  static const size_t v = [] {
    const char* e = std::getenv("CKPT_EXP_WB");
    return e ? static_cast<size_t>(std::atoll(e)) : static_cast<size_t>(8 << 20);
  }();
  return v;
}
int exp_mode() {  // EXPERIMENT: 0 serial, 1 parallel as asked, 2 force kWholeWrite
  static const int v = [] {
    const char* e = std::getenv("CKPT_EXP_MODE");
    return e ? std::atoi(e) : 1;
  }();
  return v;
}

// SHA-256 of a byte stream on a second thread, in submission order, fed through a bounded queue.
// Construction starts the thread; destruction aborts whatever is left and joins it.
class BackgroundSha256 {
 public:
  explicit BackgroundSha256(Sha256& sha) : sha_(sha), thread_([this] { run(); }) {}
  ~BackgroundSha256() { stop(); }
  BackgroundSha256(const BackgroundSha256&) = delete;
  BackgroundSha256& operator=(const BackgroundSha256&) = delete;

  // Queues a chunk that stays valid until wait_for(ticket) returns (or stop()); returns the ticket.
  uint64_t submit_ref(const char* data, size_t size) { return push(Item{data, size, {}}); }
  // Queues a copy of a chunk.
  void submit_copy(const char* data, size_t size) {
    Item item{nullptr, size, std::vector<char>(data, data + size)};
    push(std::move(item));
  }
  // Blocks until every chunk up to `ticket` is hashed; rethrows the thread's failure.
  void wait_for(uint64_t ticket) {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return hashed_ >= ticket || error_ || stopped_; });
    if (error_) std::rethrow_exception(error_);
  }
  // Hashes everything queued, then joins the thread; the digest is complete after it returns.
  void finish() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
    }
    work_cv_.notify_one();
    join();
    if (error_) std::rethrow_exception(error_);
  }
  // Abandons the queue and joins the thread: no chunk is touched after it returns.
  void stop() {
    abort_.store(true, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
    }
    work_cv_.notify_one();
    join();
  }

 private:
  struct Item {
    const char* data;  // null: the bytes are in `copy`
    size_t size;
    std::vector<char> copy;
  };

  uint64_t push(Item item) {
    std::unique_lock<std::mutex> lock(mu_);
    space_cv_.wait(lock, [&] {
      return error_ || stopped_ ||
             (queue_.size() < kMaxQueued && copied_ + item.copy.size() <= kMaxCopiedBytes) ||
             queue_.empty();
    });
    if (error_) std::rethrow_exception(error_);
    if (stopped_) throw std::logic_error("write_durably: hashing thread stopped");
    copied_ += item.copy.size();
    queue_.push_back(std::move(item));
    const uint64_t ticket = ++submitted_;
    lock.unlock();
    work_cv_.notify_one();
    return ticket;
  }

  void run() {
    try {
      for (;;) {
        Item item;
        {
          std::unique_lock<std::mutex> lock(mu_);
          work_cv_.wait(lock, [&] { return !queue_.empty() || closing_; });
          if (queue_.empty() || abort_.load(std::memory_order_relaxed)) break;
          item = std::move(queue_.front());
          queue_.pop_front();
        }
        const char* p = item.data ? item.data : item.copy.data();
        for (size_t off = 0; off < item.size; off += kHashPiece) {
          if (abort_.load(std::memory_order_relaxed)) break;
          sha_.update(p + off, std::min(kHashPiece, item.size - off));
        }
        {
          std::lock_guard<std::mutex> lock(mu_);
          copied_ -= item.copy.size();
          ++hashed_;
        }
        done_cv_.notify_all();
        space_cv_.notify_one();
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopped_ = true;
    }
    done_cv_.notify_all();
    space_cv_.notify_all();
  }

  void join() {
    if (thread_.joinable()) thread_.join();
  }

  Sha256& sha_;  // touched only by the thread while it runs
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_, space_cv_;
  std::deque<Item> queue_;
  size_t copied_ = 0;
  uint64_t submitted_ = 0, hashed_ = 0;
  bool closing_ = false, stopped_ = false;
  std::exception_ptr error_;
  std::atomic<bool> abort_{false};
  std::thread thread_;  // last: started after every other member is ready
};

}  // namespace

int FileSystem::open(const char* path, int flags, mode_t mode) { return ::open(path, flags, mode); }
ssize_t FileSystem::write(int fd, const void* data, size_t size) { return ::write(fd, data, size); }
int FileSystem::fdatasync(int fd) { return ::fdatasync(fd); }
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
                          ChunkLifetime chunks) {
  make_parent_dirs(path);
  fs::path p(path);
  std::string dir = p.parent_path().string();
  TempFile tmp((p.parent_path() / ("." + p.filename().string() + kTempSuffix)).string(), fsys);
  if (exp_mode() == 2) chunks = ChunkLifetime::kWholeWrite;
  Sha256 sha;
  // Started at the first large chunk: small files are hashed inline, without a thread.
  std::optional<BackgroundSha256> hasher;
  WrittenFile out;
  uint64_t writeback_from = 0;
  std::exception_ptr sink_error;  // the sink's first failure; it is not called again after one

  auto write_all = [&](const char* b, size_t size) {
    while (size > 0) {
      ssize_t n = fsys.write(tmp.fd(), b, std::min(size, write_piece()));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) io_fail("cannot write", path, errno);
      b += n;
      size -= static_cast<size_t>(n);
      out.bytes += static_cast<uint64_t>(n);
      if (writeback_every() > 0 && out.bytes - writeback_from >= writeback_every()) {
        fsys.start_writeback(tmp.fd(), static_cast<off_t>(writeback_from),
                             static_cast<off_t>(out.bytes - writeback_from));
        writeback_from = out.bytes;
      }
    }
  };

  produce([&](const void* data, size_t size) {
    if (sink_error) std::rethrow_exception(sink_error);
    const char* b = static_cast<const char*>(data);
    try {
      if (exp_mode() == 0) {
        sha.update(b, size);
        write_all(b, size);
        return;
      }
      if (size < kCopyBelow) {
        if (hasher) {
          hasher->submit_copy(b, size);
        } else {
          sha.update(b, size);
        }
        write_all(b, size);
        return;
      }
      if (!hasher) hasher.emplace(sha);
      const uint64_t ticket = hasher->submit_ref(b, size);
      write_all(b, size);
      if (chunks == ChunkLifetime::kCall) hasher->wait_for(ticket);
    } catch (...) {
      // The chunk may go away once the exception leaves the sink: the hashing thread must be
      // done with it first.
      if (hasher) hasher->stop();
      sink_error = std::current_exception();
      throw;
    }
  });
  if (sink_error) std::rethrow_exception(sink_error);  // the producer swallowed it
  // The disk finishes while the hash catches up.
  if (fsys.fdatasync(tmp.fd()) != 0) io_fail("cannot fdatasync", path, errno);
  if (hasher) hasher->finish();
  tmp.close_checked();
  if (fsys.rename(tmp.path().c_str(), path.c_str()) != 0) {
    io_fail("cannot rename onto", path, errno);
  }
  tmp.release();
  fsync_dir(dir, fsys);
  out.sha256 = sha.hex_digest();
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
