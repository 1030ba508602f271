#include "hook/reconcile.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "hook/hook_events.h"
#include "ledger/event_handler.h"
#include "ledger/payload.h"

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

int64_t size_or_minus_one(const std::string& path) {
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  return ec ? -1 : static_cast<int64_t>(size);
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

ReconcilePlan plan_reconcile(const HookState& state, const ReconcileScope& scope) {
  ReconcilePlan plan;
  std::set<std::string> removed;  // files some finding already removes
  auto add = [&](Finding f) {
    if (!f.remove.empty()) removed.insert(f.remove);
    plan.findings.push_back(std::move(f));
  };
  std::set<std::string> dirs{scope.work_dir};
  dirs.insert(scope.extra_dirs.begin(), scope.extra_dirs.end());
  std::set<std::string> in_flight_temps;

  // A save that began and never committed: the process died while writing it (or, with a live
  // writer, is writing it now).
  for (const auto& [path, begun] : state.in_flight) {
    dirs.insert(fs::path(path).parent_path().string());
    const std::string temp = temp_of(path);
    const int64_t temp_bytes = size_or_minus_one(temp);
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
  // A prune that was decided (and recorded) but whose file is still there.
  for (const std::string& path : state.pruned_pending) {
    const int64_t bytes = size_or_minus_one(path);
    if (state.live.count(path) || bytes < 0) continue;
    Finding f{"prune_completed", path, "removed"};
    f.remove = path;
    f.bytes = bytes;
    add(std::move(f));
  }
  // Committed files must still be there with the size the commit recorded; the SHA-256 of the one
  // a resume loads is checked when it is loaded (`ckptledger verify` hashes them all).
  for (const auto& [path, lf] : state.live) {
    dirs.insert(fs::path(path).parent_path().string());
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
    }
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
        Finding f{"stray_temp", path, "removed"};
        f.remove = path;
        f.bytes = bytes;
        add(std::move(f));
      } else if (entry.path().extension() == ".pth" && !state.live.count(path) &&
                 !state.pruned_pending.count(path) && !state.in_flight.count(path) &&
                 !state.retired.count(path) && !state.reported_unknown.count(path)) {
        Finding f{"unknown_file", path, "left alone", "not written by this ledger"};
        f.bytes = bytes;
        add(std::move(f));
      }
    }
  }
  // last_checkpoint names the ledger's last regular checkpoint (it may lag after a crash).
  plan.last_file = (fs::path(scope.work_dir) / "last_checkpoint").string();
  std::string last_content;
  if (std::ifstream in(plan.last_file); in) std::getline(in, last_content, '\0');
  if (!state.last_ckpt.empty() && last_content != state.last_ckpt) {
    plan.last_rewrite = state.last_ckpt;
    add({"stale_last_checkpoint", plan.last_file, "rewritten",
         fmt::format("named '{}', the ledger's last is '{}'", last_content, state.last_ckpt)});
  }
  return plan;
}

void apply_reconcile(const ReconcilePlan& plan, Ledger& ledger, HookState& state,
                     FileSystem& files) {
  if (plan.empty()) return;
  std::vector<Event> events = plan.events();
  ledger.append_batch(events);
  HookStateFold fold(state);
  for (const Event& e : events) dispatch(e, fold);
  for (const Finding& f : plan.findings) {
    if (!f.remove.empty()) remove_durably(f.remove, files);
  }
  if (!plan.last_rewrite.empty()) write_text_durably(plan.last_file, plan.last_rewrite, files);
}

}  // namespace ckptledger
