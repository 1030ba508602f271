// Recovery at open (issue 5): reconciliation findings, verified resume, strict policy, one writer
// per work_dir, and "nothing due is skipped".
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "hook/checkpoint_format.h"
#include "hook/checkpoint_hook.h"
#include "hook/hook_events.h"
#include "hook/loops.h"
#include "ledger/ledger.h"

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

}  // namespace
}  // namespace ckptledger
