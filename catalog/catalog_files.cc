// Catalog: the checks that read the disk (latest, verify, gc) and the writer-lock probe.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include <fmt/format.h>

#include "catalog/catalog.h"
#include "ckptledger/hook_config.h"
#include "ledger/sha256.h"
#include "storage/durable_file.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

// A file's removal, as the views define it (the first later event on the same path that ends it).
constexpr const char* kStillLive =
    "NOT EXISTS (SELECT 1 FROM events x WHERE x.path = c.path AND x.seq > c.seq "
    "AND (x.kind IN ('pruned', 'save_committed') "
    "OR (x.kind = 'published' AND NOT ifnull(json_extract(x.detail, '$.already_present'), 0)) "
    "OR (x.kind = 'recovered' AND json_extract(x.detail, '$.finding') IN ('lost', 'corrupt'))))";

// Size and SHA-256 of `path` against the ledger's record. Hashes only when the size matches,
// unless `always_hash`. One open file: a rename over the path while it is read (a save replacing
// it) leaves this check on one version of the bytes. `on_bytes` is called after each chunk with
// the bytes read so far.
void check_file(FileCheck& fc, const std::function<void(int64_t)>& on_bytes,
                bool always_hash = false) {
  int fd = ::open(fc.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fc.problem = errno == ENOENT ? "missing" : std::string("unreadable: ") + std::strerror(errno);
    return;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    fc.problem = std::string("unreadable: ") + std::strerror(errno);
    ::close(fd);
    return;
  }
  fc.actual_bytes = static_cast<int64_t>(st.st_size);
  if (fc.actual_bytes != fc.expected_bytes && !always_hash) {
    fc.problem = "size differs";
    ::close(fd);
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
  fc.problem = fc.actual_bytes != fc.expected_bytes     ? "size differs"
               : fc.actual_sha256 != fc.expected_sha256 ? "sha256 differs"
                                                        : "";
}

std::string str(const ojson& v) { return v.is_string() ? v.get<std::string>() : std::string(); }
int64_t num(const ojson& v) { return v.is_number() ? v.get<int64_t>() : 0; }

// The parts a save's payload lists (SavePayload v2: part_paths, part_bytes, part_sha256, in rank
// order; policy/hook_events.h) as unchecked FileChecks of the checkpoint `of`, part 0 included.
// Empty when it lists fewer than two: the checkpoint is its one file. The payload's paths are as
// the catalog reads them (re-rooted in a moved work_dir).
std::vector<FileCheck> parts_of(const std::string& detail, const FileCheck& of) {
  std::vector<FileCheck> out;
  const ojson d = ojson::parse(detail, nullptr, false);
  if (!d.is_object() || !d.contains("part_paths") || !d["part_paths"].is_array() ||
      d["part_paths"].size() < 2) {
    return out;
  }
  auto item = [&](const char* list, size_t i) -> ojson {
    return d.contains(list) && d[list].is_array() && i < d[list].size() ? d[list][i] : ojson();
  };
  for (size_t i = 0; i < d["part_paths"].size(); ++i) {
    FileCheck fc;
    fc.path = str(d["part_paths"][i]);
    fc.kind = of.kind;
    fc.checkpoint = of.path;
    fc.rank = static_cast<int64_t>(i);
    fc.expected_bytes = num(item("part_bytes", i));
    fc.expected_sha256 = str(item("part_sha256", i));
    out.push_back(std::move(fc));
  }
  return out;
}

// Checks parts 1.. of a checkpoint (part 0 is its own file, checked as the checkpoint), stopping
// at the first that fails. Returns "" or why: "part R PATH: problem".
std::string check_parts(std::vector<FileCheck>& parts) {
  for (FileCheck& p : parts) {
    if (p.rank == 0) continue;
    check_file(p, nullptr);
    if (!p.problem.empty()) return fmt::format("part {} {}: {}", p.rank, p.path, p.problem);
  }
  return "";
}

ojson parts_json(const std::vector<FileCheck>& parts) {
  ojson a = ojson::array();
  for (const FileCheck& p : parts) {
    a.push_back({{"rank", p.rank},
                 {"path", p.path},
                 {"bytes", p.expected_bytes},
                 {"sha256", p.expected_sha256}});
  }
  return a;
}

}  // namespace

bool VerifyResult::ok() const {
  if (!chain.ok()) return false;
  for (const FileCheck& f : files) {
    if (!f.problem.empty()) return false;
  }
  return true;
}

bool Catalog::writer_active() const { return writer_lock_held(ledger_->path()); }

// A reader that found a file other than its commit says may have raced a writer replacing it
// (save_prepared, rename, save_committed: docs/crash-safety.md): the file is fine when its bytes
// are those of a newer save_prepared or save_committed of the same path, read in a new read
// transaction. On a match `fc` is updated to that record and true returned.
bool Catalog::replaced_since(FileCheck& fc, int64_t seq, std::string* detail) {
  if (fc.actual_bytes < 0) return false;
  ResultSet newer;
  {
    ReadTxn txn(*this);
    for (const std::string& recorded : ledger_->recorded_as(fc.path)) {
      ResultSet rs = query(
          "SELECT bytes, digest, kind, detail FROM events WHERE path = ? AND seq > ? AND kind IN "
          "('save_prepared', 'save_committed') ORDER BY seq DESC",
          {recorded, seq});
      newer.rows.insert(newer.rows.end(), rs.rows.begin(), rs.rows.end());
    }
  }
  if (newer.rows.empty()) return false;
  FileCheck again = fc;
  check_file(again, nullptr, /*always_hash=*/true);
  for (const auto& row : newer.rows) {
    if (again.actual_sha256.empty() || num(row[0]) != again.actual_bytes ||
        str(row[1]) != again.actual_sha256) {
      continue;
    }
    fc = again;
    fc.expected_bytes = num(row[0]);
    fc.expected_sha256 = str(row[1]);
    fc.problem.clear();
    if (detail) {
      *detail = str(row[3]);
      if (str(row[2]) == "save_prepared") {
        const ojson p = ojson::parse(*detail, nullptr, false);
        *detail = p.is_object() && p.contains("commit") ? str(p["commit"]) : std::string();
      }
    }
    return true;
  }
  return false;
}

LatestResult Catalog::latest() {
  LatestResult r;
  r.checkpoint = nullptr;
  // Newest first along events_by_kind, streamed: the scan stops at the first checkpoint whose file
  // and parts verify (a long run has pruned almost every file it committed). Newer ones that did
  // not verify are checked again after the read transaction against what was committed since
  // (replaced_since): one of them may be a file a running save replaced under its name, whose
  // parts are then those of the newer record.
  struct Candidate {
    std::vector<ojson> row;
    FileCheck fc;
    std::vector<FileCheck> parts;  // several ranks wrote it: every part, rank order
    std::string why;               // "" when it verifies
  };
  std::vector<std::string> columns;
  std::vector<Candidate> newer;  // did not verify, newest first
  std::optional<Candidate> found;
  {
    ReadTxn txn(*this);
    for_each_row(
        fmt::format("SELECT c.path AS path, c.step AS step, c.epoch AS epoch, c.iter AS iter, "
                    "c.bytes AS bytes, c.digest AS sha256, "
                    "strftime('%Y-%m-%dT%H:%M:%S', c.ts_us / 1000000, 'unixepoch') || "
                    "printf('.%06dZ', c.ts_us % 1000000) AS committed_at, c.seq AS seq, "
                    "c.run_id AS run_id, c.detail AS detail FROM events c "
                    "WHERE c.kind = 'save_committed' AND "
                    "coalesce(nullif(json_extract(c.detail, '$.role'), ''), 'regular') = "
                    "'regular' AND {} ORDER BY c.seq DESC",
                    kStillLive),
        {}, [&](const std::vector<std::string>& cols, const std::vector<ojson>& row) {
          columns = cols;
          Candidate c{row, FileCheck{}, {}, {}};
          c.fc.path = str(row[0]);
          c.fc.kind = "regular";
          c.fc.expected_bytes = num(row[4]);
          c.fc.expected_sha256 = str(row[5]);
          check_file(c.fc, nullptr);
          c.why = c.fc.problem;
          if (c.why.empty()) {
            c.parts = parts_of(str(row[9]), c.fc);
            c.why = check_parts(c.parts);
          }
          if (c.why.empty()) {
            found = std::move(c);
            return false;
          }
          newer.push_back(std::move(c));
          return true;
        });
  }
  for (Candidate& c : newer) {
    std::string detail;
    if (replaced_since(c.fc, num(c.row[7]), &detail)) {
      c.parts = parts_of(detail, c.fc);
      c.why = check_parts(c.parts);
      if (c.why.empty()) {
        found = std::move(c);
        break;
      }
    }
    r.rejected.push_back({c.fc.path, c.why});
  }
  if (!found) return r;
  ojson o = ojson::object();
  for (size_t i = 0; i + 1 < columns.size(); ++i) o[columns[i]] = found->row[i];  // not detail
  o["bytes"] = found->fc.expected_bytes;
  o["sha256"] = found->fc.expected_sha256;
  o["verified"] = true;
  if (!found->parts.empty()) o["parts"] = parts_json(found->parts);
  r.checkpoint = o;
  return r;
}

VerifyResult Catalog::verify(const ProgressFn& progress) {
  VerifyResult r;
  ResultSet live;
  {
    ReadTxn txn(*this);
    r.chain = ledger_->verify();
    live = query(
        "SELECT path, kind, bytes, sha256, seq, (SELECT detail FROM events e WHERE e.seq = k.seq) "
        "FROM checkpoints k WHERE status = 'live' ORDER BY seq");
  }
  // Each live file, then its parts 1.. when several ranks wrote it.
  struct Item {
    FileCheck fc;
    std::vector<FileCheck> parts;
  };
  std::vector<Item> items;
  int64_t total = 0;
  size_t count = 0;
  auto add_parts = [&](std::vector<FileCheck> parts, int sign) {
    for (const FileCheck& p : parts) {
      if (p.rank == 0) continue;
      total += sign * p.expected_bytes;
      count = sign > 0 ? count + 1 : count - 1;
    }
    return parts;
  };
  for (const auto& row : live.rows) {
    Item it;
    it.fc.path = str(row[0]);
    it.fc.kind = str(row[1]);
    it.fc.expected_bytes = num(row[2]);
    it.fc.expected_sha256 = str(row[3]);
    total += it.fc.expected_bytes;
    ++count;
    it.parts = add_parts(parts_of(str(row[5]), it.fc), 1);
    items.push_back(std::move(it));
  }
  int64_t before = 0;
  size_t index = 0;
  auto check = [&](FileCheck& fc) {
    if (progress) progress(before, total, index, count);
    check_file(fc, [&](int64_t done) {
      if (progress) progress(before + done, total, index, count);
    });
    before += fc.expected_bytes;
    ++index;
  };
  for (size_t i = 0; i < items.size(); ++i) {
    FileCheck& fc = items[i].fc;
    check(fc);
    std::string detail;
    if (!fc.problem.empty() && fc.problem != "missing" &&
        replaced_since(fc, num(live.rows[i][4]), &detail)) {
      // A newer version of the file: its parts are those of the newer record.
      add_parts(std::move(items[i].parts), -1);
      items[i].parts = add_parts(parts_of(detail, fc), 1);
    }
    r.files.push_back(fc);
    for (FileCheck& part : items[i].parts) {
      if (part.rank == 0) continue;
      check(part);
      r.files.push_back(part);
    }
  }
  if (progress) progress(total, total, count, count);
  // A training process may prune a file while we hash the others: a file that is no longer live
  // in the newest state is not a problem, nor a part that no live checkpoint lists any more (its
  // checkpoint pruned, or saved again under its name with new parts).
  bool recheck = false;
  for (const FileCheck& f : r.files) recheck = recheck || f.problem == "missing";
  if (recheck) {
    ReadTxn txn(*this);
    for (FileCheck& f : r.files) {
      if (f.problem != "missing") continue;
      if (!f.checkpoint.empty()) {
        ResultSet listed = query(
            "SELECT 1 FROM checkpoint_parts WHERE part_path IN (SELECT value FROM json_each(?)) "
            "AND status = 'live' LIMIT 1",
            {recorded_forms(f.path)});
        if (listed.rows.empty()) f.problem.clear();
        continue;
      }
      ResultSet now = query(
          "SELECT status FROM checkpoints WHERE path IN (SELECT value FROM json_each(?)) "
          "ORDER BY seq DESC LIMIT 1",
          {recorded_forms(f.path)});
      if (!now.rows.empty() && now.rows[0][0] != "live") f.problem.clear();
    }
    r.files.erase(
        std::remove_if(r.files.begin(), r.files.end(),
                       [](const FileCheck& f) { return f.problem.empty() && f.actual_bytes < 0; }),
        r.files.end());
  }
  return r;
}

ReconcileScope Catalog::reconcile_scope() {
  ReconcileScope scope;
  ResultSet rs = query("SELECT work_dir, out_dir FROM runs ORDER BY started_seq");
  for (const auto& row : rs.rows) {
    if (!str(row[0]).empty()) scope.work_dir = str(row[0]);
    if (!str(row[1]).empty()) scope.extra_dirs.insert(str(row[1]));
  }
  if (scope.work_dir.empty()) scope.work_dir = work_dir();
  scope.writer_active = writer_active();
  if (!ledger_->moved_roots().empty()) scope.confined_to = ledger_->moved_roots().front().to;
  return scope;
}

// The checkpoint names of the hook that wrote the ledger (its newest run's filename_tmpl), to look
// for evidence that the ledger is behind the work_dir as the hook does; null when unknown.
std::function<bool(const std::string&)> names_of(const HookState& state) {
  if (state.config.empty()) return nullptr;
  try {
    return checkpoint_name_matcher(
        validate(HookConfig::from_json(nlohmann::json::parse(state.config))).filename_tmpl);
  } catch (const std::exception&) {
    return nullptr;  // a config this binary cannot read: no name-based evidence
  }
}

ReconcilePlan Catalog::gc_plan() {
  ReadTxn txn(*this);
  ReconcileScope scope = reconcile_scope();
  StateResult now = state_as_of(std::nullopt);
  scope.ours = names_of(now.state);
  if (scope.ours) scope.ledger = ledger_.get();
  return plan_reconcile(now.state, scope);
}

ReconcilePlan gc_apply(const std::string& ledger_or_work_dir) {
  ReconcileScope scope;
  std::string path;
  {
    auto cat = Catalog::open(ledger_or_work_dir);
    scope = cat->reconcile_scope();
    path = cat->ledger_path();
  }
  scope.writer_active = false;  // the lock below proves it
  LedgerOptions rw;
  rw.create_if_missing = false;
  auto ledger = Ledger::open(path, rw);
  HookState state;
  HookStateFold fold(state);
  ledger->replay(fold);
  if (!ledger->moved_roots().empty()) {
    reroot_parts(state, [&](const std::string& p) { return ledger->reroot(p); });
  }
  scope.ours = names_of(state);
  if (scope.ours) scope.ledger = ledger.get();
  ReconcilePlan plan = plan_reconcile(state, scope);
  apply_reconcile(plan, *ledger, state, FileSystem::posix());
  return plan;
}

}  // namespace ckptledger
