// CheckpointHook against MMEngine's own unit tests of the hook, and the fold property: the live
// state equals the state replayed from the ledger (docs/crash-safety.md: state = fold(events)).
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include <sqlite3.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ckptledger/checkpoint_hook.h"
#include "ckptledger/ledger.h"
#include "hook/checkpoint_format.h"
#include "ledger/sqlite.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A runner whose counters the test sets, with a one-layer model and a momentum optimizer.
class TestRunner : public Runner {
 public:
  explicit TestRunner(std::string work_dir) : work_dir_(std::move(work_dir)) {
    torch::manual_seed(0);
    weight_ = torch::randn({3, 2});
  }
  int64_t epoch() const override { return epoch_; }
  int64_t iter() const override { return iter_; }
  int64_t max_epochs() const override { return max_epochs_; }
  int64_t max_iters() const override { return max_iters_; }
  std::string work_dir() const override { return work_dir_; }
  c10::impl::GenericDict checkpoint_state(bool with_optimizer, bool with_schedulers) override {
    c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
    c10::impl::GenericDict sd(c10::StringType::get(), c10::AnyType::get());
    sd.insert("fc.weight", weight_);
    d.insert("state_dict", sd);
    if (with_optimizer) {
      c10::impl::GenericDict opt(c10::StringType::get(), c10::AnyType::get());
      opt.insert("lr", 0.1);
      d.insert("optimizer", opt);
    }
    if (with_schedulers) {
      c10::impl::GenericList l(c10::AnyType::get());
      c10::impl::GenericDict s(c10::StringType::get(), c10::AnyType::get());
      s.insert("last_epoch", epoch_);
      l.push_back(s);
      d.insert("param_schedulers", l);
    }
    return d;
  }
  bool has_param_schedulers() const override { return true; }
  void load_checkpoint(const c10::impl::GenericDict& ckpt, bool resume) override {
    weight_ = ckpt.at("state_dict").toGenericDict().at("fc.weight").toTensor().clone();
    if (resume) {
      auto meta = ckpt.at("meta").toGenericDict();
      epoch_ = meta.at("epoch").toInt();
      iter_ = meta.at("iter").toInt();
    }
  }

  int64_t epoch_ = 0, iter_ = 0, max_epochs_ = 100, max_iters_ = 1000;
  torch::Tensor weight_;

 private:
  std::string work_dir_;
};

class HookTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("ckpt_hook_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    work_ = (dir_ / "work_dirs" / "exp").string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  static std::string slurp(const std::string& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  static nlohmann::json hub_of(const std::string& path) {
    auto ckpt = read_checkpoint(path).toGenericDict();
    auto rt = ckpt.at("message_hub").toGenericDict().at("runtime_info").toGenericDict();
    nlohmann::json j = nlohmann::json::object();
    for (const auto& kv : rt) {
      const auto& v = kv.value();
      if (v.isDouble()) j[kv.key().toStringRef()] = v.toDouble();
      if (v.isString()) j[kv.key().toStringRef()] = v.toStringRef();
      if (v.isList()) {
        std::vector<int64_t> ids;
        for (const auto& x : v.toListRef()) ids.push_back(x.toInt());
        j[kv.key().toStringRef()] = ids;
      }
    }
    return j;
  }
  // State = fold(events): replaying the ledger gives the state the live hook holds.
  void expect_live_equals_replay(CheckpointHook& hook) {
    hook.wait_idle();
    LedgerOptions ro;
    ro.mode = OpenMode::kReadOnly;
    auto ledger = Ledger::open(hook.ledger_path(), ro);
    HookState replayed;
    HookStateFold fold(replayed);
    ledger->replay(fold);
    EXPECT_TRUE(replayed == hook.state()) << "live state diverged from the replayed ledger";
  }
  std::string p(const std::string& name) const { return work_ + "/" + name; }

  fs::path dir_;
  std::string work_;
};

HookConfig from(const char* json) { return HookConfig::from_json(nlohmann::json::parse(json)); }

TEST_F(HookTest, AfterTrainEpochSavesOnIntervalAndWritesLastCheckpoint) {
  CheckpointHook hook(from(R"({"interval": 2})"));
  TestRunner r(work_);
  hook.before_train(r);
  hook.wait_idle();
  r.epoch_ = 9;
  r.iter_ = 90;
  hook.after_train_epoch(r);
  hook.wait_idle();
  EXPECT_EQ(hook.hub_info()["last_ckpt"], p("epoch_10.pth"));
  EXPECT_EQ(slurp(p("last_checkpoint")), p("epoch_10.pth"));  // no trailing newline
  r.epoch_ = 10;
  hook.after_train_epoch(r);
  hook.wait_idle();  // 11 is not on the interval
  EXPECT_EQ(hook.hub_info()["last_ckpt"], p("epoch_10.pth"));
  EXPECT_FALSE(fs::exists(p("epoch_11.pth")));
  auto ckpt = read_checkpoint(p("epoch_10.pth")).toGenericDict();
  EXPECT_EQ(ckpt.at("meta").toGenericDict().at("epoch").toInt(), 10);
  EXPECT_EQ(ckpt.at("meta").toGenericDict().at("iter").toInt(), 90);
  expect_live_equals_replay(hook);
}

TEST_F(HookTest, IterHookIgnoresEpochStageAndSavesByIteration) {
  CheckpointHook hook(from(R"({"interval": 2, "by_epoch": false})"));
  TestRunner r(work_);
  hook.before_train(r);
  hook.wait_idle();
  r.iter_ = 9;
  hook.after_train_epoch(r);
  hook.wait_idle();
  EXPECT_FALSE(hook.hub_info().contains("last_ckpt"));
  hook.after_train_iter(r, 9);
  hook.wait_idle();
  EXPECT_EQ(hook.hub_info()["last_ckpt"], p("iter_10.pth"));
  auto meta = read_checkpoint(p("iter_10.pth")).toGenericDict().at("meta").toGenericDict();
  EXPECT_EQ(meta.at("epoch").toInt(), 0);
  EXPECT_EQ(meta.at("iter").toInt(), 10);
}

TEST_F(HookTest, RotationKeepsNewestAndDeletesOnlyAfterCommit) {
  CheckpointHook hook(from(R"({"interval": 1, "max_keep_ckpts": 3})"));
  TestRunner r(work_);
  hook.before_train(r);
  hook.wait_idle();
  for (int e = 0; e < 11; ++e) {
    r.epoch_ = e;
    r.iter_ = e + 1;
    hook.after_train_epoch(r);
    hook.wait_idle();
    expect_live_equals_replay(hook);
  }
  for (int k = 1; k <= 8; ++k) EXPECT_FALSE(fs::exists(p("epoch_" + std::to_string(k) + ".pth")));
  for (int k = 9; k <= 11; ++k) EXPECT_TRUE(fs::exists(p("epoch_" + std::to_string(k) + ".pth")));
  EXPECT_EQ(hook.hub_info()["keep_ckpt_ids"], nlohmann::json({9, 10, 11}));
  EXPECT_EQ(hub_of(p("epoch_11.pth"))["keep_ckpt_ids"], nlohmann::json({9, 10, 11}));
  // Each rotation's prune is recorded after (in the same transaction as) its successor's commit.
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  auto ledger = Ledger::open(hook.ledger_path(), ro);
  std::string last_committed;
  int prunes = 0;
  ledger->for_each([&](const Event& e) {
    if (e.kind == EventKind::kSaveCommitted) last_committed = e.path;
    if (e.kind == EventKind::kPruned) {
      ++prunes;
      EXPECT_NE(e.path, last_committed);
      EXPECT_THAT(e.detail, HasSubstr("\"superseded_by\": \"" + last_committed + "\""));
    }
    return true;
  });
  EXPECT_EQ(prunes, 8);
}

TEST_F(HookTest, BestAutoResolvesFirstKeyAndReplacesPreviousBest) {
  CheckpointHook hook(from(R"({"interval": 1, "save_best": "auto"})"));
  TestRunner r(work_);
  hook.before_train(r);
  hook.wait_idle();
  r.epoch_ = 9;
  r.iter_ = 9;
  hook.after_val_epoch(r, {{"acc", 0.5}, {"map", 0.3}});
  hook.wait_idle();
  EXPECT_EQ(hook.hub_info()["best_score"], 0.5);
  EXPECT_EQ(hook.hub_info()["best_ckpt"], p("best_acc_epoch_9.pth"));
  EXPECT_TRUE(fs::exists(p("best_acc_epoch_9.pth")));
  EXPECT_FALSE(fs::exists(p("last_checkpoint")));  // a best save alone never writes it
  r.epoch_ = 10;
  hook.after_val_epoch(r, {{"map", 0.9}, {"acc", 0.7}});
  hook.wait_idle();  // the key stays 'acc'
  EXPECT_EQ(hook.hub_info()["best_score"], 0.7);
  EXPECT_FALSE(fs::exists(p("best_acc_epoch_9.pth")));
  EXPECT_TRUE(fs::exists(p("best_acc_epoch_10.pth")));
  auto keys = read_checkpoint(p("best_acc_epoch_10.pth")).toGenericDict();
  EXPECT_FALSE(keys.contains("optimizer"));
  EXPECT_FALSE(keys.contains("param_schedulers"));
  expect_live_equals_replay(hook);
}

TEST_F(HookTest, LessRuleKeepsLowerLossAndEqualScoreNeverReplaces) {
  CheckpointHook hook(from(R"({"save_best": "loss"})"));
  TestRunner r(work_);
  hook.before_train(r);
  hook.wait_idle();
  r.epoch_ = 9;
  hook.after_val_epoch(r, {{"loss", 0.8}});
  hook.wait_idle();
  r.epoch_ = 10;
  hook.after_val_epoch(r, {{"loss", 0.5}});
  hook.wait_idle();
  r.epoch_ = 11;
  hook.after_val_epoch(r, {{"loss", 0.5}});
  hook.wait_idle();
  EXPECT_EQ(hook.hub_info()["best_score"], 0.5);
  EXPECT_EQ(hook.hub_info()["best_ckpt"], p("best_loss_epoch_10.pth"));
}

TEST_F(HookTest, MultiKeyBestUsesSuffixedHubKeys) {
  CheckpointHook hook(from(R"({"save_best": ["acc", "mIoU"]})"));
  TestRunner r(work_);
  hook.before_train(r);
  hook.wait_idle();
  r.epoch_ = 9;
  hook.after_val_epoch(r, {{"acc", 0.5}, {"mIoU", 0.6}});
  hook.wait_idle();
  nlohmann::json h = hook.hub_info();
  EXPECT_EQ(h["best_score_acc"], 0.5);
  EXPECT_EQ(h["best_score_mIoU"], 0.6);
  EXPECT_EQ(h["best_ckpt_acc"], p("best_acc_epoch_9.pth"));
  EXPECT_EQ(h["best_ckpt_mIoU"], p("best_mIoU_epoch_9.pth"));
  EXPECT_FALSE(h.contains("best_score"));
}

TEST_F(HookTest, MissingBestKeyNamesTheKey) {
  CheckpointHook hook(from(R"({"save_best": "acc"})"));
  TestRunner r(work_);
  hook.before_train(r);
  hook.wait_idle();
  try {
    hook.after_val_epoch(r, {{"loss", 0.1}});
    hook.wait_idle();
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("'acc'"));
  }
}

TEST_F(HookTest, BestImprovementResavesRegularCheckpointOffInterval) {
  CheckpointHook hook(from(R"({"interval": 2, "save_best": "acc"})"));
  TestRunner r(work_);
  hook.before_train(r);
  hook.wait_idle();
  r.epoch_ = 1;  // after_train_epoch of epoch index 1 saves epoch_2
  r.iter_ = 2;
  hook.after_train_epoch(r);
  hook.wait_idle();
  r.epoch_ = 2;
  hook.after_val_epoch(r, {{"acc", 0.1}});
  hook.wait_idle();
  r.epoch_ = 2;  // epoch index 2 ends: epoch_3 is off the interval
  r.iter_ = 3;
  hook.after_train_epoch(r);
  hook.wait_idle();
  r.epoch_ = 3;
  hook.after_val_epoch(r, {{"acc", 0.9}});
  hook.wait_idle();
  EXPECT_TRUE(fs::exists(p("epoch_3.pth")));  // the re-save
  EXPECT_EQ(slurp(p("last_checkpoint")), p("epoch_3.pth"));
  EXPECT_EQ(hub_of(p("epoch_3.pth"))["best_ckpt"], p("best_acc_epoch_3.pth"));
  expect_live_equals_replay(hook);
}

TEST_F(HookTest, ResumeRebuildsHubFromLedgerIncludingLastCkpt) {
  {
    CheckpointHook hook(from(R"({"interval": 1, "save_best": "acc", "max_keep_ckpts": 2})"));
    TestRunner r(work_);
    hook.before_train(r);
    hook.wait_idle();
    for (int e = 0; e < 3; ++e) {
      r.epoch_ = e;
      r.iter_ = e + 1;
      hook.after_train_epoch(r);
      hook.wait_idle();
      r.epoch_ = e + 1;
      hook.after_val_epoch(r, {{"acc", 0.1 * (e + 1)}});
      hook.wait_idle();
    }
    hook.after_run(r);
  }
  CheckpointHook hook(from(R"({"interval": 1, "save_best": "acc", "max_keep_ckpts": 1})"));
  TestRunner r(work_);
  auto loaded = hook.resume(r);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_EQ(*loaded, p("epoch_3.pth"));
  EXPECT_EQ(r.epoch_, 3);
  hook.before_train(r);
  hook.wait_idle();
  nlohmann::json h = hook.hub_info();
  EXPECT_NEAR(h["best_score"].get<double>(), 0.3, 1e-12);
  EXPECT_EQ(h["last_ckpt"], p("epoch_3.pth"));         // replayed: survives the resume
  EXPECT_EQ(h["keep_ckpt_ids"], nlohmann::json({3}));  // trimmed to the new max_keep_ckpts
  EXPECT_FALSE(fs::exists(p("epoch_2.pth")));
  EXPECT_TRUE(fs::exists(p("epoch_3.pth")));
  expect_live_equals_replay(hook);
}

// --- State snapshots (Ledger::put_snapshot / latest_snapshot, resume from snapshot + tail) ---

// A run of `epochs` epochs with rotation and best saves: every kind of state change.
void run_epochs(const std::string& work, int epochs) {
  CheckpointHook hook(from(R"({"interval": 1, "save_best": "acc", "max_keep_ckpts": 2})"));
  TestRunner r(work);
  hook.before_train(r);
  for (int e = 0; e < epochs; ++e) {
    r.epoch_ = e;
    r.iter_ = e + 1;
    hook.after_train_epoch(r);
    r.epoch_ = e + 1;
    hook.after_val_epoch(r, {{"acc", (e % 3 == 0) ? 0.01 * e : 0.0}});
  }
  hook.after_run(r);
}

HookState full_fold(const Ledger& l, int64_t up_to = std::numeric_limits<int64_t>::max()) {
  HookState s;
  HookStateFold fold(s);
  l.replay(fold, up_to);
  return s;
}

// What a resume folds: the newest trusted, readable snapshot, then the events after it.
HookState snapshot_fold(const Ledger& l, int64_t up_to, int64_t* from = nullptr) {
  HookState s;
  int64_t after = 0;
  if (auto snap = l.latest_snapshot(kHookStateFormat, up_to)) {
    EXPECT_LE(snap->seq, up_to);
    if (auto restored = deserialize_state(snap->blob)) {
      s = std::move(*restored);
      after = snap->seq;
    }
  }
  HookStateFold fold(s);
  l.replay_range(fold, after, up_to);
  if (from) *from = after;
  return s;
}

void exec_sql(const Ledger& l, const std::string& sql) {
  char* err = nullptr;
  int rc = sqlite3_exec(l.database().handle(), sql.c_str(), nullptr, nullptr, &err);
  std::string msg = err ? err : "";
  sqlite3_free(err);
  ASSERT_EQ(rc, SQLITE_OK) << msg;
}

// Resumes a fresh hook on `work` and checks its state against a full replay of the ledger.
void expect_resume_equals_full_replay(const std::string& work) {
  CheckpointHook hook(from(R"({"interval": 1, "save_best": "acc", "max_keep_ckpts": 2})"));
  TestRunner r(work);
  hook.resume(r);
  hook.wait_idle();
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  auto l = Ledger::open(hook.ledger_path(), ro);
  const HookState full = full_fold(*l);
  EXPECT_TRUE(hook.state() == full);
  EXPECT_EQ(serialize_state(hook.state()), serialize_state(full));
}

TEST_F(HookTest, SnapshotRoundTripsEveryField) {
  run_epochs(work_, 6);
  auto l = Ledger::open(work_ + "/ckptledger.sqlite");
  HookState s = full_fold(*l);
  HookState::Begun begun;
  begun.step = 1;
  begun.epoch = 2;
  begun.iter = 3;
  s.in_flight["/x"] = begun;
  s.reported_unknown.insert("/u");
  s.retired.insert("/r");
  s.retired_parts["/r"] = {"/r.part1", "/r.part2"};
  LiveFile published;
  published.role = "published";
  published.step = 4;
  published.epoch = 5;
  published.iter = 6;
  published.bytes = 7;
  published.digest = "d";
  published.seq = 8;
  published.layout = "spread";
  published.world_size = 2;
  published.part_paths = {"/p", "/p.part1"};
  published.part_bytes = {7, 9};
  published.part_sha256 = {"a", "b"};
  s.live["/p"] = published;
  auto back = deserialize_state(serialize_state(s));
  ASSERT_TRUE(back.has_value());
  EXPECT_TRUE(*back == s);
  EXPECT_EQ(serialize_state(*back), serialize_state(s));
  EXPECT_EQ(back->live.at("/p").seq, 8);
  EXPECT_EQ(back->in_flight.at("/x").iter, 3);
  EXPECT_EQ(back->retired_parts.at("/r").size(), 2u);
  EXPECT_EQ(back->live.at("/p").part_sha256.at(1), "b");
}

// The property: for every prefix, the newest snapshot at or before it plus the events after it
// fold to the same state as a replay of the whole prefix; a resume uses it and agrees.
TEST_F(HookTest, SnapshotPlusTailFoldEqualsFullReplayAtEveryPrefix) {
  run_epochs(work_, 30);
  {
    auto l = Ledger::open(work_ + "/ckptledger.sqlite");
    const int64_t last = l->last_seq();
    ASSERT_GT(last, 150);
    // after_run recorded one at the end.
    auto end = l->latest_snapshot(kHookStateFormat);
    ASSERT_TRUE(end.has_value());
    EXPECT_EQ(end->seq, last);
    EXPECT_TRUE(*deserialize_state(end->blob) == full_fold(*l));
    for (int64_t up_to = 1; up_to <= last; ++up_to) {
      // Snapshots at several points (written before the prefixes that read them).
      if (up_to % 23 == 0)
        l->put_snapshot(up_to, kHookStateFormat, serialize_state(full_fold(*l, up_to)));
      int64_t from = 0;
      HookState s = snapshot_fold(*l, up_to, &from);
      EXPECT_EQ(from, up_to == last ? last : up_to < 23 ? 0 : up_to - up_to % 23) << up_to;
      ASSERT_EQ(serialize_state(s), serialize_state(full_fold(*l, up_to))) << "prefix " << up_to;
    }
  }
  expect_resume_equals_full_replay(work_);
}

// A snapshot whose recorded hash is not the hash of its event here (a ledger rewritten, restored
// from a copy, or given another ledger's snapshots) is never used.
TEST_F(HookTest, SnapshotWhoseHashNoLongerMatchesIsIgnored) {
  run_epochs(work_, 8);
  {
    auto l = Ledger::open(work_ + "/ckptledger.sqlite");
    exec_sql(*l, "DELETE FROM snapshots");
    const int64_t at = l->last_seq() - 5;
    HookState wrong = full_fold(*l, at);
    wrong.last_ckpt = "/not/this/chain.pth";
    wrong.best.clear();
    l->put_snapshot(at, kHookStateFormat, serialize_state(wrong));
    // Sanity: with its hash intact the (planted) snapshot is what a fold starts from.
    int64_t from = 0;
    EXPECT_EQ(snapshot_fold(*l, at, &from).last_ckpt, "/not/this/chain.pth");
    EXPECT_EQ(from, at);
    EXPECT_FALSE(snapshot_fold(*l, l->last_seq()) == full_fold(*l));
    exec_sql(*l, "UPDATE snapshots SET hash = '" + std::string(64, 'f') + "'");
    EXPECT_FALSE(l->latest_snapshot(kHookStateFormat).has_value());
    EXPECT_TRUE(snapshot_fold(*l, at) == full_fold(*l, at));
    EXPECT_TRUE(snapshot_fold(*l, l->last_seq()) == full_fold(*l));
  }
  expect_resume_equals_full_replay(work_);
}

// Another ledger's snapshots (same seqs, another chain) are not a prefix of this one.
TEST_F(HookTest, SnapshotsOfAnotherLedgerAreIgnored) {
  const std::string other = (dir_ / "other" / "exp").string();
  run_epochs(work_, 8);
  run_epochs(other, 12);
  {
    auto l = Ledger::open(work_ + "/ckptledger.sqlite");
    exec_sql(*l, "DELETE FROM snapshots");
    exec_sql(*l, "ATTACH '" + other + "/ckptledger.sqlite' AS o");
    exec_sql(*l, "INSERT INTO snapshots SELECT * FROM o.snapshots WHERE seq <= " +
                     std::to_string(l->last_seq()));
    exec_sql(*l, "DETACH o");
    auto o = Ledger::open(other + "/ckptledger.sqlite");
    o->put_snapshot(l->last_seq() - 3, kHookStateFormat,
                    serialize_state(full_fold(*o, l->last_seq() - 3)));
    o.reset();
    exec_sql(*l, "ATTACH '" + other + "/ckptledger.sqlite' AS o");
    exec_sql(*l, "INSERT OR REPLACE INTO snapshots SELECT * FROM o.snapshots WHERE seq <= " +
                     std::to_string(l->last_seq()));
    exec_sql(*l, "DETACH o");
    EXPECT_FALSE(l->latest_snapshot(kHookStateFormat).has_value());
  }
  expect_resume_equals_full_replay(work_);
}

// Damaged bytes, a truncated blob or another layout: ignored, every event replayed.
TEST_F(HookTest, CorruptOrForeignSnapshotIsIgnored) {
  run_epochs(work_, 8);
  auto l = Ledger::open(work_ + "/ckptledger.sqlite");
  const int64_t at = l->last_seq() - 4;
  const std::string good = serialize_state(full_fold(*l, at));
  ASSERT_TRUE(deserialize_state(good).has_value());
  // One byte of a path changed: cereal alone would read it as another (valid-looking) state.
  std::string flipped = good;
  const size_t pos = flipped.rfind("epoch_");
  ASSERT_NE(pos, std::string::npos);
  flipped[pos] = 'E';
  EXPECT_FALSE(deserialize_state(flipped).has_value());
  EXPECT_FALSE(deserialize_state(good.substr(0, good.size() - 3)).has_value());
  EXPECT_FALSE(deserialize_state(good + "x").has_value());
  EXPECT_FALSE(deserialize_state("").has_value());
  for (const std::string& bad : {flipped, good.substr(0, good.size() / 2)}) {
    exec_sql(*l, "DELETE FROM snapshots");
    l->put_snapshot(at, kHookStateFormat, bad);
    int64_t from = -1;
    EXPECT_TRUE(snapshot_fold(*l, l->last_seq(), &from) == full_fold(*l));
    EXPECT_EQ(from, 0);
    l.reset();
    expect_resume_equals_full_replay(work_);
    l = Ledger::open(work_ + "/ckptledger.sqlite");
  }
  // Another format is not this one's (a newer layout is never misread by an older binary).
  exec_sql(*l, "DELETE FROM snapshots");
  l->put_snapshot(at, "hook_state/999", good);
  EXPECT_FALSE(l->latest_snapshot(kHookStateFormat).has_value());
}

TEST_F(HookTest, ResumeSkipsACheckpointWhoseBytesChanged) {
  {
    CheckpointHook hook(from(R"({"interval": 1})"));
    TestRunner r(work_);
    hook.before_train(r);
    hook.wait_idle();
    for (int e = 0; e < 2; ++e) {
      r.epoch_ = e;
      r.iter_ = e + 1;
      hook.after_train_epoch(r);
      hook.wait_idle();
    }
  }
  {
    std::fstream f(p("epoch_2.pth"), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x7f');
  }
  CheckpointHook hook(from(R"({"interval": 1})"));
  TestRunner r(work_);
  auto loaded = hook.resume(r);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_EQ(*loaded, p("epoch_1.pth"));
  EXPECT_EQ(r.epoch_, 1);
}

TEST_F(HookTest, PublishingIsContentAddressedAndNotDuplicated) {
  CheckpointHook hook(from(R"({"interval": 1, "published_keys": ["meta", "state_dict"]})"));
  TestRunner r(work_);
  hook.before_train(r);
  hook.wait_idle();
  r.epoch_ = 0;
  r.iter_ = 1;
  hook.after_train_epoch(r);
  hook.wait_idle();
  hook.after_train(r);
  hook.wait_idle();
  hook.after_train(r);
  hook.wait_idle();  // the same content again
  ASSERT_EQ(hook.published().size(), 2u);
  EXPECT_EQ(hook.published()[0], hook.published()[1]);
  int published_files = 0;
  for (const auto& f : fs::directory_iterator(work_)) {
    if (f.path().filename().string().rfind("epoch_1-", 0) == 0) ++published_files;
  }
  EXPECT_EQ(published_files, 1);
  auto pub = read_checkpoint(hook.published()[0]).toGenericDict();
  EXPECT_TRUE(pub.contains("meta"));
  EXPECT_TRUE(pub.contains("state_dict"));
  EXPECT_FALSE(pub.contains("optimizer"));
}

TEST_F(HookTest, RelativeSpellingOfWorkDirIsNotDoubled) {
  fs::current_path(dir_);
  CheckpointHook hook(from(R"({"interval": 1, "out_dir": "work_dirs/exp"})"));
  TestRunner r(work_);
  hook.before_train(r);
  hook.wait_idle();
  EXPECT_EQ(hook.out_dir(), work_);
  CheckpointHook other(from(R"({"interval": 1, "out_dir": "ckpts/"})"));
  TestRunner r2((dir_ / "work_dirs" / "exp2").string());
  other.before_train(r2);
  other.wait_idle();
  EXPECT_EQ(other.out_dir(), (dir_ / "ckpts" / "exp2").string());
}

}  // namespace
}  // namespace ckptledger
