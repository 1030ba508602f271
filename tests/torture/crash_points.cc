#include "tests/torture/crash_points.h"

#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <vector>

namespace crash_points {
namespace {

std::mutex mu;
int64_t armed = 0;
int64_t done = 0;
bool recording = false;
std::string log_file;
std::vector<std::string> log_lines;
std::map<int, std::string> fd_paths;  // for the log: what a write/fdatasync goes to

std::string path_of(int fd) {
  auto it = fd_paths.find(fd);
  return it == fd_paths.end() ? "fd " + std::to_string(fd) : it->second;
}

void count_locked(const char* op, const std::string& path) {
  ++done;
  if (armed > 0 && done == armed) {
    std::fprintf(stderr, "torture_child: crash at %lld: %s %s\n", static_cast<long long>(done), op,
                 path.c_str());
    std::fflush(stderr);
    ::kill(::getpid(), SIGKILL);
    for (;;) ::pause();
  }
  if (recording) log_lines.push_back(std::to_string(done) + " " + op + " " + path);
}

}  // namespace

void arm(int64_t k) { armed = k; }

void record_to(const std::string& log_path) {
  recording = true;
  log_file = log_path;
}

void write_log() {
  if (!recording) return;
  std::lock_guard<std::mutex> lock(mu);
  std::ofstream out(log_file);
  for (const std::string& l : log_lines) out << l << '\n';
}

void count(const char* op, const std::string& path) {
  std::lock_guard<std::mutex> lock(mu);
  count_locked(op, path);
}

// ---- the FileSystem seam ----------------------------------------------------------------------

int CrashPointFileSystem::open(const char* path, int flags, mode_t mode) {
  std::lock_guard<std::mutex> lock(mu);
  if (flags & O_CREAT) count_locked("open-create", path);
  int fd = FileSystem::open(path, flags, mode);
  if (fd >= 0) fd_paths[fd] = path;
  return fd;
}
ssize_t CrashPointFileSystem::write(int fd, const void* data, size_t size) {
  {
    std::lock_guard<std::mutex> lock(mu);
    count_locked("write", path_of(fd));
  }
  return FileSystem::write(fd, data, size);
}
int CrashPointFileSystem::fdatasync(int fd) {
  {
    std::lock_guard<std::mutex> lock(mu);
    count_locked("fdatasync", path_of(fd));
  }
  return FileSystem::fdatasync(fd);
}
int CrashPointFileSystem::fsync(int fd) {
  {
    std::lock_guard<std::mutex> lock(mu);
    count_locked("fsync", path_of(fd));
  }
  return FileSystem::fsync(fd);
}
int CrashPointFileSystem::rename(const char* from, const char* to) {
  {
    std::lock_guard<std::mutex> lock(mu);
    count_locked("rename", to);
  }
  return FileSystem::rename(from, to);
}
int CrashPointFileSystem::unlink(const char* path) {
  {
    std::lock_guard<std::mutex> lock(mu);
    count_locked("unlink", path);
  }
  return FileSystem::unlink(path);
}

// ---- the SQLite VFS shim ----------------------------------------------------------------------
namespace {

sqlite3_vfs* real_vfs = nullptr;
sqlite3_vfs shim_vfs;

struct ShimFile {
  sqlite3_file base;     // our methods
  sqlite3_file* real;    // the real file, allocated right after this struct
  std::string* path;     // for the log
  bool dirty;            // written since its last sync
};

ShimFile* shim(sqlite3_file* f) { return reinterpret_cast<ShimFile*>(f); }
sqlite3_file* real(sqlite3_file* f) { return shim(f)->real; }

int x_close(sqlite3_file* f) {
  int rc = real(f)->pMethods ? real(f)->pMethods->xClose(real(f)) : SQLITE_OK;
  delete shim(f)->path;
  return rc;
}
int x_read(sqlite3_file* f, void* b, int n, sqlite3_int64 o) {
  return real(f)->pMethods->xRead(real(f), b, n, o);
}
int x_write(sqlite3_file* f, const void* b, int n, sqlite3_int64 o) {
  if (!shim(f)->dirty) {
    count("sqlite-write", *shim(f)->path);
    shim(f)->dirty = true;
  }
  return real(f)->pMethods->xWrite(real(f), b, n, o);
}
int x_truncate(sqlite3_file* f, sqlite3_int64 size) {
  count("sqlite-truncate", *shim(f)->path);
  return real(f)->pMethods->xTruncate(real(f), size);
}
int x_sync(sqlite3_file* f, int flags) {
  count("sqlite-sync", *shim(f)->path);
  shim(f)->dirty = false;
  return real(f)->pMethods->xSync(real(f), flags);
}
int x_file_size(sqlite3_file* f, sqlite3_int64* s) { return real(f)->pMethods->xFileSize(real(f), s); }
int x_lock(sqlite3_file* f, int l) { return real(f)->pMethods->xLock(real(f), l); }
int x_unlock(sqlite3_file* f, int l) { return real(f)->pMethods->xUnlock(real(f), l); }
int x_check_reserved(sqlite3_file* f, int* r) {
  return real(f)->pMethods->xCheckReservedLock(real(f), r);
}
int x_file_control(sqlite3_file* f, int op, void* a) {
  return real(f)->pMethods->xFileControl(real(f), op, a);
}
int x_sector_size(sqlite3_file* f) { return real(f)->pMethods->xSectorSize(real(f)); }
int x_device_chars(sqlite3_file* f) {
  return real(f)->pMethods->xDeviceCharacteristics(real(f));
}
int x_shm_map(sqlite3_file* f, int pg, int sz, int ext, void volatile** p) {
  return real(f)->pMethods->xShmMap(real(f), pg, sz, ext, p);
}
int x_shm_lock(sqlite3_file* f, int o, int n, int flags) {
  return real(f)->pMethods->xShmLock(real(f), o, n, flags);
}
void x_shm_barrier(sqlite3_file* f) { real(f)->pMethods->xShmBarrier(real(f)); }
int x_shm_unmap(sqlite3_file* f, int del) { return real(f)->pMethods->xShmUnmap(real(f), del); }
int x_fetch(sqlite3_file* f, sqlite3_int64 o, int n, void** p) {
  return real(f)->pMethods->xFetch(real(f), o, n, p);
}
int x_unfetch(sqlite3_file* f, sqlite3_int64 o, void* p) {
  return real(f)->pMethods->xUnfetch(real(f), o, p);
}

const sqlite3_io_methods shim_methods = {
    3,          x_close,       x_read,     x_write,        x_truncate,       x_sync,
    x_file_size, x_lock,       x_unlock,   x_check_reserved, x_file_control, x_sector_size,
    x_device_chars, x_shm_map, x_shm_lock, x_shm_barrier,  x_shm_unmap,      x_fetch,
    x_unfetch};

int x_open(sqlite3_vfs*, const char* name, sqlite3_file* f, int flags, int* out_flags) {
  ShimFile* s = shim(f);
  s->real = reinterpret_cast<sqlite3_file*>(s + 1);
  s->path = new std::string(name ? name : "(temp)");
  s->dirty = false;
  s->base.pMethods = nullptr;
  int rc = real_vfs->xOpen(real_vfs, name, s->real, flags, out_flags);
  if (s->real->pMethods) {
    s->base.pMethods = &shim_methods;
  } else {
    delete s->path;
  }
  return rc;
}
int x_delete(sqlite3_vfs*, const char* name, int sync_dir) {
  count("sqlite-delete", name);
  return real_vfs->xDelete(real_vfs, name, sync_dir);
}

}  // namespace

void install_sqlite_crash_points() {
  real_vfs = sqlite3_vfs_find(nullptr);
  shim_vfs = *real_vfs;
  shim_vfs.zName = "crash_points";
  shim_vfs.szOsFile = static_cast<int>(sizeof(ShimFile)) + real_vfs->szOsFile;
  shim_vfs.xOpen = x_open;
  shim_vfs.xDelete = x_delete;
  sqlite3_vfs_register(&shim_vfs, 1);
}

}  // namespace crash_points
