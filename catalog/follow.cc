#include "catalog/follow.h"

#include <poll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "catalog/report.h"
#include "ckptledger/error.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

LedgerFollower::LedgerFollower(const std::string& ledger_or_work_dir, bool notify) {
  ledger_path_ = resolve_ledger_path(absolute_normal(ledger_or_work_dir));
  dir_ = fs::path(ledger_path_).parent_path().string();
  if (dir_.empty()) dir_ = "/";
  if (!is_dir(dir_)) {
    throw_error(ErrorCode::kNotFound,
                fmt::format("ledger {}: no such file, and no directory {}", ledger_path_, dir_));
  }
  if (!notify) return;
  inotify_fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (inotify_fd_ >= 0) {
    // Commits write the -wal file (or the ledger itself after a checkpoint); a new writer creates
    // them. The directory watch sees both, and a ledger that does not exist yet.
    const uint32_t mask = IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE;
    if (::inotify_add_watch(inotify_fd_, dir_.c_str(), mask) < 0) {
      ::close(inotify_fd_);
      inotify_fd_ = -1;  // followed by the timeout alone
    }
  }
}

LedgerFollower::~LedgerFollower() {
  catalog_.reset();
  if (inotify_fd_ >= 0) ::close(inotify_fd_);
}

bool LedgerFollower::ready() {
  if (catalog_) return true;
  struct stat st {};
  if (::stat(ledger_path_.c_str(), &st) != 0) return false;
  // A FIFO, a socket or a directory under the ledger's name is never a ledger being created.
  if (!S_ISREG(st.st_mode)) {
    throw_error(ErrorCode::kInvalidArgument,
                fmt::format("ledger {}: not a regular file", ledger_path_));
  }
  try {
    catalog_ = Catalog::open(ledger_path_);
    dev_ = st.st_dev;
    ino_ = st.st_ino;
    failing_ = false;
    return true;
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kNotFound) return false;  // created, not yet initialised
    // A ledger being created may be seen half-made: retry for a while before believing it.
    const auto now = std::chrono::steady_clock::now();
    if (!failing_) {
      failing_ = true;
      first_failure_ = now;
    }
    if (now - first_failure_ > kCreateGrace) throw;
    return false;
  }
}

Catalog& LedgerFollower::catalog() {
  if (!catalog_)
    throw_error(ErrorCode::kNotFound, fmt::format("ledger {}: not yet created", ledger_path_));
  return *catalog_;
}

int64_t LedgerFollower::last_seq() {
  if (!ready()) return 0;
  ResultSet rs = catalog_->query("SELECT ifnull(max(seq), 0) FROM events");
  return rs.rows.empty() ? 0 : rs.rows[0][0].get<int64_t>();
}

nlohmann::ordered_json LedgerFollower::events_after(int64_t cursor,
                                                    const std::vector<std::string>& kinds,
                                                    int64_t batch) {
  if (!ready()) return nlohmann::ordered_json::array();
  HistoryFilter f;
  f.kinds = kinds;
  f.since = Point{Point::Kind::kSeq, cursor + 1};
  f.head = batch;
  return report::history(*catalog_, f);
}

bool LedgerFollower::drain() {
  if (inotify_fd_ < 0) return false;
  const std::string name = fs::path(ledger_path_).filename().string();
  alignas(struct inotify_event) char buf[4096];
  bool relevant = false;
  ssize_t n;
  while ((n = ::read(inotify_fd_, buf, sizeof(buf))) > 0) {
    for (char* p = buf; p < buf + n;) {
      const auto* ev = reinterpret_cast<const struct inotify_event*>(p);
      // Checkpoint files written beside the ledger wake nothing; the ledger, its -wal and a lost
      // event (queue overflow) do.
      if (ev->mask & IN_Q_OVERFLOW) relevant = true;
      if (ev->len > 0) {
        const std::string f(ev->name);
        if (f == name || f == name + "-wal") relevant = true;
      }
      p += sizeof(struct inotify_event) + ev->len;
    }
  }
  return relevant;
}

bool LedgerFollower::changed() {
  if (catalog_) {
    // Another file under the ledger's name (deleted and recreated, restored from a copy): the old
    // connection would read the old inode for ever.
    struct stat st {};
    if (::stat(ledger_path_.c_str(), &st) != 0 || st.st_dev != dev_ || st.st_ino != ino_) {
      catalog_.reset();
      data_version_ = -1;
    }
  }
  const bool was_ready = catalog_ != nullptr;
  if (!ready()) return false;
  ResultSet rs = catalog_->query("PRAGMA data_version");
  const int64_t v = rs.rows.empty() ? 0 : rs.rows[0][0].get<int64_t>();
  const bool changed = !was_ready || v != data_version_;
  data_version_ = v;
  return changed;
}

bool LedgerFollower::wait(std::chrono::milliseconds timeout) {
  if (changed()) return true;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return changed();
    if (inotify_fd_ >= 0) {
      struct pollfd p {
        inotify_fd_, POLLIN, 0
      };
      int r = ::poll(&p, 1, static_cast<int>(left.count()));
      if (r < 0 && errno != EINTR) {
        throw_error(ErrorCode::kIOError,
                    fmt::format("watching {}: {}", dir_, std::strerror(errno)));
      }
      if (r < 0) return changed();  // a signal: let the caller look at its flags
      if (!drain()) continue;
    } else {
      ::usleep(static_cast<useconds_t>(left.count()) * 1000);
    }
    if (changed()) return true;
  }
}

}  // namespace ckptledger
