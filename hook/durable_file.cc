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

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) io_fail("cannot open directory", dir, errno);
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    io_fail("cannot fsync directory", dir, err);
  }
  ::close(fd);
}

// Closes and unlinks the temp file unless released: a failed write leaves nothing behind.
class TempFile {
 public:
  explicit TempFile(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) io_fail("cannot create", path_, errno);
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!released_) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  void close_checked() {
    int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) io_fail("cannot close", path_, errno);
  }
  void release() { released_ = true; }

 private:
  std::string path_;
  int fd_ = -1;
  bool released_ = false;
};

}  // namespace

void make_parent_dirs(const std::string& path) {
  fs::path parent = fs::path(path).parent_path();
  if (parent.empty()) return;
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) io_fail("cannot create directory", parent.string(), ec.value());
}

WrittenFile write_durably(const std::string& path,
                          const std::function<void(const ByteSink&)>& produce) {
  make_parent_dirs(path);
  fs::path p(path);
  std::string dir = p.parent_path().string();
  TempFile tmp((p.parent_path() / ("." + p.filename().string() + kTempSuffix)).string());
  Sha256 sha;
  WrittenFile out;
  produce([&](const void* data, size_t size) {
    const char* b = static_cast<const char*>(data);
    sha.update(b, size);
    while (size > 0) {
      ssize_t n = ::write(tmp.fd(), b, size);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) io_fail("cannot write", path, errno);
      b += n;
      size -= static_cast<size_t>(n);
      out.bytes += static_cast<uint64_t>(n);
    }
  });
  if (::fdatasync(tmp.fd()) != 0) io_fail("cannot fdatasync", path, errno);
  tmp.close_checked();
  if (::rename(tmp.path().c_str(), path.c_str()) != 0) io_fail("cannot rename onto", path, errno);
  tmp.release();
  fsync_dir(dir);
  out.sha256 = sha.hex_digest();
  return out;
}

void write_text_durably(const std::string& path, const std::string& text) {
  write_durably(path, [&](const ByteSink& sink) { sink(text.data(), text.size()); });
}

bool remove_durably(const std::string& path) {
  std::error_code ec;
  auto st = fs::symlink_status(path, ec);
  if (ec || !fs::exists(st)) return false;
  if (fs::is_directory(st)) {
    fs::remove_all(path, ec);
  } else {
    fs::remove(path, ec);
  }
  if (ec) io_fail("cannot remove", path, ec.value());
  fsync_dir(fs::path(path).parent_path().string());
  return true;
}

}  // namespace ckptledger
