// Recovery at open (docs/crash-safety.md): reconciliation findings, verified resume, strict
// policy, one writer per work_dir, and "nothing due is skipped" after a resume.
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ckptledger/checkpoint_hook.h"
#include "ckptledger/hook_state.h"
#include "ckptledger/ledger.h"
#include "ckptledger/loops.h"
#include "hook/checkpoint_format.h"
#include "ledger/sha256.h"
#include "ledger/sqlite.h"
#include "policy/hook_events.h"
#include "storage/durable_file.h"
#include "storage/reconcile.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class Runner1 : public LoopRunner {
 public:
  explicit Runner1(std::string work_dir) : work_dir_(std::move(work_dir)) {
    w_ = torch::zeros({8, 8});
  }
  std::string work_dir() const override { return work_dir_; }
  c10::impl::GenericDict checkpoint_state(bool, bool) override {
    c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
    c10::impl::GenericDict sd(c10::StringType::get(), c10::AnyType::get());
    sd.insert("w", w_);
    d.insert("state_dict", sd);
    return d;
  }
  bool has_param_schedulers() const override { return false; }
  void load_checkpoint(const c10::impl::GenericDict& ckpt, bool resume) override {
    w_ = ckpt.at("state_dict").toGenericDict().at("w").toTensor().clone();
    if (resume) restore_counters(ckpt);
  }
  torch::Tensor w_;

 private:
  std::string work_dir_;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

class RecoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("ckpt_recovery_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    work_ = (dir_ / "exp").string();
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string p(const std::string& name) const { return work_ + "/" + name; }
  std::string ledger_path() const { return p("ckptledger.sqlite"); }

  // A finished run: epochs 1..n saved, a validation after each.
  void train(int n, const char* config = R"({"interval": 1, "save_best": "acc"})") {
    CheckpointHook hook(HookConfig::from_json(nlohmann::json::parse(config)));
    Runner1 r(work_);
    LoopOptions o;
    o.validate = [](int64_t step) { return Metrics{{"acc", 0.1 * static_cast<double>(step)}}; };
    EpochLoop loop(
        r, hook, n, 2, [&](int64_t) { r.w_ += 1; }, o);
    loop.run();
  }
  std::vector<std::pair<std::string, std::string>> findings() {
    LedgerOptions ro;
    ro.mode = OpenMode::kReadOnly;
    auto l = Ledger::open(ledger_path(), ro);
    std::vector<std::pair<std::string, std::string>> out;
    l->for_each([&](const Event& e) {
      if (e.kind == EventKind::kRecovered) {
        out.push_back({from_detail<RecoveredPayload>(e.detail, e.seq).finding, e.path});
      }
      return true;
    });
    return out;
  }
  void append_raw(Event e) {
    auto l = Ledger::open(ledger_path());
    l->append(e);
  }
  // Opens a hook on the work_dir and auto-resumes; returns what it loaded.
  std::optional<std::string> reopen(const char* config = R"({"interval": 1, "save_best": "acc"})",
                                    Runner1* out = nullptr) {
    CheckpointHook hook(HookConfig::from_json(nlohmann::json::parse(config)));
    Runner1 local(work_);
    Runner1& r = out ? *out : local;
    auto loaded = hook.resume(r);
    hook.before_train(r);
    hook.wait_idle();
    return loaded;
  }

  fs::path dir_;
  std::string work_;
};

TEST_F(RecoveryTest, TornSaveIsAbortedAndItsTempFileRemoved) {
  train(2);
  Event begun;
  begun.kind = EventKind::kSaveBegun;
  begun.path = p("epoch_3.pth");
  begun.step = 3;
  begun.epoch = 3;
  begun.iter = 6;
  begun.detail =
      R"({"v":1,"role":"regular","key":"","keep_tracked":false,"keep_ckpt_ids":[],"error":"","stall_us":0})";
  append_raw(begun);
  const std::string temp = p(".epoch_3.pth.ckptledger-tmp");
  std::ofstream(temp) << "half a checkpoint";
  auto loaded = reopen();
  EXPECT_EQ(loaded, p("epoch_2.pth"));
  EXPECT_FALSE(fs::exists(temp));
  EXPECT_THAT(findings(),
              ::testing::Contains(std::make_pair(std::string("torn_save"), p("epoch_3.pth"))));
}

TEST_F(RecoveryTest, DecidedPruneWhoseFileSurvivedIsCompleted) {
  train(2);
  Event prune;
  prune.kind = EventKind::kPruned;
  prune.path = p("epoch_1.pth");
  prune.detail =
      R"({"v":1,"reason":"rotation","superseded_by":"","keep_tracked":false,"keep_ckpt_ids":[],"existed":true})";
  append_raw(prune);
  ASSERT_TRUE(fs::exists(p("epoch_1.pth")));
  reopen();
  EXPECT_FALSE(fs::exists(p("epoch_1.pth")));
  EXPECT_THAT(findings(), ::testing::Contains(
                              std::make_pair(std::string("prune_completed"), p("epoch_1.pth"))));
}

// An unlink that fails: a repair cut short after deciding, before its files are gone (what a kill
// at that moment leaves).
struct FailingUnlink : FileSystem {
  int unlink(const char*) override {
    errno = EIO;
    return -1;
  }
};

TEST_F(RecoveryTest, RepairCutShortBeforeItsFilesAreRemovedIsRedoneAtTheNextOpen) {
  train(2);
  Event prune;
  prune.kind = EventKind::kPruned;
  prune.path = p("epoch_1.pth");
  prune.detail =
      R"({"v":1,"reason":"rotation","superseded_by":"","keep_tracked":false,"keep_ckpt_ids":[],"existed":true})";
  append_raw(prune);
  FailingUnlink failing;
  {
    CheckpointHook hook(
        HookConfig::from_json(nlohmann::json::parse(R"({"interval": 1, "save_best": "acc"})")), {},
        &failing);
    Runner1 r(work_);
    EXPECT_ANY_THROW({
      hook.resume(r);
      hook.before_train(r);
    });
  }
  ASSERT_TRUE(fs::exists(p("epoch_1.pth")));
  reopen();
  EXPECT_FALSE(fs::exists(p("epoch_1.pth")));
  EXPECT_THAT(findings(), ::testing::Contains(
                              std::make_pair(std::string("prune_completed"), p("epoch_1.pth"))));
  EXPECT_THAT(findings(), ::testing::Not(::testing::Contains(
                              std::make_pair(std::string("unknown_file"), p("epoch_1.pth")))));
}

TEST_F(RecoveryTest, LostNewestCheckpointIsRecordedAndResumeFallsBack) {
  train(3);
  fs::remove(p("epoch_3.pth"));
  Runner1 r(work_);
  auto loaded = reopen(R"({"interval": 1, "save_best": "acc"})", &r);
  EXPECT_EQ(loaded, p("epoch_2.pth"));
  EXPECT_EQ(r.epoch(), 2);
  EXPECT_THAT(findings(),
              ::testing::Contains(std::make_pair(std::string("lost"), p("epoch_3.pth"))));
}

TEST_F(RecoveryTest, TruncatedCheckpointIsCorruptAndFlippedByteFailsVerification) {
  train(3);
  fs::resize_file(p("epoch_3.pth"), 100);
  {
    std::fstream f(p("epoch_2.pth"), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(300);
    f.put('\x5a');
  }
  auto loaded = reopen();
  EXPECT_EQ(loaded, p("epoch_1.pth"));  // 3 is truncated, 2's SHA-256 does not match
  auto f = findings();
  EXPECT_THAT(f, ::testing::Contains(std::make_pair(std::string("corrupt"), p("epoch_3.pth"))));
  EXPECT_THAT(f, ::testing::Contains(std::make_pair(std::string("corrupt"), p("epoch_2.pth"))));
}

TEST_F(RecoveryTest, StrictPolicyRefusesToStartAndWritesNothing) {
  train(2);
  fs::remove(p("epoch_2.pth"));
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  int64_t before = Ledger::open(ledger_path(), ro)->last_seq();
  try {
    reopen(R"({"interval": 1, "save_best": "acc", "recovery": "strict"})");
    FAIL() << "strict recovery started despite a lost checkpoint";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorruption);
    EXPECT_THAT(e.what(), HasSubstr(p("epoch_2.pth")));
    EXPECT_THAT(e.what(), HasSubstr("recovery=strict"));
  }
  EXPECT_EQ(Ledger::open(ledger_path(), ro)->last_seq(), before);
}

TEST_F(RecoveryTest, UnknownFileIsLeftAloneAndReportedOnce) {
  train(1);
  std::ofstream(p("someone_elses.pth")) << "x";
  reopen();
  reopen();
  EXPECT_TRUE(fs::exists(p("someone_elses.pth")));
  int reported = 0;
  for (const auto& [what, path] : findings()) reported += what == "unknown_file";
  EXPECT_EQ(reported, 1);
}

TEST_F(RecoveryTest, StaleLastCheckpointIsRewrittenFromTheLedger) {
  train(2);
  std::ofstream(p("last_checkpoint"), std::ios::trunc) << p("epoch_1.pth");
  reopen();
  std::ifstream in(p("last_checkpoint"));
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, p("epoch_2.pth"));
}

// MMEngine reads last_checkpoint with .strip(): whitespace around the name an editor (or a script)
// left is the same name, not a file this ledger never committed.
TEST_F(RecoveryTest, LastCheckpointWithATrailingNewlineIsTheSameName) {
  train(2);
  for (const std::string& spelled : {p("epoch_2.pth") + "\n", "  " + p("epoch_2.pth") + " \r\n"}) {
    std::ofstream(p("last_checkpoint"), std::ios::trunc) << spelled;
    Runner1 r(work_);
    EXPECT_EQ(reopen(R"({"interval": 1, "save_best": "acc"})", &r), p("epoch_2.pth")) << spelled;
    for (const auto& [what, path] : findings()) EXPECT_NE(what, "stale_last_checkpoint") << spelled;
    EXPECT_EQ(slurp(p("last_checkpoint")), spelled);  // nothing to rewrite
  }
  // A stale name followed by a newline is still stale, and rewritten.
  std::ofstream(p("last_checkpoint"), std::ios::trunc) << p("epoch_1.pth") << "\n";
  reopen();
  EXPECT_EQ(slurp(p("last_checkpoint")), p("epoch_2.pth"));
}

// A re-save (the regular checkpoint saved again under its name after a best) killed after its
// temp file was recorded as prepared: `replacement` is another run's bytes of the same step (a
// valid checkpoint, other bytes). With `renamed`, the kill hit after the rename (the file holds
// the new bytes), else before it (the temp file holds them).
class ReSaveKilledTest : public RecoveryTest {
 protected:
  void kill_a_re_save(bool renamed) {
    train(2);
    const std::string mine = work_;
    work_ = (dir_ / "other").string();
    // The same step, other bytes: this run's hub also records keep_ckpt_ids.
    train(2, R"({"interval": 1, "save_best": "acc", "max_keep_ckpts": 5})");
    replacement_ = p("epoch_2.pth");
    work_ = mine;
    uint64_t size = 0;
    const std::string digest = Sha256::file_hex(replacement_, &size);
    old_digest_ = Sha256::file_hex(p("epoch_2.pth"));
    ASSERT_NE(digest, old_digest_);
    Event e;
    e.kind = EventKind::kSaveBegun;
    e.path = p("epoch_2.pth");
    e.step = 2;
    e.epoch = 2;
    e.iter = 4;
    e.detail =
        R"({"v":1,"role":"regular","key":"","keep_tracked":false,"keep_ckpt_ids":[],"error":"","stall_us":0})";
    append_raw(e);
    e.kind = EventKind::kSavePrepared;
    e.bytes = static_cast<int64_t>(size);
    e.digest = digest;
    PreparedPayload pp;
    pp.commit = e.detail;
    e.detail = to_detail(pp);
    append_raw(e);
    new_digest_ = digest;
    fs::copy_file(replacement_, renamed ? p("epoch_2.pth") : p(".epoch_2.pth.ckptledger-tmp"),
                  fs::copy_options::overwrite_existing);
  }
  std::string committed_digest_of(const std::string& path) {
    LedgerOptions ro;
    ro.mode = OpenMode::kReadOnly;
    auto l = Ledger::open(ledger_path(), ro);
    std::string digest;
    l->for_each([&](const Event& e) {
      if (e.kind == EventKind::kSaveCommitted && e.path == path) digest = e.digest;
      return true;
    });
    return digest;
  }
  std::string replacement_, old_digest_, new_digest_;
};

TEST_F(ReSaveKilledTest, AfterItsRenameTheSaveIsRolledForwardNeverCorrupt) {
  kill_a_re_save(/*renamed=*/true);
  Runner1 r(work_);
  EXPECT_EQ(reopen(R"({"interval": 1, "save_best": "acc"})", &r), p("epoch_2.pth"));
  EXPECT_EQ(r.epoch(), 2);  // not the older epoch_1.pth
  auto f = findings();
  EXPECT_THAT(f, ::testing::Contains(std::make_pair(std::string("rolled_forward"),
                                                    p("epoch_2.pth"))));
  for (const auto& [what, path] : f) EXPECT_NE(what, "corrupt") << path;
  EXPECT_EQ(committed_digest_of(p("epoch_2.pth")), new_digest_);
  EXPECT_EQ(Sha256::file_hex(p("epoch_2.pth")), new_digest_);
}

// A save whose bytes were renamed into place and whose commit then failed (a full disk, a failed
// directory fsync): its save_failed does not discard the prepared record; the next start rolls it
// forward from the file as after a crash.
TEST_F(ReSaveKilledTest, AFailureAfterTheRenameIsRolledForwardAtTheNextStart) {
  kill_a_re_save(/*renamed=*/true);
  Event failed;
  failed.kind = EventKind::kSaveFailed;
  failed.path = p("epoch_2.pth");
  SavePayload fp;
  fp.error = "cannot append: disk full";
  failed.detail = to_detail(fp);
  append_raw(failed);
  Runner1 r(work_);
  EXPECT_EQ(reopen(R"({"interval": 1, "save_best": "acc"})", &r), p("epoch_2.pth"));
  EXPECT_THAT(findings(), ::testing::Contains(std::make_pair(std::string("rolled_forward"),
                                                             p("epoch_2.pth"))));
  for (const auto& [what, path] : findings()) EXPECT_NE(what, "corrupt") << path;
  EXPECT_EQ(committed_digest_of(p("epoch_2.pth")), new_digest_);
}

// A save over an existing file whose commit also prunes (rotation): rolled forward, the whole
// commit is appended and the pruned file removed, as the save would have done.
TEST_F(ReSaveKilledTest, ARolledForwardSaveAppendsItsWholeCommitAndRemovesWhatItPrunes) {
  const char* config = R"({"interval": 1, "save_best": "acc", "max_keep_ckpts": 2})";
  train(2, config);
  const std::string mine = work_;
  work_ = (dir_ / "other").string();
  train(3, config);
  const std::string replacement = p("epoch_3.pth");
  work_ = mine;
  // A torn earlier save left epoch_3.pth uncommitted; the retry replaces it.
  std::ofstream(p("epoch_3.pth")) << "the torn save's bytes";
  uint64_t size = 0;
  const std::string digest = Sha256::file_hex(replacement, &size);
  Event e;
  e.kind = EventKind::kSaveBegun;
  e.path = p("epoch_3.pth");
  e.step = 3;
  e.epoch = 3;
  e.iter = 6;
  SavePayload sp;
  sp.role = "regular";
  sp.keep_tracked = true;
  sp.keep_ckpt_ids = {2, 3};
  e.detail = to_detail(sp);
  append_raw(e);
  PreparedPayload pp;
  pp.commit = e.detail;
  PreparedEvent prune;
  prune.kind = "pruned";
  prune.path = p("epoch_1.pth");
  prune.step = 1;
  prune.epoch = 3;
  prune.iter = 6;
  PrunePayload pr;
  pr.reason = "rotation";
  pr.superseded_by = p("epoch_3.pth");
  prune.detail = to_detail(pr);
  pp.then.push_back(to_detail(prune));
  e.kind = EventKind::kSavePrepared;
  e.bytes = static_cast<int64_t>(size);
  e.digest = digest;
  e.detail = to_detail(pp);
  append_raw(e);
  fs::copy_file(replacement, p("epoch_3.pth"), fs::copy_options::overwrite_existing);
  ASSERT_TRUE(fs::exists(p("epoch_1.pth")));
  Runner1 r(work_);
  EXPECT_EQ(reopen(config, &r), p("epoch_3.pth"));
  EXPECT_EQ(r.epoch(), 3);
  EXPECT_FALSE(fs::exists(p("epoch_1.pth")));
  auto f = findings();
  EXPECT_THAT(f, ::testing::Contains(std::make_pair(std::string("rolled_forward"),
                                                    p("epoch_3.pth"))));
  EXPECT_THAT(f, ::testing::Contains(std::make_pair(std::string("prune_completed"),
                                                    p("epoch_1.pth"))));
  EXPECT_EQ(slurp(p("last_checkpoint")), p("epoch_3.pth"));
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  HookState state;
  HookStateFold fold(state);
  Ledger::open(ledger_path(), ro)->replay(fold);
  EXPECT_EQ(state.keep_ckpt_ids, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(state.live.count(p("epoch_1.pth")), 0u);
  EXPECT_EQ(state.live.at(p("epoch_3.pth")).digest, digest);
}

TEST_F(ReSaveKilledTest, BeforeItsRenameTheSaveIsRolledBackAndTheCommittedFileKept) {
  kill_a_re_save(/*renamed=*/false);
  Runner1 r(work_);
  EXPECT_EQ(reopen(R"({"interval": 1, "save_best": "acc"})", &r), p("epoch_2.pth"));
  EXPECT_FALSE(fs::exists(p(".epoch_2.pth.ckptledger-tmp")));
  auto f = findings();
  EXPECT_THAT(f, ::testing::Contains(std::make_pair(std::string("torn_save"), p("epoch_2.pth"))));
  for (const auto& [what, path] : f) EXPECT_NE(what, "corrupt") << path;
  EXPECT_EQ(committed_digest_of(p("epoch_2.pth")), old_digest_);
  EXPECT_EQ(Sha256::file_hex(p("epoch_2.pth")), old_digest_);
}

// A finished run started again with the same length ends exactly as it was: nothing is trained
// or saved again, and publishing the same content again writes no second file (published names
// come from the published bytes, not the wall clock).
TEST_F(RecoveryTest, AFinishedRunStartedAgainEndsExactlyAsItWas) {
  const char* config = R"({"interval": 1, "save_best": "acc", "published_keys": ["meta", "state_dict"]})";
  auto files = [&] {
    std::map<std::string, std::string> out;
    for (const auto& f : fs::directory_iterator(work_)) {
      const std::string name = f.path().filename().string();
      if (name.rfind("ckptledger.sqlite", 0) == 0 || name == ".ckptledger.lock") continue;
      out[name] = Sha256::file_hex(f.path().string());
    }
    return out;
  };
  train(3, config);
  const auto before = files();
  int published = 0;
  for (const auto& [name, digest] : before) published += name.find('-') != std::string::npos;
  ASSERT_EQ(published, 2) << "the last and the best checkpoint are published";
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // another meta.time second
  {
    CheckpointHook hook(HookConfig::from_json(nlohmann::json::parse(config)));
    Runner1 r(work_);
    LoopOptions o;
    o.resume = true;
    o.validate = [](int64_t step) { return Metrics{{"acc", 0.1 * static_cast<double>(step)}}; };
    EpochLoop loop(
        r, hook, 3, 2, [&](int64_t) { r.w_ += 1; }, o);
    loop.run();
  }
  EXPECT_EQ(files(), before);
}

// A Runner whose load_checkpoint forgets the counters.
class ForgetfulRunner : public Runner1 {
 public:
  using Runner1::Runner1;
  void load_checkpoint(const c10::impl::GenericDict& ckpt, bool) override {
    w_ = ckpt.at("state_dict").toGenericDict().at("w").toTensor().clone();
  }
};

TEST_F(RecoveryTest, ResumeRefusesARunnerThatDidNotRestoreItsCountersAndNamesWhatItResumed) {
  train(2);
  {
    CheckpointHook hook(HookConfig::from_json(nlohmann::json::parse(R"({"interval": 1})")));
    ForgetfulRunner r(work_);
    try {
      hook.resume(r);
      FAIL() << "resumed with the runner at epoch 0";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_THAT(e.what(), HasSubstr("epoch 0, iter 0"));
      EXPECT_THAT(e.what(), HasSubstr("meta says epoch 2, iter 4"));
      EXPECT_THAT(e.what(), HasSubstr(p("epoch_2.pth")));
    }
  }
  std::vector<std::string> info;
  CheckpointHook hook(HookConfig::from_json(nlohmann::json::parse(R"({"interval": 1})")),
                      [&](LogLevel level, const std::string& msg) {
                        if (level == LogLevel::kInfo) info.push_back(msg);
                      });
  Runner1 r(work_);
  ASSERT_EQ(hook.resume(r), p("epoch_2.pth"));
  EXPECT_THAT(info, ::testing::Contains(
                        HasSubstr("Resumed from " + p("epoch_2.pth") +
                                  ": epoch 2, iter 4; best acc 0.2 (best_acc_epoch_2.pth)")));
}

// History edited by hand (the append-only triggers dropped, an event changed): a resume verifies
// the events it folds — every event after the newest trusted snapshot, or all of them without one —
// refuses a broken chain in both recovery modes, names the first bad seq, points to `verify` and
// appends nothing.
class EditedHistoryTest : public RecoveryTest {
 protected:
  void sql(const std::string& statements) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(ledger_path().c_str(), &db), SQLITE_OK);
    std::string all =
        "DROP TRIGGER IF EXISTS events_append_only_update;"
        "DROP TRIGGER IF EXISTS events_append_only_delete;" +
        statements;
    char* err = nullptr;
    const int rc = sqlite3_exec(db, all.c_str(), nullptr, nullptr, &err);
    std::string message = err ? err : "";
    sqlite3_free(err);
    sqlite3_close(db);
    ASSERT_EQ(rc, SQLITE_OK) << message;
  }
  int64_t first_of(EventKind kind, int64_t after = 0) {
    LedgerOptions ro;
    ro.mode = OpenMode::kReadOnly;
    int64_t seq = 0;
    Ledger::open(ledger_path(), ro)->for_each([&](const Event& e) {
      if (e.kind == kind && seq == 0 && e.seq > after) seq = e.seq;
      return true;
    });
    return seq;
  }
  int64_t last_seq() {
    LedgerOptions ro;
    ro.mode = OpenMode::kReadOnly;
    return Ledger::open(ledger_path(), ro)->last_seq();
  }
  void expect_refused(int64_t bad_seq) {
    const int64_t last = last_seq();
    for (const char* config : {R"({"interval": 1, "save_best": "acc"})",
                               R"({"interval": 1, "save_best": "acc", "recovery": "strict"})"}) {
      try {
        reopen(config);
        ADD_FAILURE() << config << ": resumed from an edited history";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::kCorruption) << config;
        EXPECT_THAT(e.what(), HasSubstr("hash chain is broken at seq " + std::to_string(bad_seq)));
        EXPECT_THAT(e.what(), HasSubstr("ckptledger verify"));
      }
    }
    EXPECT_EQ(last_seq(), last);  // nothing appended
  }
};

TEST_F(EditedHistoryTest, AForgedBestScoreIsRefusedWhenNoSnapshotCoversIt) {
  train(3);  // a finished run ends with a snapshot of its last event
  sql("DELETE FROM snapshots;");
  const int64_t forged = first_of(EventKind::kBestUpdated);
  ASSERT_GT(forged, 0);
  sql("UPDATE events SET score = 99 WHERE seq = " + std::to_string(forged) + ";");
  expect_refused(forged);
}

TEST_F(EditedHistoryTest, AnEditedEventAfterTheSnapshotIsRefused) {
  train(3);
  const int64_t snapshot_end = last_seq();
  reopen();  // run_started + resumed after the run's final snapshot
  const int64_t edited = first_of(EventKind::kRunStarted, snapshot_end);
  ASSERT_GT(edited, snapshot_end);
  ASSERT_LT(edited, last_seq());  // not the last event (Ledger::open checks that one itself)
  sql("UPDATE events SET detail = json_set(detail, '$.host', 'elsewhere') WHERE seq = " +
      std::to_string(edited) + ";");
  expect_refused(edited);
}

// Another ledger_path does not make a second writer of the same work_dir (or out_dir) welcome: it
// would overwrite the first one's committed checkpoints. The lock is in the directory itself.
TEST_F(RecoveryTest, SecondWriterOfAWorkDirOrOutDirIsRefusedWhateverItsLedgerPath) {
  fs::create_directories(work_);
  const std::string other_ledger = (dir_ / "elsewhere.sqlite").string();
  CheckpointHook first(HookConfig::from_json(nlohmann::json::parse(R"({"interval": 1})")));
  Runner1 r1(work_);
  first.before_train(r1);
  for (const std::string& config :
       {R"({"interval": 1, "ledger_path": ")" + other_ledger + R"("})",
        R"({"interval": 1, "ledger_path": ")" + other_ledger + R"(2"})"}) {
    try {
      CheckpointHook second(HookConfig::from_json(nlohmann::json::parse(config)));
      Runner1 r2(work_);
      second.before_train(r2);
      ADD_FAILURE() << "a second writer of " << work_ << " started: " << config;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kBusy);
      EXPECT_THAT(e.what(), HasSubstr(work_));
      EXPECT_THAT(e.what(), HasSubstr("pid " + std::to_string(::getpid())));
      EXPECT_THAT(e.what(), HasSubstr(ledger_path()));  // names the holder's ledger
    }
  }
  EXPECT_FALSE(fs::exists(other_ledger));  // refused before its ledger was created
  // Two work_dirs with one out_dir: `out/exp` is shared, the second is refused.
  const std::string out = (dir_ / "out").string();
  const std::string a = (dir_ / "a" / "exp").string(), b = (dir_ / "b" / "exp").string();
  const std::string with_out = R"({"interval": 1, "out_dir": ")" + out + R"("})";
  CheckpointHook ha(HookConfig::from_json(nlohmann::json::parse(with_out)));
  Runner1 ra(a);
  ha.before_train(ra);
  try {
    CheckpointHook hb(HookConfig::from_json(nlohmann::json::parse(with_out)));
    Runner1 rb(b);
    hb.before_train(rb);
    ADD_FAILURE() << "two writers of " << out << "/exp";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kBusy);
    EXPECT_THAT(e.what(), HasSubstr(out + "/exp"));
  }
}

TEST_F(RecoveryTest, SecondTrainingProcessOnTheSameWorkDirRefusesToStart) {
  train(1);
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    CheckpointHook hook(HookConfig::from_json(nlohmann::json::parse(R"({"interval": 1})")));
    Runner1 r(work_);
    hook.resume(r);
    char c = 'x';
    (void)!::write(ready[1], &c, 1);
    ::pause();
    ::_exit(0);
  }
  char c;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  try {
    CheckpointHook hook(HookConfig::from_json(nlohmann::json::parse(R"({"interval": 1})")));
    Runner1 r(work_);
    hook.before_train(r);
    ADD_FAILURE() << "a second writer started";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kBusy);
    EXPECT_THAT(e.what(), HasSubstr("pid " + std::to_string(child)));
  }
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ::close(ready[0]);
  ::close(ready[1]);
}

TEST_F(RecoveryTest, ValidationDueAtTheResumePointRunsAgain) {
  // A run that saved epoch 2 and died before validating it.
  {
    CheckpointHook hook(
        HookConfig::from_json(nlohmann::json::parse(R"({"interval": 1, "save_best": "acc"})")));
    Runner1 r(work_);
    hook.before_train(r);
    for (int e = 0; e < 2; ++e) {
      r.set_counters(e, 2 * (e + 1));
      hook.after_train_epoch(r);
      if (e == 0) {
        r.set_counters(1, 2);
        hook.after_val_epoch(r, {{"acc", 0.1}});
      }
    }
  }
  CheckpointHook hook(
      HookConfig::from_json(nlohmann::json::parse(R"({"interval": 1, "save_best": "acc"})")));
  Runner1 r(work_);
  std::vector<int64_t> validated;
  LoopOptions o;
  o.resume = true;
  o.validate = [&](int64_t step) {
    validated.push_back(step);
    return Metrics{{"acc", 0.1 * static_cast<double>(step)}};
  };
  EpochLoop loop(
      r, hook, 3, 2, [](int64_t) {}, o);
  loop.run();
  EXPECT_THAT(validated, ::testing::ElementsAre(2, 3));  // 2 again first: it never ran
  EXPECT_NEAR(hook.hub_info()["best_score"].get<double>(), 0.3, 1e-12);
  EXPECT_FALSE(fs::exists(p("best_acc_epoch_1.pth")));
  EXPECT_TRUE(fs::exists(p("best_acc_epoch_3.pth")));
}

// A validation is complete only once what it triggered is committed: its `validated` event comes
// after the best save and the re-save, so a crash in between makes it due again.
TEST_F(RecoveryTest, ValidatedIsRecordedAfterTheSavesItTriggered) {
  train(2);
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  auto l = Ledger::open(ledger_path(), ro);
  int64_t last_commit_seq = 0;
  std::vector<std::pair<int64_t, int64_t>> order;  // (validated seq, last commit before it)
  l->for_each([&](const Event& e) {
    if (e.kind == EventKind::kSaveCommitted) last_commit_seq = e.seq;
    if (e.kind == EventKind::kValidated) order.push_back({e.seq, last_commit_seq});
    return true;
  });
  ASSERT_EQ(order.size(), 2u);
  for (const auto& [validated_seq, commit_seq] : order) {
    EXPECT_EQ(commit_seq, validated_seq - 1)
        << "validated at seq " << validated_seq << " does not follow its re-save's commit";
  }
}

TEST_F(RecoveryTest, CompletedValidationIsNotRunAgain) {
  train(2);
  CheckpointHook hook(
      HookConfig::from_json(nlohmann::json::parse(R"({"interval": 1, "save_best": "acc"})")));
  Runner1 r(work_);
  std::vector<int64_t> validated;
  LoopOptions o;
  o.resume = true;
  o.validate = [&](int64_t step) {
    validated.push_back(step);
    return Metrics{{"acc", 0.1 * static_cast<double>(step)}};
  };
  EpochLoop loop(
      r, hook, 3, 2, [](int64_t) {}, o);
  loop.run();
  EXPECT_THAT(validated, ::testing::ElementsAre(3));
}

// The resume loads and hashes a candidate in one read: a file that loads but whose bytes are not
// the committed ones (here a record the reader skips) is discarded, and the previous one loaded.
TEST_F(RecoveryTest, CheckpointThatLoadsButDoesNotVerifyIsNotResumedFrom) {
  train(2);
  std::string bytes = slurp(p("epoch_2.pth"));
  const size_t name = bytes.find("archive/version");
  ASSERT_NE(name, std::string::npos);
  const size_t extra = static_cast<uint8_t>(bytes[name - 2]) |
                       (static_cast<size_t>(static_cast<uint8_t>(bytes[name - 1])) << 8);
  char& version = bytes[name + std::string("archive/version").size() + extra];
  ASSERT_EQ(version, '3');
  version = '4';
  std::ofstream(p("epoch_2.pth"), std::ios::binary | std::ios::trunc) << bytes;
  ASSERT_NO_THROW(read_checkpoint(p("epoch_2.pth")));
  Runner1 r(work_);
  EXPECT_EQ(reopen(R"({"interval": 1, "save_best": "acc"})", &r), p("epoch_1.pth"));
  EXPECT_EQ(r.epoch(), 1);
  EXPECT_THAT(findings(),
              ::testing::Contains(std::make_pair(std::string("corrupt"), p("epoch_2.pth"))));
}

// A committed file whose bytes are exactly the committed ones but that the reader refuses is not
// a corruption to skip silently: the error is raised.
TEST_F(RecoveryTest, CommittedCheckpointThatDoesNotLoadIsRaisedNotSkipped) {
  train(1);
  const std::string bad = p("epoch_2.pth");
  std::ofstream(bad) << "these bytes were committed, but they are not a checkpoint";
  Event committed;
  committed.kind = EventKind::kSaveCommitted;
  committed.path = bad;
  committed.step = 2;
  committed.epoch = 2;
  committed.iter = 4;
  uint64_t size = 0;
  committed.digest = Sha256::file_hex(bad, &size);
  committed.bytes = static_cast<int64_t>(size);
  SavePayload sp;
  sp.role = "regular";
  committed.detail = to_detail(sp);
  append_raw(committed);
  std::ofstream(p("last_checkpoint"), std::ios::trunc) << bad;
  try {
    reopen();
    ADD_FAILURE() << "resumed although the newest committed checkpoint does not load";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorruption) << e.what();
    EXPECT_THAT(e.what(), HasSubstr(bad));
  }
}

// --- A ledger behind its work_dir (docs/crash-safety.md) ----------------------------------------
// A ledger restored from an older copy, or whose -wal was deleted after its writer died, opens as
// an older, consistent prefix while the work_dir holds what the lost events wrote. Reconciling it
// would resume from an older checkpoint and let the next saves overwrite files the ledger does
// not know: the hook refuses to start, in both policies, naming the evidence.

// Opens a hook with auto-resume on `work`, expecting the refusal; checks that nothing changed.
void expect_refused_as_behind(const std::string& work, const std::string& config,
                              const std::vector<std::string>& named) {
  const std::string ledger = work + "/ckptledger.sqlite";
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  auto last_seq = [&]() -> int64_t {
    try {
      return Ledger::open(ledger, ro)->last_seq();
    } catch (const Error& e) {
      if (e.code() != ErrorCode::kNotFound) throw;
      return 0;  // a file without a schema: no events
    }
  };
  const int64_t seq_before = last_seq();
  const std::string last_before = slurp(work + "/last_checkpoint");
  std::vector<std::string> files_before;
  for (const auto& e : fs::directory_iterator(work)) files_before.push_back(e.path().string());
  std::sort(files_before.begin(), files_before.end());

  CheckpointHook hook(HookConfig::from_json(nlohmann::json::parse(config)));
  Runner1 r(work);
  for (int attempt = 0; attempt < 2; ++attempt) {  // a refused ledger stays refused
    try {
      hook.resume(r);
      ADD_FAILURE() << "a ledger behind its work_dir was resumed (" << config << ")";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorruption) << e.what();
      EXPECT_THAT(e.what(), HasSubstr("is behind the work_dir"));
      EXPECT_THAT(e.what(), HasSubstr("-wal"));
      for (const std::string& n : named) EXPECT_THAT(e.what(), HasSubstr(n));
    }
  }
  EXPECT_THROW(hook.before_train(r), Error);
  EXPECT_EQ(last_seq(), seq_before) << "the refusal appended events";
  EXPECT_EQ(slurp(work + "/last_checkpoint"), last_before);
  std::vector<std::string> files_after;
  for (const auto& e : fs::directory_iterator(work)) {
    if (e.path().filename().string().rfind("ckptledger.sqlite", 0) != 0) {
      files_after.push_back(e.path().string());
    }
  }
  std::sort(files_after.begin(), files_after.end());
  files_before.erase(std::remove_if(files_before.begin(), files_before.end(),
                                    [](const std::string& f) {
                                      return fs::path(f).filename().string().rfind(
                                                 "ckptledger.sqlite", 0) == 0;
                                    }),
                     files_before.end());
  EXPECT_EQ(files_after, files_before) << "the refusal touched the work_dir";
}

// A training process (save_best acc, every epoch) killed after epoch 4; with `checkpoint_after`
// > 0 its WAL was checkpointed into the main file after that epoch, so that only the events of
// the later epochs lived in the -wal alone. Then the -wal is deleted.
void kill_training_and_delete_wal(RecoveryTest* t, const std::string& work, int checkpoint_after) {
  const std::string ledger = work + "/ckptledger.sqlite";
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    CheckpointHook hook(
        HookConfig::from_json(nlohmann::json::parse(R"({"interval": 1, "save_best": "acc"})")));
    Runner1 r(work);
    hook.before_train(r);
    for (int e = 0; e < 4; ++e) {
      r.set_counters(e, 2 * (e + 1));
      hook.after_train_epoch(r);
      r.set_counters(e + 1, 2 * (e + 1));
      hook.after_val_epoch(r, {{"acc", 0.1 * (e + 1)}});
      hook.wait_idle();
      if (e + 1 == checkpoint_after) {
        sqlite3* db = nullptr;
        sqlite3_open(ledger.c_str(), &db);
        // A read first: the connection learns that the database is in WAL mode.
        sqlite3_exec(db, "SELECT count(*) FROM events", nullptr, nullptr, nullptr);
        int log = -1, done = -2;
        const int rc =
            sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
        sqlite3_close(db);
        if (rc != SQLITE_OK || log <= 0 || log != done) ::_exit(3);
      }
    }
    ::raise(SIGKILL);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child status " << status;
  ASSERT_TRUE(fs::exists(ledger + "-wal"));
  ASSERT_TRUE(fs::exists(work + "/epoch_4.pth"));
  fs::remove(ledger + "-wal");
  (void)t;
}

TEST_F(RecoveryTest, LedgerWhoseWalWasDeletedAfterAKillIsRefusedInBothPolicies) {
  kill_training_and_delete_wal(this, work_, /*checkpoint_after=*/2);
  // What is left opens: a consistent prefix that knows epochs 1 and 2 only.
  {
    LedgerOptions ro;
    ro.mode = OpenMode::kReadOnly;
    auto l = Ledger::open(ledger_path(), ro);
    ASSERT_TRUE(l->verify().ok());
    EXPECT_TRUE(l->names(p("epoch_2.pth"), {EventKind::kSaveCommitted}));
    EXPECT_FALSE(l->names(p("epoch_3.pth"), {EventKind::kSaveBegun}));
  }
  const std::vector<std::string> named = {p("last_checkpoint") + " names " + p("epoch_4.pth"),
                                          p("epoch_3.pth"), p("best_acc_epoch_4.pth")};
  expect_refused_as_behind(work_, R"({"interval": 1, "save_best": "acc"})", named);
  expect_refused_as_behind(work_, R"({"interval": 1, "save_best": "acc", "recovery": "strict"})",
                           named);
}

// Killed before SQLite ever checkpointed the WAL (a short run): without its -wal, the ledger file
// holds no schema at all. It is a ledger that existed, so the same evidence counts.
TEST_F(RecoveryTest, LedgerThatLostItsWholeWalIsRefused) {
  kill_training_and_delete_wal(this, work_, /*checkpoint_after=*/0);
  expect_refused_as_behind(work_, R"({"interval": 1, "save_best": "acc"})",
                           {p("last_checkpoint") + " names " + p("epoch_4.pth"), p("epoch_1.pth")});
}

TEST_F(RecoveryTest, LedgerRestoredFromAnOlderCopyIsRefused) {
  train(2);
  const std::string backup = (dir_ / "ledger-after-epoch-2").string();
  fs::copy_file(ledger_path(), backup);
  {  // two more epochs, resumed
    CheckpointHook hook(
        HookConfig::from_json(nlohmann::json::parse(R"({"interval": 1, "save_best": "acc"})")));
    Runner1 r(work_);
    LoopOptions o;
    o.resume = true;
    o.validate = [](int64_t step) { return Metrics{{"acc", 0.1 * static_cast<double>(step)}}; };
    EpochLoop(
        r, hook, 4, 2, [&](int64_t) { r.w_ += 1; }, o)
        .run();
  }
  fs::copy_file(backup, ledger_path(), fs::copy_options::overwrite_existing);
  expect_refused_as_behind(work_, R"({"interval": 1, "save_best": "acc"})",
                           {p("epoch_4.pth"), "never committed"});
}

TEST_F(RecoveryTest, CheckpointOrTempFileTheLedgerNeverBeganIsRefused) {
  train(2);
  std::ofstream(p("best_acc_epoch_7.pth")) << "a best save the ledger lost";
  expect_refused_as_behind(work_, R"({"interval": 1, "save_best": "acc"})",
                           {p("best_acc_epoch_7.pth"), "never began"});
  fs::remove(p("best_acc_epoch_7.pth"));
  std::ofstream(p(".epoch_9.pth.ckptledger-tmp")) << "half of a save the ledger lost";
  expect_refused_as_behind(work_, R"({"interval": 1, "save_best": "acc"})",
                           {p(".epoch_9.pth.ckptledger-tmp"), "never began"});
  fs::remove(p(".epoch_9.pth.ckptledger-tmp"));
  EXPECT_EQ(reopen(), p("epoch_2.pth"));  // with the evidence gone, it resumes
}

// What a crash can leave without any save_begun (publishing, rewriting last_checkpoint) and files
// of other tools are not evidence.
TEST_F(RecoveryTest, PublishedCopiesAndForeignFilesAreNotTakenForLostEvents) {
  train(2);
  std::ofstream(p("epoch_2-1a2b3c4d.pth")) << "published, killed before it was recorded";
  std::ofstream(p(".epoch_2-1a2b3c4d.pth.ckptledger-tmp")) << "half published";
  std::ofstream(p(".last_checkpoint.ckptledger-tmp")) << p("epoch_2.pth");
  std::ofstream(p("model_final.pth")) << "someone else's";
  EXPECT_EQ(reopen(), p("epoch_2.pth"));
  EXPECT_FALSE(fs::exists(p(".epoch_2-1a2b3c4d.pth.ckptledger-tmp")));
  EXPECT_FALSE(fs::exists(p(".last_checkpoint.ckptledger-tmp")));
  auto f = findings();
  EXPECT_THAT(f, ::testing::Contains(
                     std::make_pair(std::string("unknown_file"), p("epoch_2-1a2b3c4d.pth"))));
  EXPECT_THAT(
      f, ::testing::Contains(std::make_pair(std::string("unknown_file"), p("model_final.pth"))));
}

// A new ledger (no file before) in a work_dir that another tool wrote knows nothing, rightly.
TEST_F(RecoveryTest, NewLedgerInAWorkDirOfAnotherToolStartsAndReportsItsFiles) {
  fs::create_directories(work_);
  std::ofstream(p("epoch_3.pth")) << "written by MMEngine";
  std::ofstream(p("last_checkpoint")) << p("epoch_3.pth");
  EXPECT_EQ(reopen(), std::nullopt);
  EXPECT_THAT(findings(),
              ::testing::Contains(std::make_pair(std::string("unknown_file"), p("epoch_3.pth"))));
}

TEST(CheckpointNameMatcher, RecognisesRegularAndBestNamesOfTheTemplateOnly) {
  auto epoch = checkpoint_name_matcher("epoch_{}.pth");
  EXPECT_TRUE(epoch("epoch_12.pth"));
  EXPECT_TRUE(epoch("best_acc_epoch_12.pth"));
  EXPECT_TRUE(epoch("best_top1_acc_epoch_3.pth"));
  EXPECT_FALSE(epoch("epoch_12-1a2b3c4d.pth"));  // published
  EXPECT_FALSE(epoch("best_acc_epoch_12-1a2b3c4d.pth"));
  EXPECT_FALSE(epoch("epoch_.pth"));
  EXPECT_FALSE(epoch("iter_12.pth"));
  EXPECT_FALSE(epoch("best__epoch_1.pth"));  // no key
  EXPECT_FALSE(epoch("last_checkpoint"));
  auto padded = checkpoint_name_matcher("iter_{:06d}.ckpt");
  EXPECT_TRUE(padded("iter_000120.ckpt"));
  EXPECT_TRUE(padded("best_loss_iter_000120.ckpt"));
  EXPECT_FALSE(padded("iter_000120.pth"));
  auto nested = checkpoint_name_matcher("ckpt/{}.pth");
  EXPECT_TRUE(nested("7.pth"));
  EXPECT_TRUE(nested("best_acc_ckpt_7.pth"));
}

// --- A ledger copied while it is written (docs/crash-safety.md) ---------------------------------
// A copy of ckptledger.sqlite taken while a writer appends (the main file alone, or with a -wal
// copied at another moment) mixes pages of different moments. Opening it must give a consistent
// prefix of the real history (the chain verifies and the fold equals the fold of that prefix) or
// a ckptledger::Error, never a state the writer never had.

// Appends the events of training step `step` the way the hook does: save_begun, then the commit
// with the rotation it decides, a validation, and every third step a best save replacing the
// previous best.
void append_training_step(Ledger& l, const std::string& dir, int64_t step) {
  auto make = [&](EventKind kind, const std::string& path, int64_t s) {
    Event e;
    e.kind = kind;
    e.path = path;
    e.step = s;
    e.epoch = s;
    e.iter = 2 * s;
    return e;
  };
  auto regular = [&](int64_t s) { return dir + "/epoch_" + std::to_string(s) + ".pth"; };
  auto best = [&](int64_t s) { return dir + "/best_acc_epoch_" + std::to_string(s) + ".pth"; };
  auto save = [&](const std::string& path, const SavePayload& sp, std::vector<Event> after) {
    Event begun = make(EventKind::kSaveBegun, path, step);
    begun.detail = to_detail(sp);
    l.append(begun);
    Event committed = make(EventKind::kSaveCommitted, path, step);
    committed.bytes = 1000 + step;
    committed.digest = Sha256::hex(path);
    committed.detail = to_detail(sp);
    std::vector<Event> batch{committed};
    for (Event& e : after) batch.push_back(e);
    l.append_batch(batch);
  };
  SavePayload sp;
  sp.role = "regular";
  sp.keep_tracked = true;
  sp.keep_ckpt_ids = step > 1 ? std::vector<int64_t>{step - 1, step} : std::vector<int64_t>{step};
  auto pruned = [&](const std::string& path, int64_t s, const char* reason, const std::string& by) {
    Event prune = make(EventKind::kPruned, path, s);
    PrunePayload pp;
    pp.reason = reason;
    pp.superseded_by = by;
    prune.detail = to_detail(pp);
    return prune;
  };
  std::vector<Event> rotation;
  if (step > 2) rotation.push_back(pruned(regular(step - 2), step - 2, "rotation", regular(step)));
  save(regular(step), sp, rotation);
  if (step % 3 == 0) {
    SavePayload bp;
    bp.role = "best";
    bp.key = "acc";
    Event updated = make(EventKind::kBestUpdated, best(step), step);
    updated.metric = "acc";
    updated.score = 0.001 * static_cast<double>(step);
    BestPayload b;
    b.rule = "greater";
    b.previous_path = step > 3 ? best(step - 3) : "";
    b.had_previous_score = step > 3;
    updated.detail = to_detail(b);
    std::vector<Event> after{updated};
    if (step > 3) after.push_back(pruned(best(step - 3), step - 3, "best_replaced", best(step)));
    save(best(step), bp, after);
  }
  Event validated = make(EventKind::kValidated, "", step);
  ValidatedPayload vp;
  vp.metrics = {{"acc", 0.001 * static_cast<double>(step)}};
  validated.detail = to_detail(vp);
  l.append(validated);
}

// Checkpoints the WAL every few transactions, so that copies straddle checkpoints and WAL
// restarts (the default, 1000 pages, needs a few hundred appends per checkpoint).
void checkpoint_often(Ledger& l) {
  ASSERT_EQ(sqlite3_exec(l.database().handle(), "PRAGMA wal_autocheckpoint = 8", nullptr, nullptr,
                         nullptr),
            SQLITE_OK);
}

// Copies `from` to `to` in small pieces with a pause between them, so that a writer running at
// the same time changes the file while it is being copied. Copies nothing when `from` does not
// exist.
void copy_slowly(const std::string& from, const std::string& to, int pause_us) {
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return;
  std::ofstream out(to, std::ios::binary | std::ios::trunc);
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(in, buf, sizeof(buf));
    if (n <= 0) break;
    out.write(buf, n);
    if (pause_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(pause_us));
  }
  ::close(in);
}

class LedgerCopyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("ckpt_copy_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "run");
    ledger_ = (dir_ / "run" / kDefaultLedgerName).string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A fresh directory for copy number `n`; returns the path its ledger file will have.
  std::string copy_slot(int n) {
    const fs::path d = dir_ / ("copy_" + std::to_string(n));
    fs::create_directories(d);
    return (d / kDefaultLedgerName).string();
  }

  // The writer's history, read from the original after the writer is gone.
  void load_reference() {
    auto l = Ledger::open(ledger_);
    ASSERT_TRUE(l->verify().ok());
    l->for_each([&](const Event& e) {
      reference_.push_back(e);
      return true;
    });
  }
  HookState reference_state(int64_t up_to) const {
    HookState s;
    HookStateFold fold(s);
    for (int64_t i = 0; i < up_to; ++i) dispatch(reference_[i], fold);
    return s;
  }

  // Opens a copy the way the hook does (read-write, replay). Returns true for a consistent prefix
  // of the reference, false for a refusal; anything else fails the test.
  bool opens_as_prefix_or_refuses(const std::string& copy, std::string* why) {
    std::unique_ptr<Ledger> l;
    HookState replayed;
    try {
      l = Ledger::open(copy);
      HookStateFold fold(replayed);
      l->replay(fold);
    } catch (const Error& e) {
      *why = e.what();
      EXPECT_THAT(e.what(), HasSubstr(copy));
      EXPECT_TRUE(e.code() == ErrorCode::kCorruption || e.code() == ErrorCode::kInvalidArgument)
          << error_code_name(e.code()) << ": " << e.what();
      return false;
    }
    const int64_t n = l->last_seq();
    EXPECT_LE(n, static_cast<int64_t>(reference_.size())) << copy;
    if (n > static_cast<int64_t>(reference_.size())) return true;
    VerifyReport r = l->verify();
    EXPECT_TRUE(r.ok()) << copy << " opened, but its chain does not verify: " << r.problem;
    EXPECT_EQ(r.events_checked, n) << copy;
    if (n > 0) {
      std::string hash;
      l->for_each(
          [&](const Event& e) {
            hash = e.hash;
            return true;
          },
          n - 1, n);
      EXPECT_EQ(hash, reference_[n - 1].hash) << copy << ": seq " << n << " is not the writer's";
    }
    EXPECT_TRUE(replayed == reference_state(n))
        << copy << ": the replayed state is not the fold of the writer's first " << n << " events";
    return true;
  }

  fs::path dir_;
  std::string ledger_;
  std::vector<Event> reference_;
};

TEST_F(LedgerCopyTest, CopyTakenWhileAWriterAppendsOpensAsAPrefixOrIsRefused) {
  // The writer counts its steps in shared memory: each copy below waits for fresh appends, so the
  // test exercises the same mix of moments however slow the disk is today.
  void* shared = ::mmap(nullptr, sizeof(std::atomic<int64_t>), PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(shared, MAP_FAILED);
  auto* steps = new (shared) std::atomic<int64_t>(0);
  auto wait_for_steps = [&](int64_t more) {
    const int64_t target = steps->load() + more;
    while (steps->load() < target) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  };
  const std::string run_dir = (dir_ / "run").string();
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    try {
      auto l = Ledger::open(ledger_);
      sqlite3_exec(l->database().handle(), "PRAGMA wal_autocheckpoint = 8", nullptr, nullptr,
                   nullptr);
      for (int64_t step = 1;; ++step) {
        append_training_step(*l, run_dir, step);
        steps->store(step);
      }
    } catch (...) {
    }
    ::_exit(1);
  }
  wait_for_steps(10);
  // Three ways to copy a live ledger, each several times: the main file alone (what `cp` of the
  // one file a user knows about gives), the main file then the -wal a moment later, and the -wal
  // then the main file. The WAL is checkpointed every step or two, and restarted after that.
  constexpr int kRounds = 12;
  std::vector<std::string> copies;
  for (int round = 0; round < kRounds; ++round) {
    const int pause = 20 + 40 * (round % 4);
    std::string a = copy_slot(3 * round);
    copy_slowly(ledger_, a, pause);
    copies.push_back(a);
    std::string b = copy_slot(3 * round + 1);
    copy_slowly(ledger_, b, pause);
    wait_for_steps(1 + round % 3);
    copy_slowly(ledger_ + "-wal", b + "-wal", pause);
    copies.push_back(b);
    std::string w = copy_slot(3 * round + 2);
    copy_slowly(ledger_ + "-wal", w + "-wal", pause);
    wait_for_steps(1 + round % 3);
    copy_slowly(ledger_, w, pause);
    copies.push_back(w);
  }
  ::kill(child, SIGKILL);  // the writer dies with its last transactions in the WAL, as a crash
  ::waitpid(child, nullptr, 0);
  ::munmap(shared, sizeof(std::atomic<int64_t>));
  load_reference();

  int prefixes = 0;
  std::map<std::string, int> refusals;  // by kind of message
  for (const std::string& copy : copies) {
    std::string why;
    if (opens_as_prefix_or_refuses(copy, &why)) {
      ++prefixes;
    } else {
      const char* kinds[] = {"malformed", "follows seq", "events read in order", "truncated"};
      std::string kind = why;
      for (const char* k : kinds) {
        if (why.find(k) != std::string::npos) kind = k;
      }
      ++refusals[kind];
    }
  }
  std::cout << "copies of a live ledger (" << reference_.size() << " events written): " << prefixes
            << " consistent prefixes; refused:";
  for (const auto& [kind, n] : refusals) std::cout << " " << n << " '" << kind << "'";
  std::cout << "\n";
  EXPECT_GT(prefixes, 0);
}

// The same mix made deterministic: the main file and the -wal of two moments with WAL checkpoints
// and restarts in between.
TEST_F(LedgerCopyTest, MainFileAndWalFromDifferentMomentsOpenAsAPrefixOrAreRefused) {
  const std::string run_dir = (dir_ / "run").string();
  std::string early_main = copy_slot(0), late_main = copy_slot(1);
  {
    auto l = Ledger::open(ledger_);
    checkpoint_often(*l);
    int64_t step = 1;
    for (; step <= 30; ++step) append_training_step(*l, run_dir, step);
    fs::copy_file(ledger_, early_main);
    fs::copy_file(ledger_ + "-wal", early_main + ".wal-early");
    for (; step <= 60; ++step) append_training_step(*l, run_dir, step);
    fs::copy_file(ledger_, late_main);
    fs::copy_file(ledger_ + "-wal", late_main + ".wal-late");
    // The ledger is closed here: its WAL is checkpointed into the main file and removed.
  }
  load_reference();
  struct Mix {
    std::string main, wal;
  };
  const std::vector<Mix> mixes = {
      {early_main, ""},                         // main file alone, early
      {late_main, ""},                          // main file alone, late
      {early_main, late_main + ".wal-late"},    // stale main file, newer WAL
      {late_main, early_main + ".wal-early"},   // newer main file, stale WAL
      {early_main, early_main + ".wal-early"},  // a consistent pair: the whole early state
  };
  int n = 10, prefixes = 0;
  for (const Mix& m : mixes) {
    const std::string copy = copy_slot(n++);
    fs::copy_file(m.main, copy);
    if (!m.wal.empty()) fs::copy_file(m.wal, copy + "-wal");
    std::string why;
    const bool prefix = opens_as_prefix_or_refuses(copy, &why);
    prefixes += prefix;
    std::cout << m.main.substr(dir_.string().size()) << " + "
              << (m.wal.empty() ? "no WAL" : m.wal.substr(dir_.string().size())) << ": "
              << (prefix ? "prefix" : "refused: " + why) << "\n";
  }
  EXPECT_GE(prefixes, 3);  // the main files alone and the consistent pair are prefixes
}

}  // namespace
}  // namespace ckptledger
