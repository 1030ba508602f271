#include "ckptledger/checkpoint_hook.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <set>

#include <fmt/format.h>

#include "ckptledger/hook_state.h"
#include "ckptledger/ledger.h"
#include "hook/checkpoint_format.h"
#include "hook/coordinator.h"
#include "hook/layouts.h"
#include "hook/stager.h"
#include "hook/writer_pool.h"
#include "ledger/sha256.h"
#include "policy/hook_events.h"
#include "policy/parts.h"
#include "policy/save_planner.h"
#include "storage/dir_lock.h"
#include "storage/durable_file.h"
#include "storage/reconcile.h"

#ifndef CKPTLEDGER_VERSION
#define CKPTLEDGER_VERSION "0.1.0"
#endif

namespace ckptledger {
namespace {

namespace fs = std::filesystem;

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

std::string absolute_normal(const std::string& p) {
  return fs::absolute(fs::path(p)).lexically_normal().string();
}

std::string strip_trailing_slash(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

std::string local_time_stamp() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%d_%H%M%S", &tm);
  return buf;
}

std::string host_name() {
  char buf[256] = {};
  return ::gethostname(buf, sizeof(buf) - 1) == 0 ? std::string(buf) : std::string("unknown");
}

// Python's repr of a list of str, for MMEngine's log lines.
std::string py_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", '" : "'") + items[i] + "'";
  return out + "]";
}

c10::IValue hub_to_ivalue(const nlohmann::json& hub) {
  c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
  for (auto it = hub.begin(); it != hub.end(); ++it) {
    const nlohmann::json& v = it.value();
    if (v.is_number_float()) {
      d.insert(it.key(), v.get<double>());
    } else if (v.is_number_integer()) {
      d.insert(it.key(), v.get<int64_t>());
    } else if (v.is_string()) {
      d.insert(it.key(), v.get<std::string>());
    } else if (v.is_array()) {
      c10::impl::GenericList l(c10::AnyType::get());
      for (const auto& x : v) l.push_back(x.get<int64_t>());
      d.insert(it.key(), l);
    }
  }
  return d;
}

// State snapshots (Ledger::put_snapshot): one every kSnapshotEvery appended events (on the strand),
// one at open when the replayed tail was at least kSnapshotAtOpen events, one at after_run.
constexpr int64_t kSnapshotEvery = 10000;
constexpr int64_t kSnapshotAtOpen = 1000;

// Hands the checkpoint to the runner; when resuming, checks that its load_checkpoint restored the
// counters: a Runner that forgot them would retrain from 0 over later weights.
void load_into(Runner& runner, const c10::IValue& ckpt, const std::string& path, bool resume) {
  const c10::impl::GenericDict dict = ckpt.toGenericDict();
  runner.load_checkpoint(dict, resume);
  if (!resume || !dict.contains("meta") || !dict.at("meta").isGenericDict()) return;
  const c10::impl::GenericDict meta = dict.at("meta").toGenericDict();
  auto counter = [&](const char* k) -> std::optional<int64_t> {
    if (!meta.contains(k) || !meta.at(k).isInt()) return std::nullopt;
    return meta.at(k).toInt();
  };
  const auto epoch = counter("epoch"), iter = counter("iter");
  if ((epoch && *epoch != runner.epoch()) || (iter && *iter != runner.iter())) {
    throw_error(
        ErrorCode::kInvalidArgument,
        fmt::format("resume from {}: after Runner::load_checkpoint the runner is at epoch "
                    "{}, iter {}, but the checkpoint's meta says epoch {}, iter {}: "
                    "load_checkpoint must restore the counters when resuming "
                    "(LoopRunner::restore_counters)",
                    path, runner.epoch(), runner.iter(), epoch ? std::to_string(*epoch) : "-",
                    iter ? std::to_string(*iter) : "-"));
  }
}

}  // namespace

// Threads: the training thread makes every decision and owns the Runner; the writer pool's
// strand owns the ledger once training starts (appends, file writes, deletions). `mu` guards
// `state`, which both touch: decisions are applied at once (later decisions depend on them); the
// pool patches in what only the commit knows (bytes, digest, seq).
struct CheckpointHook::Impl {
  ValidatedConfig cfg;
  LogSink log;
  // `log` is called from the training thread and, when a failure cannot be recorded, from the
  // writer pool: one call at a time, so a sink needs no lock of its own.
  mutable std::mutex log_mu;
  // One writer per directory (storage/dir_lock.h): the work_dir's and the out_dir's, held from the
  // ledger's open to the hook's end (declared before `ledger`: released after it closes).
  std::vector<std::unique_ptr<DirLock>> dir_locks;
  std::unique_ptr<Ledger> ledger;
  std::unique_ptr<Stager> stager;
  mutable std::mutex mu;
  HookState state;  // guarded by mu
  std::string work_dir;
  std::string out_dir;
  bool resume_mode = false;    // the hub comes from the ledger (resume), not empty
  std::vector<Event> pending;  // resumed event, appended after run_started
  std::vector<std::string> stage_saves;
  std::vector<std::string> published;
  bool budget_sized = false;
  std::vector<std::pair<std::string, std::string>> corrupt_on_resume;  // path, why
  // The seq of the newest snapshot of the fold this hook started from or wrote (0: none). Read and
  // written by the training thread while the pool is idle (open, after_run) and by the strand.
  std::atomic<int64_t> snapshot_seq{0};
  FileSystem* files = nullptr;  // not owned
  // A job of several ranks (CheckpointHook::join; docs/distributed.md): the hook's own group.
  // Rank 0 is the ledger's only writer; every rank holds the same state, decides the same saves
  // and takes part in each save's exchange.
  std::unique_ptr<Coordinator> coord;
  int rank = 0;
  int world = 1;
  bool shared_open = false;          // the state came from rank 0 (or was handed to the others)
  bool run_ended = false;            // after_run returned: the hook leaves no exchange behind
  int64_t saves_in_run = 0;          // numbers the parts of this run's saves (policy/parts.h)
  std::vector<int64_t> exchange_us;  // rank 0: each commit's coordination cost (guarded by mu)
  // Last member: destroyed (drained, joined) first, while everything its jobs touch is alive.
  std::unique_ptr<WriterPool> pool;

  void emit(LogLevel level, const std::string& msg) const {
    if (!log) return;
    std::lock_guard<std::mutex> lock(log_mu);
    log(level, msg);
  }

  // The indicator keys as the hub names them ('auto' stays 'auto' until resolved).
  std::vector<std::string> hub_keys() const { return cfg.key_indicators(); }
  nlohmann::json hub(const HookState& s) const {
    return s.hub_info(cfg.single_indicator(), hub_keys());
  }

  std::string ledger_file() const {
    return cfg.options.ledger_path ? absolute_normal(*cfg.options.ledger_path)
                                   : join_path(work_dir, kDefaultLedgerName);
  }

  bool multi() const { return coord != nullptr; }
  bool writes_ledger() const { return rank == 0; }

  void open_ledger(Runner& runner) {
    if (multi()) {
      open_shared(runner);
      return;
    }
    open_ledger_alone(runner);
  }

  // Rank 0 opens the ledger (lock, replay, reconciliation) and hands the state, or its error, to
  // every other rank: all ranks start from the same state.
  void open_shared(Runner& runner) {
    if (shared_open) return;
    check_same_setup(runner);
    // Replay and reconciliation may take long: the others wait for it in the store (meet).
    if (rank == 0) {
      std::string state_bytes;
      try {
        open_ledger_alone(runner);
        std::lock_guard<std::mutex> lock(mu);
        state_bytes = "S" + serialize_state(state);
      } catch (const std::exception& ex) {
        tell_failure(ex);
        throw;
      }
      coord->meet();
      coord->broadcast(state_bytes);
    } else {
      work_dir = strip_trailing_slash(absolute_normal(runner.work_dir()));
      coord->meet();
      const std::string msg = coord->broadcast("");
      if (msg.empty() || msg[0] != 'S') {
        throw_error(ErrorCode::kIOError,
                    fmt::format("rank {}: rank 0 cannot open the ledger: {}", rank,
                                msg.empty() ? "(no reason)" : msg.substr(1)));
      }
      std::optional<HookState> s = deserialize_state(msg.substr(1));
      if (!s) {
        throw_error(ErrorCode::kCorruption,
                    fmt::format("rank {}: the hook state rank 0 sent does not read", rank));
      }
      std::lock_guard<std::mutex> lock(mu);
      state = std::move(*s);
    }
    shared_open = true;
  }

  // Every rank of a job must run the same hook config in the same work_dir (rank 0 decides the
  // file names every rank writes): rank 0's are compared with each rank's, and a difference is
  // an error on every rank (the rank that differs names the keys).
  void check_same_setup(Runner& runner) {
    nlohmann::json here = cfg.options.to_json();
    here["work_dir"] = strip_trailing_slash(absolute_normal(runner.work_dir()));
    const std::string mine = here.dump();
    const std::string zero = coord->broadcast(mine);
    const bool differs = zero != mine;
    if (coord->max(differs ? 1 : 0) == 0) return;
    if (!differs) {
      throw_error(ErrorCode::kInvalidArgument,
                  fmt::format("rank {}: another rank's hook config or work_dir differs from rank "
                              "0's (that rank's error names the keys): every rank of a job must "
                              "run the same CheckpointHook config in the same work_dir",
                              rank));
    }
    const nlohmann::json theirs = nlohmann::json::parse(zero);
    std::vector<std::string> keys;
    for (auto it = here.begin(); it != here.end(); ++it) {
      if (!theirs.contains(it.key()) || theirs[it.key()] != it.value()) keys.push_back(it.key());
    }
    for (auto it = theirs.begin(); it != theirs.end(); ++it) {
      if (!here.contains(it.key())) keys.push_back(it.key());
    }
    std::string detail;
    for (const std::string& k : keys) {
      detail += fmt::format("{}{}: rank 0 has {}, rank {} has {}", detail.empty() ? "" : "; ", k,
                            theirs.contains(k) ? theirs[k].dump() : "(unset)", rank,
                            here.contains(k) ? here[k].dump() : "(unset)");
    }
    throw_error(ErrorCode::kInvalidArgument,
                fmt::format("rank {}: the hook config or work_dir differs from rank 0's ({}): "
                            "every rank of a job must run the same CheckpointHook config in the "
                            "same work_dir",
                            rank, detail));
  }

  void open_ledger_alone(Runner& runner) {
    if (ledger) return;
    work_dir = strip_trailing_slash(absolute_normal(runner.work_dir()));
    std::error_code ec;
    fs::create_directories(work_dir, ec);
    if (ec) {
      throw_error(ErrorCode::kIOError, "cannot create work_dir " + work_dir + ": " + ec.message());
    }
    dir_locks.clear();
    dir_locks.push_back(DirLock::acquire(work_dir, ledger_file()));
    const std::string out = resolve_out_dir();
    if (out != work_dir) {
      fs::create_directories(out, ec);
      if (ec)
        throw_error(ErrorCode::kIOError, "cannot create out_dir " + out + ": " + ec.message());
      dir_locks.push_back(DirLock::acquire(out, ledger_file()));
    }
    try {
      ledger = Ledger::open(ledger_file());
    } catch (...) {
      dir_locks.clear();
      throw;
    }
    try {
      rebuild_state(/*snapshot_after=*/true, /*verify_chain=*/true);
      reconcile();
    } catch (...) {
      // A refused ledger stays refused: the next hook call opens and checks it again rather than
      // carrying on with it.
      ledger.reset();
      dir_locks.clear();
      throw;
    }
  }

  // out_dir is joined with work_dir's basename unless it is work_dir itself,
  // compared as normalised absolute paths (docs/behaviour.md: output directory).
  std::string resolve_out_dir() const {
    if (!cfg.options.out_dir) return work_dir;
    std::string given = strip_trailing_slash(absolute_normal(*cfg.options.out_dir));
    return given == work_dir ? given : join_path(given, fs::path(work_dir).filename().string());
  }

  // Checks the ledger against the disk before anything else happens (storage/reconcile.h), repairs
  // what a crash leaves behind and records every finding as a `recovered` event. The policy
  // (repair or refuse) is cfg.options.recovery.
  void reconcile() {
    ReconcileScope scope;
    scope.work_dir = work_dir;
    scope.extra_dirs.insert(out_dir.empty() ? resolve_out_dir() : out_dir);
    scope.ledger = ledger.get();
    scope.ours = checkpoint_name_matcher(cfg.filename_tmpl);
    if (!ledger->moved_roots().empty()) scope.confined_to = work_dir;
    ReconcilePlan plan;
    {
      std::lock_guard<std::mutex> lock(mu);
      plan = plan_reconcile(state, scope);
    }
    // The ledger lost events the work_dir saw (storage/reconcile.h): no policy repairs that.
    // Resuming would load an older checkpoint than the newest one, and the next saves would
    // overwrite files the ledger does not know. Nothing is appended and no file is touched, so
    // the user can still put the missing -wal (or the right ledger) back.
    if (!plan.behind.empty()) {
      std::string all;
      for (const std::string& b : plan.behind) all += (all.empty() ? "" : "; ") + b;
      throw_error(
          ErrorCode::kCorruption,
          fmt::format(
              "ledger {} is behind the work_dir {}: {}. The ledger lost events that the disk "
              "saw: it was restored from an older copy, or its -wal file was deleted after the "
              "training process died (or another program wrote checkpoints here). Refusing to "
              "start (recovery={}): no event was appended and no file touched; resuming would "
              "start from an older checkpoint and later saves could overwrite these files. Put "
              "back the ledger's -wal file or the ledger that belongs to this work_dir; or, to "
              "go on from what this ledger knows, move the files it does not know (and "
              "last_checkpoint) out of the way",
              ledger->path(), work_dir, all,
              cfg.options.recovery == RecoveryMode::kStrict ? "strict" : "repair"));
    }
    if (plan.empty()) return;
    for (const Finding& f : plan.findings) {
      emit(LogLevel::kWarning, fmt::format("recovery: {} {}: {}{}", f.finding, f.path, f.action,
                                           f.detail.empty() ? "" : " (" + f.detail + ")"));
    }
    const std::vector<std::string> problems = plan.problems();
    if (cfg.options.recovery == RecoveryMode::kStrict && !problems.empty()) {
      std::string all;
      for (const std::string& p : problems) all += (all.empty() ? "" : "; ") + p;
      throw_error(ErrorCode::kCorruption,
                  fmt::format("ledger {} disagrees with the disk (recovery=strict): {}",
                              ledger->path(), all));
    }
    std::lock_guard<std::mutex> lock(mu);
    apply_reconcile(plan, *ledger, state, *files);
  }

  // The fold of the ledger's events: the newest trusted snapshot (Ledger::latest_snapshot: a prefix
  // of this chain) plus the events after it, or every event when there is no readable snapshot.
  // `*from_seq`: the snapshot's seq (0: none); `*to_seq`: the last event folded.
  HookState fold_ledger(int64_t* from_seq, int64_t* to_seq) const {
    HookState s;
    int64_t after = 0;
    try {
      if (std::optional<Snapshot> snap = ledger->latest_snapshot(kHookStateFormat)) {
        if (std::optional<HookState> restored = deserialize_state(snap->blob)) {
          s = std::move(*restored);
          after = snap->seq;
          if (!ledger->moved_roots().empty()) {
            reroot_paths(s, [&](const std::string& p) { return ledger->reroot(p); });
          }
        } else {
          emit(LogLevel::kWarning,
               fmt::format("ledger {}: the state snapshot at seq {} is unreadable: ignored, "
                           "replaying every event",
                           ledger->path(), snap->seq));
        }
      }
    } catch (const std::exception& ex) {
      // Snapshots are a cache: whatever is wrong with them, the events decide.
      s = HookState{};
      after = 0;
      emit(LogLevel::kWarning, fmt::format("ledger {}: state snapshots ignored ({}): replaying "
                                           "every event",
                                           ledger->path(), ex.what()));
    }
    HookStateFold fold(s);
    const int64_t n = ledger->replay_range(fold, after);
    if (!ledger->moved_roots().empty()) {
      reroot_parts(s, [&](const std::string& p) { return ledger->reroot(p); });
    }
    if (from_seq) *from_seq = after;
    if (to_seq) *to_seq = after + n;
    return s;
  }

  // Records `s`, the fold of the events up to `seq`, as a snapshot. A cache: a failure is logged,
  // never raised (the next resume replays more events, that is all).
  void write_snapshot(const HookState& s, int64_t seq) {
    try {
      ledger->put_snapshot(seq, kHookStateFormat, serialize_state(s));
    } catch (const std::exception& ex) {
      emit(LogLevel::kWarning,
           fmt::format("ledger {}: cannot record a state snapshot at seq {}: {}", ledger->path(),
                       seq, ex.what()));
    }
    snapshot_seq = seq;  // failed or not: the next try is a full interval later
  }

  // On the strand after appends (or with the pool idle): once `every` events were appended since
  // the last snapshot, folds the ledger (snapshot + tail) and records that fold.
  void maybe_snapshot(int64_t every) {
    if (!ledger || ledger->read_only() || ledger->last_seq() - snapshot_seq < every) return;
    try {
      int64_t from = 0, to = 0;
      HookState s = fold_ledger(&from, &to);
      if (to > from) write_snapshot(s, to);
    } catch (const std::exception& ex) {
      snapshot_seq = ledger->last_seq();
      emit(LogLevel::kWarning,
           fmt::format("ledger {}: no state snapshot: {}", ledger->path(), ex.what()));
    }
  }

  // The state is the fold of the ledger (docs/crash-safety.md: state = fold(events)); also how a
  // failed write is rolled back. At open
  // (`snapshot_after`), a long tail replayed is recorded as a snapshot for the next resume.
  void rebuild_state(bool snapshot_after = false, bool verify_chain = false) {
    int64_t from = 0, to = 0;
    HookState fresh = fold_ledger(&from, &to);
    if (verify_chain) {
      // The history a resume stands on: the events after the last verified point (the snapshot
      // the state came from, written by a writer that had verified or written everything before
      // it) must link into the hash chain. An edited event is refused in every recovery mode:
      // repairing history is not reconciliation's to do.
      VerifyReport r = ledger->verify_from(from);
      if (!r.ok()) {
        throw_error(ErrorCode::kCorruption,
                    fmt::format("ledger {}: the hash chain is broken at seq {}: {}. Refusing to "
                                "resume from a history that was changed after it was written "
                                "(recovery={}); `ckptledger verify {}` shows the chain",
                                ledger->path(), r.first_bad_seq, r.problem,
                                cfg.options.recovery == RecoveryMode::kStrict ? "strict" : "repair",
                                ledger->path()));
      }
    }
    snapshot_seq = from;
    if (snapshot_after && to - from >= kSnapshotAtOpen) write_snapshot(fresh, to);
    std::lock_guard<std::mutex> lock(mu);
    state = std::move(fresh);
  }

  // Applies decided events to the live state now (training thread).
  void decide(const std::vector<Event>& events) {
    std::lock_guard<std::mutex> lock(mu);
    HookStateFold fold(state);
    for (const Event& e : events) dispatch(e, fold);
  }

  // After the pool appended events: what only the commit knows goes into the live state.
  void patch_committed(const std::vector<Event>& events) {
    std::lock_guard<std::mutex> lock(mu);
    for (const Event& e : events) {
      if (e.kind != EventKind::kSaveCommitted && e.kind != EventKind::kPublished) continue;
      auto it = state.live.find(e.path);
      if (it == state.live.end()) continue;
      std::optional<SavePayload> p;
      if (e.kind == EventKind::kSaveCommitted && multi()) {
        p = from_detail<SavePayload>(e.detail, e.seq);
        // A later save under the same name (the re-save after a best) was decided since: the
        // live entry is that save's, with its parts; its own commit patches it. Patching it with
        // this one's parts would make the next decision remove the wrong parts, at a moment that
        // differs per rank (the ranks then decide differently).
        if (it->second.part_paths != p->part_paths) continue;
      }
      it->second.bytes = e.bytes.value_or(0);
      it->second.digest = e.digest;
      it->second.seq = e.seq;
      if (p) {
        it->second.layout = p->layout;
        it->second.world_size = p->world_size;
        it->second.part_bytes = p->part_bytes;
        it->second.part_sha256 = p->part_sha256;
      }
    }
  }

  // `paths` and the other ranks' parts of each (read before the decision that forgets them).
  std::vector<std::string> with_parts(std::vector<std::string> paths) const {
    std::lock_guard<std::mutex> lock(mu);
    const size_t n = paths.size();
    for (size_t i = 0; i < n; ++i) {
      auto it = state.live.find(paths[i]);
      if (it == state.live.end()) continue;
      for (size_t r = 1; r < it->second.part_paths.size(); ++r) {
        paths.push_back(it->second.part_paths[r]);
      }
    }
    return paths;
  }

  HookState snapshot() const {
    std::lock_guard<std::mutex> lock(mu);
    return state;
  }

  // A hook call of a job that raises leaves the job (Coordinator::leave): its pending exchanges
  // run first, then the other ranks learn why it stopped and no exchange waits for it any more.
  // Alone, a call raises as it is.
  template <typename F>
  auto guarded(F&& call) -> decltype(call()) {
    if (!multi()) return call();
    try {
      return call();
    } catch (const std::exception& ex) {
      pool->drain();
      coord->leave(rank_prefixed(rank, ex.what()));
      throw;
    }
  }

  // The periodic save after the n-th of `max` iterations or epochs (`unit`): due every `interval`
  // from save_begin, and at the last one with save_last.
  void save_if_due(Runner& runner, int64_t n, int64_t max, const char* unit, int64_t epoch,
                   int64_t iter) {
    const HookConfig& o = cfg.options;
    const int64_t d = n - o.save_begin;
    const bool due = o.interval > 0 && d >= 0 && d % o.interval == 0;
    const bool last = o.save_last && n == max;
    if (!due && !last) return;
    emit(LogLevel::kInfo, fmt::format("Saving checkpoint at {} {}", n, unit));
    save_regular(runner, n, epoch, iter);
    check_error();
  }

  // "rank r: why", once: `why` that already starts with this rank's prefix is kept as it is.
  static std::string rank_prefixed(int64_t r, const std::string& why) {
    const std::string self = fmt::format("rank {}: ", r);
    return why.compare(0, self.size(), self) == 0 ? why : self + why;
  }

  // Rank 0, failing where the others wait for what it sends (its state at open, what it
  // published): they receive the error ("E" + message), after the meeting. Failing to tell them
  // (the group broke) changes nothing: the error raised is this one.
  void tell_failure(const std::exception& ex) {
    try {
      coord->meet();
      coord->broadcast(std::string("E") + ex.what());
    } catch (const std::exception&) {
    }
  }

  // In a job, a step every rank takes (resume, the run's end) succeeds or fails on every rank
  // together: when any rank's `failure` is set, every rank raises one error naming each rank that
  // failed and why (the lowest such rank's error code). Alone, `failure` is raised as it is.
  void agree(const std::exception_ptr& failure) {
    if (!multi()) {
      if (failure) std::rethrow_exception(failure);
      return;
    }
    try {
      coord->meet();  // the step may take one rank longer (a large load, rank 0's last append)
    } catch (const std::exception&) {
      if (failure) std::rethrow_exception(failure);  // this rank's own error says more
      throw;
    }
    nlohmann::json mine;
    if (failure) {
      try {
        std::rethrow_exception(failure);
      } catch (const Error& e) {
        mine = {{"code", static_cast<int>(e.code())}, {"error", e.what()}};
      } catch (const std::exception& e) {
        mine = {{"code", static_cast<int>(ErrorCode::kIOError)}, {"error", e.what()}};
      }
    }
    if (coord->max(failure ? 1 : 0) == 0) return;
    const std::vector<std::string> all = coord->gather(failure ? pack(mine) : "");
    nlohmann::json verdict;
    if (rank == 0) {
      std::string message;
      for (size_t r = 0; r < all.size(); ++r) {
        if (all[r].empty()) continue;
        const nlohmann::json j = unpack(all[r]);
        message += (message.empty() ? "" : "; ") +
                   rank_prefixed(static_cast<int64_t>(r), j.at("error").get<std::string>());
        if (!verdict.contains("code")) verdict["code"] = j.at("code");
      }
      verdict["error"] = message;
    }
    verdict = unpack(coord->broadcast(rank == 0 ? pack(verdict) : ""));
    throw_error(static_cast<ErrorCode>(verdict.at("code").get<int>()),
                verdict.at("error").get<std::string>());
  }

  // Events that are not a file write (validated, run_started, ...): decided now, appended on
  // the pool in order with the saves; `remove_after` files go once they are recorded.
  void record(std::vector<Event> events, std::vector<std::string> remove_after = {}) {
    if (events.empty()) return;
    remove_after = with_parts(std::move(remove_after));
    decide(events);
    if (!writes_ledger()) return;  // rank 0 appends; every rank holds the same state
    pool->post(
        [this, events = std::move(events), remove_after = std::move(remove_after)]() mutable {
          ledger->append_batch(events);
          patch_committed(events);
          for (const std::string& p : remove_after) remove_durably(p, *files);
          maybe_snapshot(kSnapshotEvery);
        });
  }

  // A sticky failure from the pool surfaces here, on the training thread: the live state is
  // rebuilt from the ledger (nothing was pruned on behalf of the failed save), then the error is
  // raised or, with on_error=warn, logged.
  void check_error() {
    std::exception_ptr e = pool->take_error();
    if (!e) return;
    pool->drain();
    if (ledger) rebuild_state();  // the other ranks of a job stop (on_error=raise): nothing to redo
    // The failure keeps its own code (a full disk is kIOError, a state the writer cannot encode
    // kInvalidArgument, ...); only errors from outside ckptledger become kIOError.
    std::string what = "checkpoint write failed";
    ErrorCode code = ErrorCode::kIOError;
    try {
      std::rethrow_exception(e);
    } catch (const Error& ex) {
      what += std::string(": ") + ex.what();
      code = ex.code();
    } catch (const std::exception& ex) {
      what += std::string(": ") + ex.what();
    }
    if (cfg.options.on_error == OnError::kWarn) {
      emit(LogLevel::kWarning, what + " (on_error=warn: training goes on)");
      return;
    }
    throw_error(code, what);
  }

  void begin_stage() {
    stage_saves.clear();
    check_error();
  }

  c10::impl::GenericDict content(Runner& runner, int64_t epoch, int64_t iter, bool with_optimizer,
                                 bool with_schedulers, const HookState& hub_state) {
    c10::impl::GenericDict meta(c10::StringType::get(), c10::AnyType::get());
    meta.insert("epoch", epoch);
    meta.insert("iter", iter);
    for (const auto& kv : runner.meta_extra()) meta.insert(kv.key(), kv.value());
    meta.insert("time", local_time_stamp());
    meta.insert("ckptledger_version", std::string(CKPTLEDGER_VERSION));

    bool schedulers = with_schedulers && runner.has_param_schedulers();
    if (with_schedulers && !runner.has_param_schedulers()) {
      emit(LogLevel::kWarning,
           "`save_param_scheduler` is True but `self.param_schedulers` is None, so skip saving "
           "parameter schedulers");
    }
    c10::impl::GenericDict state_parts = runner.checkpoint_state(with_optimizer, schedulers);

    c10::impl::GenericDict hub_dict(c10::StringType::get(), c10::AnyType::get());
    c10::impl::GenericDict resumed(c10::StringType::get(), c10::AnyType::get());
    nlohmann::json h = hub(hub_state);
    for (auto it = h.begin(); it != h.end(); ++it) resumed.insert(it.key(), true);
    hub_dict.insert("log_scalars",
                    c10::impl::GenericDict(c10::StringType::get(), c10::AnyType::get()));
    hub_dict.insert("runtime_info", hub_to_ivalue(h));
    hub_dict.insert("resumed_keys", resumed);

    c10::impl::GenericDict ckpt(c10::StringType::get(), c10::AnyType::get());
    ckpt.insert("meta", meta);
    ckpt.insert("state_dict", state_parts.at("state_dict"));
    ckpt.insert("message_hub", hub_dict);
    if (with_optimizer && state_parts.contains("optimizer")) {
      ckpt.insert("optimizer", state_parts.at("optimizer"));
    }
    if (schedulers && state_parts.contains("param_schedulers")) {
      ckpt.insert("param_schedulers", state_parts.at("param_schedulers"));
    }
    // The runner's own keys (RNG state, data loader, EMA weights, ...) follow, in its order, as
    // MMEngine's hooks add theirs in before_save_checkpoint; the hook's keys are never replaced.
    for (const auto& kv : state_parts) {
      if (!ckpt.contains(kv.key()) && kv.key() != "optimizer" && kv.key() != "param_schedulers") {
        ckpt.insert(kv.key(), kv.value());
      }
    }
    return ckpt;
  }

  // One checkpoint file, as planned (policy/save_planner.h). The training thread applies the
  // decision (`commit`: save_committed first, then what it supersedes), builds the content from
  // the state after the decision (MMEngine updates the hub before saving) and, unless `sync`,
  // stages a copy of its tensors. The pool then appends save_begun, writes the bytes durably under
  // their final name, appends `commit` in one transaction, removes the superseded files and
  // rewrites last_checkpoint (docs/crash-safety.md: durable before referenced, delete after
  // successor, off the critical path).
  void save(Runner& runner, PlannedSave plan) {
    // What the save supersedes goes with the parts other ranks wrote of it, and a save under a
    // name already live (the re-save after a best) replaces that file's parts too.
    plan.remove_after = with_parts(std::move(plan.remove_after));
    for (const std::string& p : with_parts({plan.path})) {
      if (p != plan.path) plan.remove_after.push_back(p);
    }
    if (multi()) {
      save_shared(runner, std::move(plan));
      return;
    }
    const std::string path = plan.path;
    std::vector<Event> commit = std::move(plan.commit);
    std::vector<std::string> remove_after = std::move(plan.remove_after);
    const bool moves_last_checkpoint = plan.moves_last_checkpoint;
    decide(commit);
    c10::impl::GenericDict ckpt = content(runner, plan.meta_epoch, plan.meta_iter,
                                          plan.with_optimizer, plan.with_schedulers, snapshot());
    std::shared_ptr<Staged> staged;
    int64_t stall_us = 0;
    if (!pool->synchronous()) {
      std::chrono::nanoseconds stall{0};
      if (!budget_sized) size_budget(ckpt);
      staged = stager->stage(c10::IValue(ckpt), &stall);
      stall_us = std::chrono::duration_cast<std::chrono::microseconds>(stall).count();
      if (stall_us >= 1000) {
        // Flow control, not a fault: the writer is slower than saves are decided.
        emit(LogLevel::kInfo,
             fmt::format("checkpoint {} waited {:.1f} ms for the writer (in-flight budget full)",
                         path, stall_us / 1000.0));
      }
    }
    SavePayload sp = from_detail<SavePayload>(commit.front().detail, 0);
    sp.stall_us = stall_us;
    commit.front().detail = to_detail(sp);
    stage_saves.push_back(path);
    pool->post(
        [this, path, staged, ckpt, commit = std::move(commit),
         remove_after = std::move(remove_after), moves_last_checkpoint]() mutable {
          append_begun(commit);
          if (staged) staged->wait_ready();
          const c10::IValue& body = staged ? staged->content() : c10::IValue(ckpt);
          // Replacing a file under its name (the re-save after a best): its new size and SHA-256
          // are durable in the ledger before the rename, so a crash between the rename and the
          // commit leaves bytes the ledger knows (reconciliation rolls the save forward).
          auto prepare = [&](const WrittenFile& w) { prepare_replacement(path, w, commit); };
          WrittenFile w = write_durably(
              path, [&](const ByteSink& sink) { write_checkpoint(body, sink); }, *files, prepare);
          staged.reset();  // the buffer set is free for the next save
          commit.front().bytes = static_cast<int64_t>(w.bytes);
          commit.front().digest = w.sha256;
          ledger->append_batch(commit);
          after_commit(path, commit, remove_after, moves_last_checkpoint);
        },
        [this, path](std::exception_ptr e) { record_save_failed(path, e); });
  }

  // A save's first event: the decision, before any byte is written.
  void append_begun(const std::vector<Event>& commit) {
    Event begun = commit.front();
    begun.kind = EventKind::kSaveBegun;
    begun.bytes.reset();
    ledger->append(begun);
  }

  // What follows a save's commit (rank 0 of a job, or a process alone): the live state gets the
  // committed bytes, then what the save superseded goes and last_checkpoint names it.
  void after_commit(const std::string& path, const std::vector<Event>& commit,
                    const std::vector<std::string>& remove_after, bool moves_last_checkpoint) {
    patch_committed(commit);
    for (const std::string& p : remove_after) remove_durably(p, *files);
    if (moves_last_checkpoint)
      write_text_durably(join_path(work_dir, "last_checkpoint"), path, *files);
    maybe_snapshot(kSnapshotEvery);
  }

  // max_inflight_bytes counts staged snapshot bytes; 0 means a validation's burst in flight: the
  // regular save, a best save per key and the regular re-save after a best (back to back, so that
  // a normal validation never waits for the writer).
  void size_budget(const c10::IValue& ckpt) {
    budget_sized = true;
    const int64_t budget = cfg.options.max_inflight_bytes;
    size_t sets = cfg.best.empty() ? 1 : 2 + cfg.best.size();
    if (budget > 0) {
      uint64_t bytes = 0;
      std::function<void(const c10::IValue&)> walk = [&](const c10::IValue& v) {
        if (v.isTensor()) bytes += v.toTensor().nbytes();
        if (v.isGenericDict()) {
          for (const auto& kv : v.toGenericDict()) walk(kv.value());
        }
        if (v.isList()) {
          for (const auto& x : v.toListRef()) walk(x);
        }
      };
      walk(ckpt);
      sets = std::max<uint64_t>(1, static_cast<uint64_t>(budget) / std::max<uint64_t>(1, bytes));
    }
    stager = std::make_unique<Stager>(sets);
  }

  SavePlanner planner() const {
    return SavePlanner(cfg, out_dir, [](const std::string& p) { return fs::exists(p); });
  }

  void save_regular(Runner& runner, int64_t step, int64_t meta_epoch, int64_t meta_iter) {
    save(runner, planner().plan_regular(snapshot(), step, meta_epoch, meta_iter));
  }

  void after_val_epoch(Runner& runner, const Metrics& metrics) {
    // A copy under the lock: the writer pool patches committed entries meanwhile.
    ValidationPlan plan =
        planner().plan_validation(snapshot(), metrics, runner.epoch(), runner.iter());
    decide({plan.validated});
    // Appended after every save this validation triggers, also when one of them throws.
    struct AppendAtEnd {
      Impl* impl;
      Event e;
      ~AppendAtEnd() {
        if (!impl->writes_ledger()) return;
        impl->pool->post([impl = impl, e = e]() mutable {
          std::vector<Event> v{e};
          impl->ledger->append_batch(v);
          impl->maybe_snapshot(kSnapshotEvery);
        });
      }
    } append_validated{this, plan.validated};
    for (PlanStep& step : plan.steps) {
      if (!step.save) {
        emit(step.level, step.message);
        continue;
      }
      std::vector<std::pair<LogLevel, std::string>> logs = std::move(step.save->logs_after);
      save(runner, std::move(*step.save));
      for (const auto& [level, message] : logs) emit(level, message);
    }
  }

  // ---- a job of several ranks (docs/distributed.md) -------------------------------------------

  // What a rank decided for one exchange, in words: every rank's must equal rank 0's.
  static std::string describe_decision(const std::string& path, const std::vector<Event>& commit,
                                       const std::vector<std::string>& remove_after) {
    std::string out = "save " + path + ", commit [";
    for (size_t i = 0; i < commit.size(); ++i) {
      const Event& e = commit[i];
      out += fmt::format("{}{} {}", i ? ", " : "", event_kind_name(e.kind), e.path);
      if (!e.metric.empty()) out += " " + e.metric;
      if (e.score) out += fmt::format("={}", *e.score);
    }
    out += "], then remove [";
    for (size_t i = 0; i < remove_after.size(); ++i) {
      out += (i ? ", " : "") + remove_after[i];
    }
    return out + "]";
  }

  // The checkpoint `path` as one dictionary: a "spread" checkpoint's parts assembled; a
  // "sharded" one: this rank's part. When `verify`, each file read is checked against its
  // committed SHA-256: nullopt and `*why` when one differs, is missing or does not load. A file
  // whose bytes are exactly the committed ones but that does not load is raised, not skipped:
  // the reader refuses what was written, and falling back to an older checkpoint would hide that.
  std::optional<c10::IValue> read_parts(const std::string& path, const LiveFile& lf, bool verify,
                                        std::string* why) {
    auto read_one = [&](const std::string& p,
                        const std::string& digest) -> std::optional<c10::IValue> {
      if (!verify) return read_checkpoint(p);
      try {
        VerifiedCheckpoint v = read_checkpoint_verified(p, digest);
        if (v.matches) return std::move(v.value);
        if (why) *why = "SHA-256 mismatch of " + p;
        return std::nullopt;
      } catch (const Error& load_error) {
        std::string actual;
        try {
          actual = Sha256::file_hex(p);
        } catch (const Error& e) {
          if (why) *why = e.what();  // missing or unreadable
          return std::nullopt;
        }
        if (actual == digest) throw;
        if (why) *why = "SHA-256 mismatch of " + p + " (" + load_error.what() + ")";
        return std::nullopt;
      }
    };
    if (lf.layout == "sharded" && lf.part_paths.size() > 1) {
      // Each rank's own part (rank 0: the file itself).
      if (rank == 0) return read_one(path, lf.digest);
      return read_one(lf.part_paths.at(static_cast<size_t>(rank)),
                      lf.part_sha256.at(static_cast<size_t>(rank)));
    }
    std::optional<c10::IValue> part0 = read_one(path, lf.digest);
    if (!part0 || lf.layout != "spread" || lf.part_paths.size() <= 1) return part0;
    std::vector<c10::IValue> others;
    for (size_t r = 1; r < lf.part_paths.size(); ++r) {
      std::optional<c10::IValue> part = read_one(lf.part_paths[r], lf.part_sha256.at(r));
      if (!part) return std::nullopt;
      others.push_back(std::move(*part));
    }
    return assemble_spread(*part0, others);
  }

  c10::IValue read_whole(const std::string& path) {
    LiveFile lf;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = state.live.find(path);
      if (it != state.live.end()) lf = it->second;
    }
    return *read_parts(path, lf, /*verify=*/false, nullptr);
  }

  // A "sharded" checkpoint is each rank's own state: it resumes only at the world size that
  // wrote it.
  void check_world_size(const std::string& path, const LiveFile& lf) const {
    if (lf.layout != "sharded" || lf.world_size == world) return;
    throw_error(ErrorCode::kInvalidArgument,
                fmt::format("cannot resume from {}: it was saved with save_layout \"sharded\" by "
                            "{} ranks, and this job has {}; a sharded checkpoint holds each "
                            "rank's own state and resumes only at the world size that wrote it "
                            "(\"main\" and \"spread\" resume at any world size)",
                            path, lf.world_size, world));
  }

  // The exchange that ends every save of a job (and the run's end): each rank reports its part
  // (or its failure) and what it decided; rank 0 commits only when every part is durable and
  // every decision equals its own, and tells every rank the outcome. Reports and outcomes travel
  // as CBOR, which carries any path's bytes (a path need not be UTF-8).
  static std::string pack(const nlohmann::json& j) {
    const std::vector<uint8_t> bytes = nlohmann::json::to_cbor(j);
    return std::string(bytes.begin(), bytes.end());
  }
  static nlohmann::json unpack(const std::string& bytes) {
    return nlohmann::json::from_cbor(bytes);
  }

  struct Report {
    bool ok = true;
    std::string error;
    std::string path;  // "" = this rank wrote nothing
    int64_t bytes = 0;
    std::string sha256;
    int64_t stall_us = 0;
    std::string decision;
    int64_t arrive_us = 0;  // CLOCK_MONOTONIC when the rank entered the exchange
    std::string packed() const {
      return pack(nlohmann::json{{"ok", ok},
                                 {"error", error},
                                 {"path", path},
                                 {"bytes", bytes},
                                 {"sha256", sha256},
                                 {"stall_us", stall_us},
                                 {"decision", decision},
                                 {"arrive_us", arrive_us}});
    }
    static Report unpacked(const std::string& bytes) {
      const nlohmann::json j = unpack(bytes);
      Report r;
      r.ok = j.at("ok");
      r.error = j.at("error");
      r.path = j.at("path");
      r.bytes = j.at("bytes");
      r.sha256 = j.at("sha256");
      r.stall_us = j.at("stall_us");
      r.decision = j.at("decision");
      r.arrive_us = j.at("arrive_us");
      return r;
    }
  };

  // Rank 0: the gathered reports checked; the save's payload completed with its parts. Throws
  // (every rank then raises it) on a failed part or a decision that is not rank 0's. `label`
  // names the exchange in messages ("step 12", "the run's end"). `*last_arrival_us`: when the
  // last rank entered the exchange.
  void check_reports(const std::vector<std::string>& texts, const Report& mine,
                     const std::string& label, std::vector<Event>& commit,
                     int64_t* last_arrival_us = nullptr) {
    std::vector<Report> reports;
    for (const std::string& t : texts) reports.push_back(Report::unpacked(t));
    reports.at(0) = mine;
    if (last_arrival_us) {
      for (const Report& r : reports) *last_arrival_us = std::max(*last_arrival_us, r.arrive_us);
    }
    for (size_t r = 1; r < reports.size(); ++r) {
      if (reports[r].decision != mine.decision) {
        throw_error(ErrorCode::kInvalidArgument,
                    fmt::format("the ranks decided differently at {}: rank 0 decided \"{}\"; "
                                "rank {} decided \"{}\" (are the metrics all-reduced, and the "
                                "hook configs equal?); nothing was committed",
                                label, mine.decision, r, reports[r].decision));
      }
    }
    std::string failed;
    for (size_t r = 0; r < reports.size(); ++r) {
      if (!reports[r].ok)
        failed += fmt::format("{}rank {}: {}", failed.empty() ? "" : "; ", r, reports[r].error);
    }
    if (!failed.empty()) {
      throw_error(ErrorCode::kIOError, fmt::format("{}: not committed: {}", label, failed));
    }
    if (commit.empty()) return;
    SavePayload sp = from_detail<SavePayload>(commit.front().detail, 0);
    for (size_t r = 0; r < sp.part_paths.size() && r < reports.size(); ++r) {
      if (reports[r].path != sp.part_paths[r]) {
        throw_error(ErrorCode::kInvalidArgument,
                    fmt::format("{}: rank {} wrote \"{}\" where the decided part {} is \"{}\"; "
                                "nothing was committed",
                                label, r, reports[r].path, r, sp.part_paths[r]));
      }
    }
    sp.part_paths.clear();
    for (size_t r = 0; r < (sp.layout != "main" ? reports.size() : 1); ++r) {
      sp.part_paths.push_back(reports[r].path);
      sp.part_bytes.push_back(reports[r].bytes);
      sp.part_sha256.push_back(reports[r].sha256);
      sp.part_stall_us.push_back(reports[r].stall_us);
    }
    commit.front().detail = to_detail(sp);
  }

  static std::string message_of(std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      return ex.what();
    } catch (...) {
      return "unknown error";
    }
  }

  // One exchange of a job, as the writer pool runs it on every rank (a collective job: it runs
  // even after this rank failed, `earlier`, so that the rank still takes its turn and every rank
  // learns of the failure instead of waiting for it). Rank 0: save_begun, its own part up to the
  // rename, the exchange, save_prepared when it replaces a file, the rename, the commit (every
  // part listed), the outcome to every rank, then the removals. Rank r > 0: its part written
  // durably (or its failure), the exchange, the outcome. With no commit (the run's end) only the
  // exchange. A rank that dies makes every other rank's exchange fail.
  struct SharedSave {
    std::string label;    // "step 12", "the run's end"
    std::string path;     // the checkpoint (rank 0's file); "" at the run's end
    std::string my_path;  // what this rank writes; "" = nothing
    std::shared_ptr<Staged> staged;
    c10::IValue body;  // when not staged (sync)
    Report mine;
    std::vector<Event> commit;  // rank 0 appends it; the others patch their state with it
    std::vector<std::string> remove_after;
    bool moves_last_checkpoint = false;
  };

  void shared_job(std::exception_ptr earlier, SharedSave job) {
    using Clock = std::chrono::steady_clock;
    Report& mine = job.mine;
    std::vector<Event>& commit = job.commit;
    if (earlier && mine.ok) {
      // The whole message went to the caller with the first failure; here its start is enough.
      std::string why = message_of(earlier);
      if (why.size() > 300) why = why.substr(0, 300) + "...";
      mine.ok = false;
      mine.error = "an earlier checkpoint job of this rank failed: " + why;
    }
    auto produce = [&](const ByteSink& sink) {
      write_checkpoint(job.staged ? job.staged->content() : job.body, sink);
    };
    auto monotonic_us = []() {
      timespec ts{};
      clock_gettime(CLOCK_MONOTONIC, &ts);
      return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
    };
    if (rank != 0) {
      if (!job.my_path.empty() && mine.ok) {
        try {
          if (job.staged) job.staged->wait_ready();
          WrittenFile w = write_durably(job.my_path, produce, *files);
          mine.bytes = static_cast<int64_t>(w.bytes);
          mine.sha256 = w.sha256;
        } catch (const std::exception& ex) {
          mine.ok = false;
          mine.error = ex.what();
        }
      }
      job.staged.reset();
      mine.arrive_us = monotonic_us();
      nlohmann::json outcome;
      try {
        coord->gather(mine.packed(), /*wait_for_all=*/true);
        outcome = unpack(coord->broadcast(""));
      } catch (const Error& ex) {
        throw_error(ex.code(), fmt::format("{}: not committed: {}", job.label, ex.what()));
      }
      if (!outcome.at("ok").get<bool>()) {
        throw_error(static_cast<ErrorCode>(outcome.at("code").get<int>()),
                    outcome.at("error").get<std::string>());
      }
      if (!commit.empty()) {
        commit.front().bytes = outcome.at("bytes").get<int64_t>();
        commit.front().digest = outcome.at("digest").get<std::string>();
        commit.front().detail = outcome.at("detail").get<std::string>();
        commit.front().seq = outcome.at("seq").get<int64_t>();
        patch_committed({commit.front()});
      }
      return;
    }
    // exchanged: the reports were gathered; labeled: the error at hand already names the save and
    // every rank that failed (check_reports).
    bool exchanged = false, told = false, labeled = false;
    // The coordination's own cost: from the last rank's arrival at the exchange (the ranks share
    // CLOCK_MONOTONIC on one host; on several hosts the clocks differ and only the commit counts)
    // to the end of the gather, plus the commit transaction. No part's write is in it.
    int64_t coord_us = 0;
    auto exchange = [&]() {
      mine.arrive_us = monotonic_us();
      std::vector<std::string> texts = coord->gather(mine.packed(), /*wait_for_all=*/true);
      exchanged = true;
      int64_t last = 0;
      labeled = true;
      check_reports(texts, mine, job.label, commit, &last);
      labeled = false;
      coord_us += std::max<int64_t>(0, monotonic_us() - std::max(last, mine.arrive_us));
    };
    try {
      if (!mine.ok) throw_error(ErrorCode::kIOError, mine.error);
      if (commit.empty()) {
        exchange();
      } else {
        append_begun(commit);
        if (job.staged) job.staged->wait_ready();
        WrittenFile w = write_durably(job.path, produce, *files, [&](const WrittenFile& written) {
          mine.bytes = static_cast<int64_t>(written.bytes);
          mine.sha256 = written.sha256;
          exchange();
          prepare_replacement(job.path, written, commit);
        });
        job.staged.reset();
        commit.front().bytes = static_cast<int64_t>(w.bytes);
        commit.front().digest = w.sha256;
        // The commit's own time cannot be in the record it writes: coord_us is the exchange's;
        // CheckpointHook::exchange_timings() has both.
        SavePayload sp = from_detail<SavePayload>(commit.front().detail, 0);
        sp.coord_us = coord_us;
        commit.front().detail = to_detail(sp);
        const auto t0 = Clock::now();
        ledger->append_batch(commit);
        coord_us +=
            std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
        {
          std::lock_guard<std::mutex> lock(mu);
          exchange_us.push_back(coord_us);
        }
      }
      nlohmann::json outcome{{"ok", true}};
      if (!commit.empty()) {
        outcome["bytes"] = commit.front().bytes.value_or(0);
        outcome["digest"] = commit.front().digest;
        outcome["detail"] = commit.front().detail;
        outcome["seq"] = commit.front().seq;
      }
      coord->broadcast(pack(outcome));
      told = true;
      if (!commit.empty())
        after_commit(job.path, commit, job.remove_after, job.moves_last_checkpoint);
    } catch (const std::exception& ex) {
      if (told) throw;
      std::string message = ex.what();
      ErrorCode code = ErrorCode::kIOError;
      if (const auto* e = dynamic_cast<const Error*>(&ex)) code = e->code();
      try {
        if (!exchanged) {
          // Rank 0 failed before the exchange (its own part, or earlier): the others wait in it.
          mine.ok = false;
          mine.error = message;
          std::vector<std::string> texts = coord->gather(mine.packed(), /*wait_for_all=*/true);
          try {
            check_reports(texts, mine, job.label, commit);
          } catch (const Error& all) {
            message = all.what();
            code = all.code();
            labeled = true;
          }
        }
        coord->broadcast(pack(
            nlohmann::json{{"ok", false}, {"error", message}, {"code", static_cast<int>(code)}}));
      } catch (const std::exception&) {
        // The exchange itself failed (a rank died; the group is broken now): the others see that
        // on their own.
      }
      if (!labeled) message = fmt::format("{}: not committed: rank 0: {}", job.label, message);
      throw_error(code, message);
    }
  }

  // Replacing a file under its name: its new size and SHA-256, and the commit that follows, are
  // durable in the ledger before the rename (docs/crash-safety.md: save_prepared).
  void prepare_replacement(const std::string& path, const WrittenFile& w,
                           const std::vector<Event>& commit) {
    std::error_code ec;
    if (!fs::exists(path, ec)) return;
    Event prepared = commit.front();
    prepared.kind = EventKind::kSavePrepared;
    prepared.bytes = static_cast<int64_t>(w.bytes);
    prepared.digest = w.sha256;
    PreparedPayload pp;
    pp.commit = commit.front().detail;
    for (size_t i = 1; i < commit.size(); ++i) {
      const Event& x = commit[i];
      PreparedEvent pe;
      pe.kind = event_kind_name(x.kind);
      pe.path = x.path;
      pe.step = x.step.value_or(0);
      pe.epoch = x.epoch.value_or(0);
      pe.iter = x.iter.value_or(0);
      pe.metric = x.metric;
      pe.has_score = x.score.has_value();
      pe.score = x.score.value_or(0);
      pe.detail = x.detail;
      pp.then.push_back(to_detail(pe));
    }
    prepared.detail = to_detail(pp);
    ledger->append(prepared);
  }

  // Posts `job` as a collective job (shared_job); rank 0 records save_failed when a save fails.
  void post_shared(SharedSave job) {
    const std::string path = job.path;
    pool->post_collective(
        [this, job = std::move(job)](std::exception_ptr earlier) mutable {
          shared_job(earlier, std::move(job));
        },
        rank != 0 || path.empty()
            ? std::function<void(std::exception_ptr)>()
            : [this, path](std::exception_ptr e) { record_save_failed(path, e); });
  }

  // One checkpoint of a job: every rank decides it (the same decision), builds and stages what
  // its layout gives it to write, and posts the exchange (shared_job). When building or staging
  // fails on this rank, the exchange still goes out carrying the failure (so that no rank waits
  // for this one), and the error is raised here.
  void save_shared(Runner& runner, PlannedSave plan) {
    SharedSave job;
    job.path = plan.path;
    job.commit = std::move(plan.commit);
    job.remove_after = std::move(plan.remove_after);
    job.moves_last_checkpoint = plan.moves_last_checkpoint;
    const int64_t step = job.commit.front().step.value_or(0);
    job.label = fmt::format("step {}", step);
    Report& mine = job.mine;
    const std::string& layout = cfg.options.save_layout;
    mine.decision = describe_decision(job.path, job.commit, job.remove_after) +
                    fmt::format(", layout {} of {} ranks", layout, world);
    const int64_t save_no = ++saves_in_run;
    int64_t run = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      run = state.runs;
    }
    // The parts' names are known now (policy/parts.h), so that a later decision (a prune, a
    // re-save) finds them before this save is committed; sizes and digests come with the commit.
    SavePayload sp = from_detail<SavePayload>(job.commit.front().detail, 0);
    sp.v = 2;
    sp.layout = layout;
    sp.world_size = world;
    sp.part_paths = {job.path};
    for (int r = 1; layout != "main" && r < world; ++r) {
      sp.part_paths.push_back(part_path(job.path, r, run, save_no));
    }
    job.commit.front().detail = to_detail(sp);
    decide(job.commit);
    std::exception_ptr failure;
    try {
      if (rank == 0 || layout != "main") {
        c10::IValue ckpt(content(runner, plan.meta_epoch, plan.meta_iter, plan.with_optimizer,
                                 plan.with_schedulers, snapshot()));
        job.body = layout == "spread" ? spread_body(ckpt, rank, world) : ckpt;
        mine.path = sp.part_paths.at(static_cast<size_t>(rank));
      }
      if (!mine.path.empty() && !pool->synchronous()) {
        std::chrono::nanoseconds stall{0};
        if (!budget_sized) size_budget(job.body);
        job.staged = stager->stage(job.body, &stall);
        mine.stall_us = std::chrono::duration_cast<std::chrono::microseconds>(stall).count();
        job.body = c10::IValue();  // the staged copy is written
      }
    } catch (const std::exception& ex) {
      failure = std::current_exception();
      mine.ok = false;
      mine.error = fmt::format("building the checkpoint's content failed: {}", ex.what());
      job.staged.reset();
      job.body = c10::IValue();
    }
    sp.stall_us = mine.stall_us;
    job.commit.front().detail = to_detail(sp);
    job.my_path = mine.path;
    stage_saves.push_back(job.path);
    post_shared(std::move(job));
    if (failure) std::rethrow_exception(failure);
  }

  // The run's end: one more exchange, so that a rank that made more or fewer saves than rank 0
  // is told, not left waiting; a rank's failure not raised yet travels with it to every rank.
  void finish_shared(Runner& runner) {
    SharedSave job;
    job.label = "the run's end";
    job.mine.decision =
        fmt::format("finish the run at epoch {}, iter {}", runner.epoch(), runner.iter());
    post_shared(std::move(job));
  }

  void record_save_failed(const std::string& path, std::exception_ptr e) {
    Event failed;
    failed.kind = EventKind::kSaveFailed;
    failed.path = path;
    SavePayload fp;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      fp.error = ex.what();
    }
    failed.detail = to_detail(fp);
    try {
      ledger->append(failed);
    } catch (const std::exception& ex) {
      // The ledger itself is failing: the original error stays the sticky one.
      emit(LogLevel::kError, std::string("cannot record save_failed: ") + ex.what());
    }
  }

  // MMEngine's after_train: the last checkpoint and each best one, published. Returns the events
  // recorded.
  std::vector<Event> publish_all() {
    std::vector<Event> out;
    if (cfg.options.save_last && !state.last_ckpt.empty()) out.push_back(publish(state.last_ckpt));
    for (const std::string& indicator : cfg.key_indicators()) {
      std::string key = indicator == "auto" ? state.auto_key : indicator;
      auto it = state.best.find(key);
      if (it != state.best.end()) {
        out.push_back(publish(it->second.path));
      } else if (!cfg.single_indicator()) {
        // MMEngine fails here with a TypeError on the None path; we skip and say so
        // (docs/behaviour.md: publishing).
        emit(LogLevel::kWarning,
             fmt::format("best checkpoint for '{}' was never saved: nothing to publish", key));
      }
    }
    return out;
  }

  Event publish(const std::string& src) {
    c10::IValue loaded = read_whole(src);
    c10::impl::GenericDict in = loaded.toGenericDict();
    c10::impl::GenericDict out(in.keyType(), in.valueType());
    const std::vector<std::string>& wanted = *cfg.published_keys;
    std::vector<std::string> dropped, kept;
    for (const auto& kv : in) {
      std::string key = kv.key().isString() ? kv.key().toStringRef() : kv.key().tagKind();
      if (std::find(wanted.begin(), wanted.end(), key) != wanted.end()) {
        out.insert(kv.key(), kv.value());
        kept.push_back(key);
      } else {
        dropped.push_back(key);
      }
    }
    if (!dropped.empty()) {
      emit(LogLevel::kInfo,
           fmt::format("Key {} will be removed because they are not found in published_keys. If "
                       "you want to keep them, please set `{}` in published_keys",
                       py_list(dropped), py_list(dropped)));
    }
    // The name is the SHA-256 of the published bytes, which are deterministic (docs/behaviour.md:
    // publishing): equal content gets the same name, and publishing it again writes no second file.
    Sha256 sha;
    write_checkpoint(c10::IValue(out), [&](const void* d, size_t n) { sha.update(d, n); });
    const std::string digest = sha.hex_digest();
    fs::path stem = fs::path(src).replace_extension();
    const std::string dst = stem.string() + "-" + digest.substr(0, 8) + ".pth";
    PublishedPayload pp;
    pp.source = src;
    pp.keys = kept;
    uint64_t size = 0;
    if (fs::exists(dst) && Sha256::file_hex(dst, &size) == digest) {
      pp.already_present = true;
    } else {
      WrittenFile w = write_durably(
          dst, [&](const ByteSink& sink) { write_checkpoint(c10::IValue(out), sink); }, *files);
      size = w.bytes;
    }
    Event e;
    e.kind = EventKind::kPublished;
    e.path = dst;
    e.bytes = static_cast<int64_t>(size);
    e.digest = digest;
    e.detail = to_detail(pp);
    record({e});
    published.push_back(dst);
    emit(LogLevel::kInfo, fmt::format("The checkpoint ({}) is published to {}.", src, dst));
    return e;
  }
};

CheckpointHook::CheckpointHook(const HookConfig& config, LogSink log, FileSystem* fs)
    : impl_(std::make_unique<Impl>()) {
  impl_->files = fs ? fs : &FileSystem::posix();
  impl_->cfg = validate(config);
  impl_->log = std::move(log);
  const HookConfig& o = impl_->cfg.options;
  impl_->pool = std::make_unique<WriterPool>(o.sync ? 0 : static_cast<size_t>(o.writer_threads),
                                             static_cast<int>(o.writer_nice));
  for (const std::string& w : impl_->cfg.warnings) impl_->emit(LogLevel::kWarning, w);
}

CheckpointHook::~CheckpointHook() {
  // Every accepted save is committed or recorded as failed before the hook goes away.
  if (impl_->pool) impl_->pool->drain();
  // A hook of a job that goes away before the run's end (the program unwinds an error of its own)
  // leaves the job: no other rank waits for its next exchange.
  if (impl_->coord && !impl_->run_ended) {
    try {
      impl_->coord->leave(
          fmt::format("rank {}: its CheckpointHook was destroyed before the run's "
                      "end (after_run)",
                      impl_->rank));
    } catch (const std::exception&) {
    }
  }
}

std::optional<std::string> CheckpointHook::resume(Runner& runner, bool resume,
                                                  const std::optional<std::string>& load_from) {
  return impl_->guarded([&]() -> std::optional<std::string> {
    Impl& m = *impl_;
    m.open_ledger(runner);
    m.resume_mode = resume;
    std::string path;
    c10::IValue ckpt;
    ResumedPayload rp;
    if (m.multi()) {
      // Every rank takes the same branch below (its exchanges must pair up with the others').
      const std::string intent =
          fmt::format("resume={} load_from={}", resume,
                      load_from ? absolute_normal(*load_from) : std::string("(none)"));
      const std::string zero = m.coord->broadcast(intent);
      std::exception_ptr differs;
      if (zero != intent) {
        differs = std::make_exception_ptr(Error(
            ErrorCode::kInvalidArgument,
            fmt::format("rank {}: resume() was called with {} where rank 0 has {}: every rank of "
                        "a job resumes the same way",
                        m.rank, intent, zero)));
      }
      m.agree(differs);
    }
    if (load_from) {
      path = absolute_normal(*load_from);
      rp.source = "load_from";
      std::exception_ptr failure;
      try {
        // A checkpoint this ledger holds is read with its parts (a "spread" one assembled, a
        // "sharded" one: this rank's part).
        LiveFile lf;
        {
          std::lock_guard<std::mutex> lock(m.mu);
          auto it = m.state.live.find(path);
          if (it != m.state.live.end()) lf = it->second;
        }
        ckpt = lf.part_paths.size() > 1 ? *m.read_parts(path, lf, /*verify=*/false, nullptr)
                                        : read_checkpoint(path);
        if (lf.part_paths.size() <= 1 && (is_spread_part(ckpt) || has_spread_placeholder(ckpt))) {
          throw_error(ErrorCode::kInvalidArgument,
                      fmt::format("cannot load {}: it is one part of a \"spread\" checkpoint (the "
                                  "other ranks' tensors are in other files) that this work_dir's "
                                  "ledger does not list; write it as one file with `ckptledger "
                                  "export` through the ledger that recorded it, and load that",
                                  path));
        }
      } catch (const std::exception&) {
        failure = std::current_exception();
      }
      m.agree(failure);
    } else if (resume) {
      rp.source = "auto";
      // Newest committed regular checkpoint whose bytes still match the ledger (docs/behaviour.md:
      // resume). Each candidate is loaded and hashed in one read of the file (the SHA-256 on a
      // second thread); a load whose digest is not the committed one is discarded.
      for (auto it = m.state.regular_order.rbegin(); it != m.state.regular_order.rend(); ++it) {
        auto live = m.state.live.find(*it);
        if (live == m.state.live.end()) continue;
        m.check_world_size(*it, live->second);
        // 0: verified; 1: rejected (`why`); 2: raised (read_parts: committed bytes that do not
        // load). In a job every rank verifies what it loads, and the worst verdict of any rank
        // decides for all (docs/distributed.md).
        std::string why;
        std::optional<c10::IValue> mine;
        std::exception_ptr raised;
        try {
          mine = m.read_parts(*it, live->second, /*verify=*/true, &why);
        } catch (const std::exception& ex) {
          raised = std::current_exception();
          why = ex.what();
        }
        int64_t verdict = mine ? 0 : raised ? 2 : 1;
        if (m.multi()) {
          m.coord->meet();  // a rank's read of a large part is not a dead rank
          verdict = m.coord->max(verdict);
          if (verdict != 0) {
            std::string all;
            std::vector<std::string> whys = m.coord->gather(mine ? "" : why);
            for (size_t r = 0; r < whys.size(); ++r) {
              if (!whys[r].empty())
                all += fmt::format("{}rank {}: {}", all.empty() ? "" : "; ", r, whys[r]);
            }
            why = m.coord->broadcast(all);
          }
        }
        if (verdict == 0) {
          path = *it;
          ckpt = std::move(*mine);
          break;
        }
        if (verdict == 2) {
          if (raised) std::rethrow_exception(raised);
          throw_error(ErrorCode::kCorruption,
                      fmt::format("rank {}: cannot resume from {}: another rank cannot load its "
                                  "committed bytes ({})",
                                  m.rank, *it, why));
        }
        rp.rejected += (rp.rejected.empty() ? "" : "; ") + *it + ": " + why;
        m.corrupt_on_resume.push_back({*it, why});
        m.emit(
            LogLevel::kWarning,
            fmt::format("checkpoint {} does not verify ({}); trying the previous one", *it, why));
      }
      if (path.empty()) {
        m.emit(LogLevel::kInfo, "Did not find last_checkpoint to be resumed.");
        return std::nullopt;
      }
    } else {
      return std::nullopt;
    }
    // What the runner makes of the checkpoint, decided together: a rank that cannot load it stops
    // every rank here, not at the training's next collective.
    std::exception_ptr failure;
    try {
      load_into(runner, ckpt, path, resume);
    } catch (const std::exception&) {
      failure = std::current_exception();
    }
    m.agree(failure);
    if (resume) {
      std::string bests;
      for (const auto& [key, b] : m.state.best) {
        bests += fmt::format("{}{} {} ({})", bests.empty() ? "; best " : ", ", key, b.score,
                             fs::path(b.path).filename().string());
      }
      m.emit(LogLevel::kInfo, fmt::format("Resumed from {}: epoch {}, iter {}{}", path,
                                          runner.epoch(), runner.iter(), bests));
    }
    Event e;
    e.kind = EventKind::kResumed;
    e.path = path;
    e.epoch = runner.epoch();
    e.iter = runner.iter();
    e.detail = to_detail(rp);
    m.pending.push_back(e);
    return path;
  });
}

void CheckpointHook::before_train(Runner& runner) {
  return impl_->guarded([&]() -> void {
    Impl& m = *impl_;
    m.begin_stage();
    m.open_ledger(runner);
    m.out_dir = m.resolve_out_dir();
    m.emit(LogLevel::kInfo, fmt::format("Checkpoints will be saved to {}.", m.out_dir));

    RunStartedPayload rs;
    rs.config = m.cfg.options.to_json().dump();
    rs.work_dir = m.work_dir;
    rs.out_dir = m.out_dir;
    rs.pid = ::getpid();
    rs.host = host_name();
    rs.resume = m.resume_mode;
    rs.version = CKPTLEDGER_VERSION;
    std::vector<Event> start;
    if (!m.state.config.empty() && m.state.config != rs.config) {
      nlohmann::json prev = nlohmann::json::parse(m.state.config, nullptr, false);
      nlohmann::json cur = nlohmann::json::parse(rs.config);
      ConfigChangedPayload cc;
      for (auto it = cur.begin(); it != cur.end(); ++it) {
        if (!prev.is_object() || !prev.contains(it.key()) || prev[it.key()] != it.value()) {
          cc.changed.push_back(it.key());
        }
      }
      cc.previous = m.state.config;
      cc.current = rs.config;
      Event e;
      e.kind = EventKind::kConfigChanged;
      e.detail = to_detail(cc);
      start.push_back(e);
      m.emit(LogLevel::kInfo, fmt::format("CheckpointHook config changed since the last run: {}",
                                          py_list(cc.changed)));
    }
    Event run;
    run.kind = EventKind::kRunStarted;
    run.detail = to_detail(rs);
    start.push_back(run);
    for (const auto& [path, why] : m.corrupt_on_resume) {
      Event e;
      e.kind = EventKind::kRecovered;
      e.path = path;
      RecoveredPayload rp;
      rp.finding = "corrupt";
      rp.action = "never chosen for resume; fell back to the previous checkpoint";
      rp.detail = why;
      e.detail = to_detail(rp);
      start.push_back(e);
    }
    m.corrupt_on_resume.clear();
    for (Event& e : m.pending) start.push_back(e);
    m.pending.clear();
    m.record(std::move(start));

    // As MMEngine's before_train: a smaller max_keep_ckpts trims the restored keep list.
    TrimPlan trim = m.planner().plan_keep_trim(m.snapshot(), runner.epoch(), runner.iter());
    if (!trim.prunes.empty()) m.record(std::move(trim.prunes), std::move(trim.remove_after));
  });
}

void CheckpointHook::after_train_iter(Runner& runner, int64_t /*batch_idx*/) {
  return impl_->guarded([&]() -> void {
    Impl& m = *impl_;
    m.begin_stage();
    if (m.cfg.options.by_epoch) return;
    const int64_t n = runner.iter() + 1;
    m.save_if_due(runner, n, runner.max_iters(), "iterations", runner.epoch(), n);
  });
}

void CheckpointHook::after_train_epoch(Runner& runner) {
  return impl_->guarded([&]() -> void {
    Impl& m = *impl_;
    m.begin_stage();
    if (!m.cfg.options.by_epoch) return;
    const int64_t n = runner.epoch() + 1;
    m.save_if_due(runner, n, runner.max_epochs(), "epochs", n, runner.iter());
  });
}

void CheckpointHook::after_val_epoch(Runner& runner, const Metrics& metrics) {
  return impl_->guarded([&]() -> void {
    impl_->begin_stage();
    impl_->after_val_epoch(runner, metrics);
    impl_->check_error();
  });
}

void CheckpointHook::after_train(Runner& /*runner*/) {
  return impl_->guarded([&]() -> void {
    Impl& m = *impl_;
    if (!m.multi()) {
      m.begin_stage();
      if (!m.cfg.published_keys) return;
      // Publishing reads what was saved: everything in flight lands first.
      m.pool->drain();
      m.check_error();
      m.publish_all();
      return;
    }
    // A job: rank 0 publishes (from the committed parts) and hands every rank what it recorded,
    // so that every rank's state stays the same (the pools are idle: the exchange is free). Every
    // rank takes part in that exchange, also with a failure of its own to raise (rank 0 then sends
    // it), so that none waits for a rank that has stopped.
    m.stage_saves.clear();
    if (!m.cfg.published_keys) {
      m.check_error();
      return;
    }
    m.pool->drain();
    std::exception_ptr failure;
    try {
      m.check_error();
    } catch (const std::exception&) {
      failure = std::current_exception();
    }
    if (m.rank == 0) {
      nlohmann::json events = nlohmann::json::array();
      try {
        if (failure) std::rethrow_exception(failure);
        for (const Event& e : m.publish_all()) {
          events.push_back({{"path", e.path},
                            {"bytes", e.bytes.value_or(0)},
                            {"digest", e.digest},
                            {"detail", e.detail}});
        }
      } catch (const std::exception& ex) {
        m.tell_failure(ex);
        throw;
      }
      m.coord->meet();  // publishing may take long: the others wait for it in the store
      m.coord->broadcast("P" + Impl::pack(events));
      return;
    }
    m.coord->meet();
    const std::string msg = m.coord->broadcast("");
    if (failure) std::rethrow_exception(failure);
    if (msg.empty() || msg[0] != 'P') {
      throw_error(ErrorCode::kIOError, fmt::format("rank {}: rank 0 could not publish: {}", m.rank,
                                                   msg.empty() ? "(no reason)" : msg.substr(1)));
    }
    std::vector<Event> events;
    for (const nlohmann::json& j : Impl::unpack(msg.substr(1))) {
      Event e;
      e.kind = EventKind::kPublished;
      e.path = j.at("path");
      e.bytes = j.at("bytes").get<int64_t>();
      e.digest = j.at("digest");
      e.detail = j.at("detail");
      m.published.push_back(e.path);
      events.push_back(std::move(e));
    }
    m.record(std::move(events));
  });
}

void CheckpointHook::after_run(Runner& runner) {
  return impl_->guarded([&]() -> void {
    Impl& m = *impl_;
    if (m.multi()) {
      // The run's end is an exchange every rank makes: a failure this rank has not raised yet goes
      // to every rank with it (shared_job), then is raised here.
      m.stage_saves.clear();
      m.finish_shared(runner);
      m.pool->drain();
    } else {
      m.begin_stage();
    }
    m.check_error();
    // Rank 0 records the run's end; in a job, every rank raises what that meets.
    std::exception_ptr failure;
    try {
      if (m.ledger) {
        Event e;
        e.kind = EventKind::kRunFinished;
        m.record({e});
        m.pool->drain();
        m.check_error();
        // The next resume starts from here (the pool is idle: the training thread may use the
        // ledger).
        m.maybe_snapshot(1);
      }
    } catch (const std::exception&) {
      failure = std::current_exception();
    }
    m.agree(failure);
    m.run_ended = true;
  });
}

void CheckpointHook::wait_idle() { impl_->pool->drain(); }

void CheckpointHook::join(const c10::intrusive_ptr<c10d::ProcessGroup>& group,
                          const c10::intrusive_ptr<c10d::Store>& store,
                          std::chrono::milliseconds timeout,
                          std::chrono::milliseconds write_timeout) {
  Impl& m = *impl_;
  if (m.ledger || m.shared_open || m.coord) {
    throw_error(ErrorCode::kInvalidArgument,
                "CheckpointHook::join: call it once, before resume() and before_train()");
  }
  if (!group || !store) {
    throw_error(ErrorCode::kInvalidArgument,
                "CheckpointHook::join: the process group and its store must not be null");
  }
  if (Coordinator::size_of(group) == 1) return;  // one rank: exactly a process alone
  if (m.cfg.options.on_error == OnError::kWarn) {
    throw_error(ErrorCode::kInvalidArgument,
                "CheckpointHook::join: on_error \"warn\" is not supported with a process group: "
                "a failed save stops every rank (on_error \"raise\"), and torchrun restarts the "
                "job from the last committed checkpoint");
  }
  auto coord = std::make_unique<Coordinator>(group, store, timeout, write_timeout);
  m.rank = coord->rank();
  m.world = coord->size();
  m.coord = std::move(coord);
}

int CheckpointHook::rank() const { return impl_->rank; }
std::vector<int64_t> CheckpointHook::exchange_timings() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->exchange_us;
}
int CheckpointHook::world_size() const { return impl_->world; }

nlohmann::json CheckpointHook::hub_info() const { return impl_->hub(impl_->state); }
const std::string& CheckpointHook::out_dir() const { return impl_->out_dir; }
const ValidatedConfig& CheckpointHook::config() const { return impl_->cfg; }
const std::vector<std::string>& CheckpointHook::last_stage_saves() const {
  return impl_->stage_saves;
}
const std::vector<std::string>& CheckpointHook::published() const { return impl_->published; }
std::string CheckpointHook::ledger_path() const { return impl_->ledger_file(); }
const HookState& CheckpointHook::state() const { return impl_->state; }

bool CheckpointHook::validation_complete(int64_t epoch, int64_t iter) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->state.validated.count({epoch, iter}) > 0;
}

}  // namespace ckptledger
