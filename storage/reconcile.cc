#include "storage/reconcile.h"

#include "policy/parts.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>

#include <fmt/format.h>

#include "ckptledger/event_handler.h"
#include "ckptledger/hook_config.h"
#include "ledger/payload.h"
#include "ledger/sha256.h"
#include "policy/hook_events.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;

bool is_temp(const std::string& name) {
  const std::string suffix = kTempSuffix;
  return name.size() > suffix.size() &&
         name.compare(name.size() - suffix.size(), std::string::npos, suffix) == 0;
}

// write_durably's temp file of <dir>/<name> is <dir>/.<name><kTempSuffix>.
std::string temp_of(const std::string& path) {
  fs::path p(path);
  return (p.parent_path() / ("." + p.filename().string() + kTempSuffix)).string();
}

// The longest common prefix and suffix of two strings, the suffix not overlapping the prefix.
std::pair<std::string, std::string> common_ends(const std::string& a, const std::string& b) {
  size_t pre = 0;
  while (pre < a.size() && pre < b.size() && a[pre] == b[pre]) ++pre;
  size_t suf = 0;
  while (suf < a.size() - pre && suf < b.size() - pre &&
         a[a.size() - 1 - suf] == b[b.size() - 1 - suf]) {
    ++suf;
  }
  return {a.substr(0, pre), a.substr(a.size() - suf)};
}

// `s` is prefix + a formatted step + suffix. A step formats as digits, possibly padded or
// grouped as Python's str.format does it.
bool matches_step_name(const std::string& s, const std::string& prefix, const std::string& suffix) {
  if (s.size() <= prefix.size() + suffix.size()) return false;
  if (s.compare(0, prefix.size(), prefix) != 0) return false;
  if (s.compare(s.size() - suffix.size(), suffix.size(), suffix) != 0) return false;
  bool digit = false;
  for (size_t i = prefix.size(); i < s.size() - suffix.size(); ++i) {
    const char c = s[i];
    if (c >= '0' && c <= '9') {
      digit = true;
    } else if (c != ' ' && c != '+' && c != '-' && c != '_' && c != ',') {
      return false;
    }
  }
  return digit;
}

int64_t size_or_minus_one(const std::string& path) {
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  return ec ? -1 : static_cast<int64_t>(size);
}

// Whether a save_prepared's payload can be rolled forward (a payload this binary wrote).
bool readable_prepared(const std::string& detail) {
  try {
    for (const std::string& text : from_detail<PreparedPayload>(detail, 0).then) {
      from_detail<PreparedEvent>(text, 0);
    }
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

std::vector<std::string> ReconcilePlan::problems() const {
  std::vector<std::string> out;
  for (const Finding& f : findings) {
    if (f.problem) out.push_back(f.path + (f.detail.empty() ? "" : ": " + f.detail));
  }
  return out;
}

std::vector<Event> ReconcilePlan::events() const {
  std::vector<Event> out;
  for (const Finding& f : findings) {
    out.insert(out.end(), f.commit.begin(), f.commit.end());
    Event e;
    e.kind = EventKind::kRecovered;
    e.path = f.path;
    e.step = f.step;
    e.epoch = f.epoch;
    e.iter = f.iter;
    RecoveredPayload rp;
    rp.finding = f.finding;
    rp.action = f.action;
    rp.detail = f.detail;
    e.detail = to_detail(rp);
    out.push_back(std::move(e));
  }
  return out;
}

std::function<bool(const std::string&)> checkpoint_name_matcher(const std::string& filename_tmpl) {
  // Two steps of different lengths and digits: what they share at either end is the literal text.
  const auto [prefix, suffix] =
      common_ends(format_filename(filename_tmpl, 1), format_filename(filename_tmpl, 987654320));
  // Regular checkpoints by their file name: the template's last path component (a step in a
  // directory name leaves nothing to recognise a file by).
  const bool by_name = suffix.find('/') == std::string::npos;
  const std::string name_prefix = prefix.substr(prefix.rfind('/') + 1);
  // Best checkpoints: "best_<key>_" + the whole name with '/' replaced by '_' (the hook's rule).
  std::string flat_prefix = prefix, flat_suffix = suffix;
  std::replace(flat_prefix.begin(), flat_prefix.end(), '/', '_');
  std::replace(flat_suffix.begin(), flat_suffix.end(), '/', '_');
  return [=](const std::string& name) {
    if (by_name && matches_step_name(name, name_prefix, suffix)) return true;
    if (name.compare(0, 5, "best_") != 0) return false;
    for (size_t at = 7; at < name.size(); ++at) {  // after "best_<key>_", key not empty
      if (name[at - 1] == '_' && matches_step_name(name.substr(at), flat_prefix, flat_suffix)) {
        return true;
      }
    }
    return false;
  };
}

ReconcilePlan plan_reconcile(const HookState& state, const ReconcileScope& scope) {
  ReconcilePlan plan;
  // Evidence that the ledger lost events (reconcile.h): only for a ledger that existed before.
  const bool look_behind = scope.ledger && scope.ours && !scope.ledger->created();
  auto never_begun = [&](const std::string& path) {
    return !scope.ledger->names(path, {EventKind::kSaveBegun, EventKind::kSaveCommitted});
  };
  std::set<std::string> removed;  // files some finding already removes
  auto add = [&](Finding f) {
    if (!f.remove.empty()) removed.insert(f.remove);
    plan.findings.push_back(std::move(f));
  };
  std::set<std::string> dirs{scope.work_dir};
  dirs.insert(scope.extra_dirs.begin(), scope.extra_dirs.end());
  std::set<std::string> in_flight_temps;
  std::set<std::string> replacing;  // committed files a save_prepared is replacing
  std::vector<Finding> rolled;      // saves rolled forward
  std::vector<std::string> rolled_prunes;

  // A save that began and never committed: the process died while writing it (or, with a live
  // writer, is writing it now).
  for (const auto& [path, begun] : state.in_flight) {
    dirs.insert(fs::path(path).parent_path().string());
    const std::string temp = temp_of(path);
    const int64_t temp_bytes = size_or_minus_one(temp);
    if (begun.prepared_bytes >= 0 && size_or_minus_one(path) == begun.prepared_bytes) {
      // The file may already hold the prepared bytes (renamed, not yet committed): never
      // "corrupt". Without a writer, the bytes are checked and the save rolled forward.
      uint64_t size = 0;
      if (scope.writer_active) {
        replacing.insert(path);
      } else if (temp_bytes < 0 && readable_prepared(begun.prepared_detail) &&
                 Sha256::file_hex(path, &size) == begun.prepared_digest) {
        replacing.insert(path);
        Finding f{"rolled_forward", path, "committed",
                  "the file holds the bytes its save prepared; the process died before the commit"};
        f.bytes = begun.prepared_bytes;
        f.step = begun.step;
        f.epoch = begun.epoch;
        f.iter = begun.iter;
        const auto pp = from_detail<PreparedPayload>(begun.prepared_detail, 0);
        Event committed;
        committed.kind = EventKind::kSaveCommitted;
        committed.path = path;
        committed.step = begun.step;
        committed.epoch = begun.epoch;
        committed.iter = begun.iter;
        committed.bytes = begun.prepared_bytes;
        committed.digest = begun.prepared_digest;
        committed.detail = pp.commit;
        f.commit.push_back(std::move(committed));
        for (const std::string& text : pp.then) {
          const auto pe = from_detail<PreparedEvent>(text, 0);
          Event e;
          if (auto k = event_kind_from_name(pe.kind)) e.kind = *k;
          e.path = pe.path;
          e.step = pe.step;
          e.epoch = pe.epoch;
          e.iter = pe.iter;
          e.metric = pe.metric;
          if (pe.has_score) e.score = pe.score;
          e.detail = pe.detail;
          // The files this commit prunes are removed with it (what the save would have done).
          if (e.kind == EventKind::kPruned && !e.path.empty()) rolled_prunes.push_back(e.path);
          f.commit.push_back(std::move(e));
        }
        rolled.push_back(f);
        add(std::move(f));
        continue;
      }
    }
    Finding f{"torn_save", path, temp_bytes >= 0 ? "aborted, temp file removed" : "aborted"};
    if (scope.writer_active) {
      f = Finding{"in_flight", path, "none (a writer holds the ledger)", "a save in progress"};
      in_flight_temps.insert(temp);
    } else if (temp_bytes >= 0) {
      f.remove = temp;
    }
    f.bytes = temp_bytes;
    f.step = begun.step;
    f.epoch = begun.epoch;
    f.iter = begun.iter;
    add(std::move(f));
  }
  // A prune that was decided (and recorded) but whose file is still there. A long run has pruned
  // thousands of files: each directory is listed once rather than every path stat'ed.
  std::map<std::string, std::set<std::string>> names_in;  // directory -> its entries
  auto listed = [&](const std::string& path) {
    const fs::path p(path);
    auto [it, fresh] = names_in.try_emplace(p.parent_path().string());
    if (fresh) {
      std::error_code ec;
      for (const auto& entry : fs::directory_iterator(it->first, ec)) {
        it->second.insert(entry.path().filename().string());
      }
    }
    return it->second.count(p.filename().string()) > 0;
  };
  std::set<std::string> pending(state.pruned_pending.begin(), state.pruned_pending.end());
  pending.insert(rolled_prunes.begin(), rolled_prunes.end());
  for (const std::string& path : pending) {
    if ((state.live.count(path) && !std::count(rolled_prunes.begin(), rolled_prunes.end(), path)) ||
        !listed(path)) {
      continue;
    }
    const int64_t bytes = size_or_minus_one(path);
    if (bytes < 0) continue;
    Finding f{"prune_completed", path, "removed"};
    f.remove = path;
    f.bytes = bytes;
    add(std::move(f));
  }
  // Committed files must still be there with the size the commit recorded; the SHA-256 of the one
  // a resume loads is checked when it is loaded (`ckptledger verify` hashes them all).
  for (const auto& [path, lf] : state.live) {
    dirs.insert(fs::path(path).parent_path().string());
    if (replacing.count(path) || std::count(rolled_prunes.begin(), rolled_prunes.end(), path)) {
      continue;
    }
    const int64_t size = size_or_minus_one(path);
    Finding f{"lost", path, "never chosen for resume"};
    f.problem = true;
    f.step = lf.step;
    f.epoch = lf.epoch;
    f.iter = lf.iter;
    if (size < 0) {
      f.detail = "the file is missing";
      add(std::move(f));
    } else if (lf.bytes > 0 && size != lf.bytes) {
      f.finding = "corrupt";
      f.detail = fmt::format("{} bytes on disk, {} committed", size, lf.bytes);
      f.bytes = size;
      add(std::move(f));
    } else {
      // The other ranks' parts (policy/parts.h): the checkpoint is whole only with every one.
      for (size_t r = 1; r < lf.part_paths.size() && r < lf.part_bytes.size(); ++r) {
        const int64_t part_size = size_or_minus_one(lf.part_paths[r]);
        if (part_size == lf.part_bytes[r]) continue;
        if (part_size < 0) {
          f.detail = fmt::format("its part {} ({}) is missing", r, lf.part_paths[r]);
        } else {
          f.finding = "corrupt";
          f.detail = fmt::format("its part {} ({}) has {} bytes on disk, {} committed", r,
                                 lf.part_paths[r], part_size, lf.part_bytes[r]);
        }
        add(std::move(f));
        break;
      }
    }
  }
  // The parts live checkpoints list (and those of checkpoints retired as lost or corrupt, kept
  // with them); any other part file is an orphan. A save rolled forward lists its own parts in
  // place of those of the file it replaced, and a file its commit prunes lists none.
  std::set<std::string> live_parts, rolled_paths;
  for (const auto& [path, parts] : state.retired_parts)
    live_parts.insert(parts.begin(), parts.end());
  for (const Finding& f : rolled) {
    rolled_paths.insert(f.path);
    const auto sp = from_detail<SavePayload>(f.commit.front().detail, 0);
    for (size_t r = 1; r < sp.part_paths.size(); ++r) live_parts.insert(sp.part_paths[r]);
  }
  for (const auto& [path, lf] : state.live) {
    if (rolled_paths.count(path) || std::count(rolled_prunes.begin(), rolled_prunes.end(), path)) {
      continue;
    }
    for (size_t r = 1; r < lf.part_paths.size(); ++r) live_parts.insert(lf.part_paths[r]);
  }
  // Temp files no in-flight save accounts for, and checkpoint files the ledger never wrote.
  for (const std::string& dir : dirs) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      std::error_code fec;
      if (!entry.is_regular_file(fec)) continue;
      const std::string path = entry.path().string();
      const std::string name = entry.path().filename().string();
      const int64_t bytes = size_or_minus_one(path);
      if (is_temp(name)) {
        if (removed.count(path) || in_flight_temps.count(path)) continue;
        // .<name>.ckptledger-tmp is the temp file of <name>.
        const std::string target =
            name.size() > 1 && name[0] == '.'
                ? name.substr(1, name.size() - 1 - std::string(kTempSuffix).size())
                : std::string();
        const std::string target_path = (fs::path(dir) / target).string();
        if (look_behind && !target.empty() && scope.ours(target) && never_begun(target_path)) {
          plan.behind.push_back(
              fmt::format("{} is the temp file of a save of {} that this ledger never began", path,
                          target_path));
          continue;
        }
        Finding f{"stray_temp", path, "removed"};
        f.remove = path;
        f.bytes = bytes;
        add(std::move(f));
      } else if (is_part_name(name)) {
        // A part of a save that never committed (a rank died, or its exchange failed), or of a
        // checkpoint pruned or replaced since: no checkpoint lists it.
        if (live_parts.count(path)) continue;
        Finding f{"orphan_part", path, "removed", "a part no committed checkpoint lists"};
        if (scope.writer_active) {
          f = Finding{"in_flight", path, "none (a writer holds the ledger)",
                      "a part no committed checkpoint lists yet"};
        } else {
          f.remove = path;
        }
        f.bytes = bytes;
        add(std::move(f));
      } else if (entry.path().extension() == ".pth" && !state.live.count(path) &&
                 !state.pruned_pending.count(path) && !state.in_flight.count(path) &&
                 !state.retired.count(path) && !state.reported_unknown.count(path)) {
        if (look_behind && scope.ours(name) && never_begun(path)) {
          plan.behind.push_back(
              fmt::format("{} is named like this hook's checkpoints, but this ledger never began "
                          "it",
                          path));
          continue;
        }
        Finding f{"unknown_file", path, "left alone", "not written by this ledger"};
        f.bytes = bytes;
        add(std::move(f));
      }
    }
  }
  // last_checkpoint names the ledger's last regular checkpoint (it may lag after a crash), as it
  // is once the saves rolled forward are committed.
  std::string last_ckpt = state.last_ckpt;
  if (!rolled.empty()) {
    HookState after = state;
    HookStateFold fold(after);
    ReconcilePlan rolled_only;
    rolled_only.findings = rolled;
    for (const Event& e : rolled_only.events()) dispatch(e, fold);
    last_ckpt = after.last_ckpt;
  }
  plan.last_file = (fs::path(scope.work_dir) / "last_checkpoint").string();
  std::string last_content;
  if (std::ifstream in(plan.last_file); in) std::getline(in, last_content, '\0');
  // Read as MMEngine reads it (`.strip()`): an editor's trailing newline is not another name.
  const size_t first = last_content.find_first_not_of(" \t\r\n");
  last_content =
      first == std::string::npos
          ? std::string()
          : last_content.substr(first, last_content.find_last_not_of(" \t\r\n") - first + 1);
  // last_checkpoint is rewritten only after its file's save_committed is durable: naming a file
  // this ledger never committed, it is ahead of the ledger.
  if (look_behind && !last_content.empty() && last_content != last_ckpt &&
      !scope.ledger->names(last_content, {EventKind::kSaveCommitted})) {
    plan.behind.push_back(fmt::format("{} names {}, which this ledger never committed",
                                      plan.last_file, last_content));
  } else if (!last_ckpt.empty() && last_content != last_ckpt) {
    plan.last_rewrite = last_ckpt;
    add({"stale_last_checkpoint", plan.last_file, "rewritten",
         fmt::format("named '{}', the ledger's last is '{}'", last_content, last_ckpt)});
  }
  // A moved work_dir: what lies outside it may be the original's, and is only reported.
  if (!scope.confined_to.empty()) {
    const std::string inside = scope.confined_to + "/";
    for (Finding& f : plan.findings) {
      if (!f.remove.empty() && f.remove.compare(0, inside.size(), inside) != 0) {
        f.remove.clear();
        f.action = "left alone (outside the moved work_dir " + scope.confined_to + ")";
      }
    }
    if (!plan.last_rewrite.empty() && plan.last_file.compare(0, inside.size(), inside) != 0) {
      plan.last_rewrite.clear();
    }
  }
  return plan;
}

void apply_reconcile(const ReconcilePlan& plan, Ledger& ledger, HookState& state,
                     FileSystem& files) {
  if (!plan.behind.empty()) {
    std::string all;
    for (const std::string& b : plan.behind) all += (all.empty() ? "" : "; ") + b;
    throw_error(
        ErrorCode::kCorruption,
        fmt::format("ledger {} is behind the disk, refusing to repair: {}", ledger.path(), all));
  }
  if (plan.empty()) return;
  // The disk first, then the record: a crash in between leaves nothing the next open would not
  // find again (the record first would mark a prune completed whose file a crash kept, and the
  // next open would take that file for a stranger's; the torture test found it).
  for (const Finding& f : plan.findings) {
    if (!f.remove.empty()) remove_durably(f.remove, files);
  }
  if (!plan.last_rewrite.empty()) write_text_durably(plan.last_file, plan.last_rewrite, files);
  std::vector<Event> events = plan.events();
  ledger.append_batch(events);
  HookStateFold fold(state);
  for (const Event& e : events) dispatch(e, fold);
}

}  // namespace ckptledger
