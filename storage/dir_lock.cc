#include "storage/dir_lock.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "ckptledger/error.h"

namespace ckptledger {
namespace {

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "unknown-host";
  return buf;
}

}  // namespace

std::unique_ptr<DirLock> DirLock::acquire(const std::string& dir, const std::string& ledger_path) {
  const std::string path = dir + "/" + kDirLockName;
  std::unique_ptr<DirLock> lock(new DirLock());
  lock->fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (lock->fd_ < 0) {
    throw_error(ErrorCode::kIOError,
                fmt::format("cannot create the directory lock {}: {}", path, std::strerror(errno)));
  }
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (::fcntl(lock->fd_, F_OFD_SETLK, &fl) != 0) {
    const int err = errno;
    if (err != EAGAIN && err != EACCES) {
      throw_error(ErrorCode::kIOError, fmt::format("cannot lock {}: {}", path, std::strerror(err)));
    }
    char holder[512] = {};
    const ssize_t n = ::pread(lock->fd_, holder, sizeof(holder) - 1, 0);
    std::string who = n > 0 ? std::string(holder, static_cast<size_t>(n)) : "another process";
    while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
    throw_error(ErrorCode::kBusy,
                fmt::format("{} is being written by another training process ({}); one writer per "
                            "directory, whatever ledger_path says",
                            dir, who));
  }
  const std::string me =
      fmt::format("pid {} on host {}, ledger {}\n", ::getpid(), host_name(), ledger_path);
  // Best effort: the content only names the holder in the next process's message.
  if (::ftruncate(lock->fd_, 0) == 0) {
    (void)!::pwrite(lock->fd_, me.data(), me.size(), 0);
  }
  return lock;
}

DirLock::~DirLock() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace ckptledger
