// Catalog: the checks that read the disk (latest, verify, gc) and the writer-lock probe.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include <fmt/format.h>

#include "catalog/catalog.h"
#include "hook/durable_file.h"
#include "ledger/sha256.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

// The ledger's writer lock: an OFD lock on this byte (ledger/ledger.cc).
constexpr off_t kWriterLockOffset = off_t{1} << 62;

// A file's removal, as the views define it (the first later event on the same path that ends it).
constexpr const char* kStillLive =
    "NOT EXISTS (SELECT 1 FROM events x WHERE x.path = c.path AND x.seq > c.seq "
    "AND (x.kind IN ('pruned', 'save_committed') "
    "OR (x.kind = 'published' AND NOT ifnull(json_extract(x.detail, '$.already_present'), 0)) "
    "OR (x.kind = 'recovered' AND json_extract(x.detail, '$.finding') IN ('lost', 'corrupt'))))";

// Size and SHA-256 of `path` against the ledger's record. Hashes only when the size matches.
// `on_bytes` is called after each chunk with the bytes read so far.
void check_file(FileCheck& fc, const std::function<void(int64_t)>& on_bytes) {
  struct stat st {};
  if (::stat(fc.path.c_str(), &st) != 0) {
    fc.problem = errno == ENOENT ? "missing" : std::string("unreadable: ") + std::strerror(errno);
    return;
  }
  fc.actual_bytes = static_cast<int64_t>(st.st_size);
  if (fc.actual_bytes != fc.expected_bytes) {
    fc.problem = "size differs";
    return;
  }
  int fd = ::open(fc.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fc.problem = std::string("unreadable: ") + std::strerror(errno);
    return;
  }
  Sha256 sha;
  std::vector<char> buf(1 << 20);
  int64_t done = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      fc.problem = std::string("unreadable: ") + std::strerror(errno);
      ::close(fd);
      return;
    }
    if (n == 0) break;
    sha.update(buf.data(), static_cast<size_t>(n));
    done += n;
    if (on_bytes) on_bytes(done);
  }
  ::close(fd);
  fc.actual_sha256 = sha.hex_digest();
  if (fc.actual_sha256 != fc.expected_sha256) fc.problem = "sha256 differs";
}

std::string str(const ojson& v) { return v.is_string() ? v.get<std::string>() : std::string(); }
int64_t num(const ojson& v) { return v.is_number() ? v.get<int64_t>() : 0; }

}  // namespace

bool VerifyResult::ok() const {
  if (!chain.ok()) return false;
  for (const FileCheck& f : files) {
    if (!f.problem.empty()) return false;
  }
  return true;
}

bool Catalog::writer_active() const {
  if (lock_probe_fd_ < 0) return false;
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = kWriterLockOffset;
  fl.l_len = 1;
  if (::fcntl(lock_probe_fd_, F_OFD_GETLK, &fl) != 0) return false;
  return fl.l_type != F_UNLCK;
}

LatestResult Catalog::latest() {
  ReadTxn txn(*this);
  LatestResult r;
  r.checkpoint = nullptr;
  // Newest first along events_by_kind; stops at the first file that verifies.
  for_each_row(
      fmt::format("SELECT c.path AS path, c.step AS step, c.epoch AS epoch, c.iter AS iter, "
                  "c.bytes AS bytes, c.digest AS sha256, "
                  "strftime('%Y-%m-%dT%H:%M:%S', c.ts_us / 1000000, 'unixepoch') || "
                  "printf('.%06dZ', c.ts_us % 1000000) AS committed_at, c.seq AS seq, "
                  "c.run_id AS run_id FROM events c WHERE c.kind = 'save_committed' AND "
                  "coalesce(nullif(json_extract(c.detail, '$.role'), ''), 'regular') = 'regular' "
                  "AND {} ORDER BY c.seq DESC",
                  kStillLive),
      {}, [&](const std::vector<std::string>& columns, const std::vector<ojson>& row) {
        FileCheck fc;
        fc.path = str(row[0]);
        fc.expected_bytes = num(row[4]);
        fc.expected_sha256 = str(row[5]);
        check_file(fc, nullptr);
        if (!fc.problem.empty()) {
          r.rejected.push_back({fc.path, fc.problem});
          return true;
        }
        ojson o = ojson::object();
        for (size_t i = 0; i < columns.size(); ++i) o[columns[i]] = row[i];
        o["verified"] = true;
        r.checkpoint = o;
        return false;
      });
  return r;
}

VerifyResult Catalog::verify(const ProgressFn& progress) {
  VerifyResult r;
  ResultSet live;
  {
    ReadTxn txn(*this);
    r.chain = ledger_->verify();
    live = query(
        "SELECT path, kind, bytes, sha256 FROM checkpoints WHERE status = 'live' ORDER BY seq");
  }
  int64_t total = 0;
  for (const auto& row : live.rows) total += num(row[2]);
  int64_t before = 0;
  for (size_t i = 0; i < live.rows.size(); ++i) {
    const auto& row = live.rows[i];
    FileCheck fc;
    fc.path = str(row[0]);
    fc.kind = str(row[1]);
    fc.expected_bytes = num(row[2]);
    fc.expected_sha256 = str(row[3]);
    if (progress) progress(before, total, i, live.rows.size());
    check_file(fc, [&](int64_t done) {
      if (progress) progress(before + done, total, i, live.rows.size());
    });
    before += fc.expected_bytes;
    r.files.push_back(fc);
  }
  if (progress) progress(total, total, live.rows.size(), live.rows.size());
  // A training process may prune a file while we hash the others: a file that is no longer live
  // in the newest state is not a problem.
  bool recheck = false;
  for (const FileCheck& f : r.files) recheck = recheck || f.problem == "missing";
  if (recheck) {
    ReadTxn txn(*this);
    for (FileCheck& f : r.files) {
      if (f.problem != "missing") continue;
      ResultSet now = query(
          "SELECT status FROM checkpoints WHERE path = ? ORDER BY seq DESC LIMIT 1", {f.path});
      if (!now.rows.empty() && now.rows[0][0] != "live") f.problem.clear();
    }
    r.files.erase(
        std::remove_if(r.files.begin(), r.files.end(),
                       [](const FileCheck& f) { return f.problem.empty() && f.actual_bytes < 0; }),
        r.files.end());
  }
  return r;
}

std::vector<GcAction> Catalog::gc_plan() {
  ResultSet rows, dirs, pending;
  {
    ReadTxn txn(*this);
    rows = query(
        "SELECT path, kind, status, bytes, seq, removed_by_seq, removed_reason FROM checkpoints "
        "ORDER BY seq");
    dirs = query("SELECT DISTINCT out_dir FROM runs WHERE out_dir IS NOT NULL AND out_dir != ''");
    // Saves begun without any outcome yet (torn, or in flight while a writer runs).
    pending = query(
        "SELECT b.path, b.seq FROM events b WHERE b.kind = 'save_begun' AND NOT EXISTS ("
        "SELECT 1 FROM events z WHERE z.path = b.path AND z.seq > b.seq AND (z.kind IN "
        "('save_committed', 'save_failed', 'save_begun') OR (z.kind = 'recovered' AND "
        "json_extract(z.detail, '$.finding') = 'torn_save'))) ORDER BY b.seq");
  }
  const bool writing = writer_active();
  std::map<std::string, size_t> last;  // path -> its newest row
  std::set<std::string> scan_dirs{work_dir()};
  for (size_t i = 0; i < rows.rows.size(); ++i) {
    const std::string path = str(rows.rows[i][0]);
    last[path] = i;
    scan_dirs.insert(fs::path(path).parent_path().string());
  }
  for (const auto& d : dirs.rows) scan_dirs.insert(str(d[0]));
  std::map<std::string, int64_t> begun;  // final path -> save_begun seq
  for (const auto& p : pending.rows) {
    begun[str(p[0])] = num(p[1]);
    scan_dirs.insert(fs::path(str(p[0])).parent_path().string());
  }

  std::vector<GcAction> plan;
  for (const auto& [path, i] : last) {
    const auto& row = rows.rows[i];
    const std::string status = str(row[2]);
    struct stat st {};
    const bool exists = ::stat(path.c_str(), &st) == 0;
    if (begun.count(path)) continue;  // being rewritten (or torn): see below
    if (status == "live") {
      if (!exists) {
        plan.push_back({"lost", "record lost (never chosen for resume)", path,
                        "committed and live in the ledger, missing on disk", num(row[4]), 0});
      } else if (static_cast<int64_t>(st.st_size) != num(row[3])) {
        plan.push_back({"corrupt", "record corrupt (never chosen for resume)", path,
                        fmt::format("{} bytes on disk, {} recorded (size only: `verify` hashes)",
                                    static_cast<int64_t>(st.st_size), num(row[3])),
                        num(row[4]), static_cast<int64_t>(st.st_size)});
      }
    } else if ((status == "pruned" || status == "replaced") && exists) {
      plan.push_back({"prune_completed", "remove the file", path,
                      fmt::format("{} in the ledger ({}), still on disk", status, str(row[6])),
                      num(row[5]), static_cast<int64_t>(st.st_size)});
    }
  }
  const std::string suffix = kTempSuffix;
  std::set<std::string> torn_with_temp;
  for (const std::string& d : scan_dirs) {
    std::error_code ec;
    fs::directory_iterator it(d, ec), end;
    for (; !ec && it != end; it.increment(ec)) {
      if (!it->is_regular_file(ec)) continue;
      const std::string name = it->path().filename().string();
      const std::string full = (fs::path(d) / name).string();
      const int64_t size = static_cast<int64_t>(it->file_size(ec));
      if (name.size() > suffix.size() &&
          name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
        // write_durably's temp file of <dir>/<final> is <dir>/.<final><suffix>.
        std::string final_name = name.substr(0, name.size() - suffix.size());
        if (!final_name.empty() && final_name[0] == '.') final_name.erase(0, 1);
        const std::string final_path = (fs::path(d) / final_name).string();
        auto b = begun.find(final_path);
        if (writing) {
          plan.push_back({"in_flight", "none (a writer holds the ledger)", full,
                          "a save in progress?", b == begun.end() ? 0 : b->second, size});
        } else if (b != begun.end()) {
          torn_with_temp.insert(final_path);
          plan.push_back({"torn_save", "remove the temp file, record torn_save", full,
                          "save_begun without save_committed: the process died while writing",
                          b->second, size});
        } else {
          plan.push_back({"stray_temp", "remove the temp file", full,
                          "a temp file no save accounts for", 0, size});
        }
      } else if (name.size() > 4 && name.compare(name.size() - 4, 4, ".pth") == 0 &&
                 last.count(full) == 0 && begun.count(full) == 0) {
        plan.push_back({"unknown_file", "none (left alone)", full,
                        "a checkpoint-like file this ledger never wrote", 0, size});
      }
    }
  }
  if (!writing) {
    for (const auto& [path, seq] : begun) {
      if (torn_with_temp.count(path)) continue;
      plan.push_back({"torn_save", "record torn_save", path,
                      "save_begun without save_committed: the process died while writing", seq, 0});
    }
  }
  return plan;
}

}  // namespace ckptledger
