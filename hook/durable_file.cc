#include "hook/durable_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

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

}  // namespace

int FileSystem::open(const char* path, int flags, mode_t mode) { return ::open(path, flags, mode); }
ssize_t FileSystem::write(int fd, const void* data, size_t size) { return ::write(fd, data, size); }
int FileSystem::fdatasync(int fd) { return ::fdatasync(fd); }
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
                          const std::function<void(const ByteSink&)>& produce, FileSystem& fsys) {
  make_parent_dirs(path);
  fs::path p(path);
  std::string dir = p.parent_path().string();
  TempFile tmp((p.parent_path() / ("." + p.filename().string() + kTempSuffix)).string(), fsys);
  Sha256 sha;
  WrittenFile out;
  produce([&](const void* data, size_t size) {
    const char* b = static_cast<const char*>(data);
    sha.update(b, size);
    while (size > 0) {
      ssize_t n = fsys.write(tmp.fd(), b, size);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) io_fail("cannot write", path, errno);
      b += n;
      size -= static_cast<size_t>(n);
      out.bytes += static_cast<uint64_t>(n);
    }
  });
  if (fsys.fdatasync(tmp.fd()) != 0) io_fail("cannot fdatasync", path, errno);
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
