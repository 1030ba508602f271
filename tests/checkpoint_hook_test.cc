// CheckpointHook against MMEngine's own unit tests (spec §16) and the fold property (§17.3).
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "hook/checkpoint_format.h"
#include "hook/checkpoint_hook.h"
#include "ledger/ledger.h"

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
  // The property of §17.3: replaying the ledger gives the state the live hook holds.
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
  EXPECT_EQ(h["last_ckpt"], p("epoch_3.pth"));         // §17.3: survives the resume
  EXPECT_EQ(h["keep_ckpt_ids"], nlohmann::json({3}));  // trimmed to the new max_keep_ckpts
  EXPECT_FALSE(fs::exists(p("epoch_2.pth")));
  EXPECT_TRUE(fs::exists(p("epoch_3.pth")));
  expect_live_equals_replay(hook);
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
