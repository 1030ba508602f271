// SavePlanner without libtorch or a disk: plans from a folded HookState, files "on disk" answered
// by the test's own probe. Each plan that the hook would commit is folded back into the state, as
// the hook does, so a sequence of plans walks through a run.
#include "policy/save_planner.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "ledger/payload.h"
#include "policy/hook_events.h"

namespace ckptledger {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct Planned {
  ValidatedConfig cfg;
  std::set<std::string> on_disk;
  HookState state;

  explicit Planned(const std::string& json)
      : cfg(validate(HookConfig::from_json(nlohmann::json::parse(json)))) {}

  SavePlanner planner() const {
    return SavePlanner(cfg, "/w", [this](const std::string& p) { return on_disk.count(p) > 0; });
  }
  // What the hook does once a save's bytes are durable: its events are committed (folded).
  void commit(const PlannedSave& p) {
    HookStateFold fold(state);
    for (const Event& e : p.commit) dispatch(e, fold);
    for (const std::string& r : p.remove_after) on_disk.erase(r);
    on_disk.insert(p.path);
  }
  void commit(const ValidationPlan& v) {
    HookStateFold fold(state);
    dispatch(v.validated, fold);
    for (const PlanStep& s : v.steps) {
      if (s.save) commit(*s.save);
    }
  }
  std::vector<std::string> saves(const ValidationPlan& v) const {
    std::vector<std::string> out;
    for (const PlanStep& s : v.steps) {
      if (s.save) out.push_back(s.save->path);
    }
    return out;
  }
};

std::vector<std::string> kinds(const std::vector<Event>& events) {
  std::vector<std::string> out;
  for (const Event& e : events) out.push_back(event_kind_name(e.kind));
  return out;
}

TEST(SavePlanner, RotationPrunesTheOldestKeptCheckpointOnlyAfterItsSuccessor) {
  Planned r(R"({"interval": 1, "max_keep_ckpts": 2})");
  for (int64_t e = 1; e <= 2; ++e) r.commit(r.planner().plan_regular(r.state, e, e, e * 10));
  PlannedSave third = r.planner().plan_regular(r.state, 3, 3, 30);
  EXPECT_EQ(third.path, "/w/epoch_3.pth");
  EXPECT_THAT(kinds(third.commit), ElementsAre("save_committed", "pruned"));
  EXPECT_EQ(third.commit[1].path, "/w/epoch_1.pth");
  EXPECT_THAT(third.remove_after, ElementsAre("/w/epoch_1.pth"));
  EXPECT_TRUE(third.moves_last_checkpoint);
  EXPECT_EQ(from_detail<SavePayload>(third.commit[0].detail, 0).keep_ckpt_ids,
            (std::vector<int64_t>{2, 3}));
  // Planning is pure: the state it was given is unchanged until the commit.
  EXPECT_EQ(r.state.keep_ckpt_ids, (std::vector<int64_t>{1, 2}));
  r.commit(third);
  EXPECT_EQ(r.state.keep_ckpt_ids, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(r.state.last_ckpt, "/w/epoch_3.pth");
}

TEST(SavePlanner, SavingTheSameStepAgainRotatesNothing) {
  Planned r(R"({"interval": 1, "max_keep_ckpts": 1})");
  r.commit(r.planner().plan_regular(r.state, 1, 1, 10));
  PlannedSave again = r.planner().plan_regular(r.state, 1, 1, 10);
  EXPECT_THAT(kinds(again.commit), ElementsAre("save_committed"));
  EXPECT_TRUE(again.remove_after.empty());
}

TEST(SavePlanner, ABetterScoreReplacesTheBestAndReSavesTheRegularCheckpoint) {
  Planned r(R"({"interval": 1, "save_best": "acc"})");
  r.commit(r.planner().plan_regular(r.state, 1, 1, 10));
  ValidationPlan first = r.planner().plan_validation(r.state, {{"acc", 0.5}}, 1, 10);
  EXPECT_THAT(r.saves(first), ElementsAre("/w/best_acc_epoch_1.pth", "/w/epoch_1.pth"));
  r.commit(first);
  EXPECT_EQ(r.state.best.at("acc").score, 0.5);

  r.commit(r.planner().plan_regular(r.state, 2, 2, 20));
  ValidationPlan worse = r.planner().plan_validation(r.state, {{"acc", 0.4}}, 2, 20);
  EXPECT_TRUE(r.saves(worse).empty());
  EXPECT_EQ(worse.validated.kind, EventKind::kValidated);

  ValidationPlan better = r.planner().plan_validation(r.state, {{"acc", 0.9}}, 2, 20);
  ASSERT_THAT(r.saves(better), ElementsAre("/w/best_acc_epoch_2.pth", "/w/epoch_2.pth"));
  const PlannedSave& best = *better.steps[0].save;
  EXPECT_THAT(kinds(best.commit), ElementsAre("save_committed", "best_updated", "pruned"));
  EXPECT_EQ(best.commit[1].score, 0.9);
  EXPECT_EQ(best.commit[2].path, "/w/best_acc_epoch_1.pth");
  EXPECT_THAT(best.remove_after, ElementsAre("/w/best_acc_epoch_1.pth"));
  EXPECT_FALSE(best.moves_last_checkpoint);
  ASSERT_EQ(best.logs_after.size(), 2u);
  EXPECT_THAT(best.logs_after[0].second, HasSubstr("previous best checkpoint"));
  EXPECT_THAT(best.logs_after[1].second,
              HasSubstr("The best checkpoint with 0.9000 acc at 2 epoch is saved to "
                        "best_acc_epoch_2.pth."));
}

TEST(SavePlanner, LessRuleInferredForLossKeys) {
  Planned r(R"({"interval": 1, "save_best": ["acc", "loss"]})");
  r.commit(r.planner().plan_validation(r.state, {{"acc", 0.5}, {"loss", 1.0}}, 1, 10));
  ValidationPlan v = r.planner().plan_validation(r.state, {{"acc", 0.4}, {"loss", 0.5}}, 2, 20);
  EXPECT_THAT(r.saves(v), ElementsAre("/w/best_loss_epoch_2.pth"));
}

TEST(SavePlanner, NaNIsNeverABestAndNoneIsSkipped) {
  Planned r(R"({"interval": 1, "save_best": ["acc", "loss"]})");
  ValidationPlan v =
      r.planner().plan_validation(r.state, {{"acc", std::nan("")}, {"loss", std::nullopt}}, 1, 10);
  EXPECT_TRUE(r.saves(v).empty());
  ASSERT_EQ(v.steps.size(), 1u);
  EXPECT_EQ(v.steps[0].level, LogLevel::kWarning);
  EXPECT_THAT(v.steps[0].message, HasSubstr("'acc' is NaN"));
}

TEST(SavePlanner, MissingSaveBestKeyIsAnErrorNamingIt) {
  Planned r(R"({"interval": 1, "save_best": "mIoU"})");
  try {
    r.planner().plan_validation(r.state, {{"acc", 0.5}}, 1, 10);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_THAT(e.what(), HasSubstr("'mIoU' is not in the metrics ['acc']"));
  }
}

TEST(SavePlanner, AutoResolvesToTheFirstMetricAndStaysResolved) {
  Planned r(R"({"interval": 1, "save_best": "auto"})");
  ValidationPlan v = r.planner().plan_validation(r.state, {{"acc", 0.5}, {"loss", 1.0}}, 1, 10);
  EXPECT_EQ(from_detail<ValidatedPayload>(v.validated.detail, 0).auto_key, "acc");
  EXPECT_THAT(r.saves(v), ElementsAre("/w/best_acc_epoch_1.pth"));
  r.commit(v);
  // A later validation whose first metric is another key still uses the resolved one.
  ValidationPlan later = r.planner().plan_validation(r.state, {{"loss", 0.1}, {"acc", 0.9}}, 2, 20);
  EXPECT_THAT(r.saves(later), ElementsAre("/w/best_acc_epoch_2.pth"));
}

TEST(SavePlanner, EmptyMetricsRecordTheValidationAndWarn) {
  Planned r(R"({"interval": 1, "save_best": "acc"})");
  ValidationPlan v = r.planner().plan_validation(r.state, {}, 1, 10);
  EXPECT_TRUE(r.saves(v).empty());
  ASSERT_EQ(v.steps.size(), 1u);
  EXPECT_THAT(v.steps[0].message, HasSubstr("empty dict"));
}

TEST(SavePlanner, AnOldBestUnknownToTheStateIsPrunedOnlyIfItIsOnDisk) {
  Planned r(R"({"interval": 1, "save_best": "acc"})");
  r.state.best["acc"] = BestState{0.1, "/w/best_acc_epoch_0.pth"};
  ValidationPlan gone = r.planner().plan_validation(r.state, {{"acc", 0.5}}, 1, 10);
  EXPECT_THAT(kinds(gone.steps[0].save->commit), ElementsAre("save_committed", "best_updated"));
  r.on_disk.insert("/w/best_acc_epoch_0.pth");
  ValidationPlan there = r.planner().plan_validation(r.state, {{"acc", 0.5}}, 1, 10);
  EXPECT_THAT(there.steps[0].save->remove_after, ElementsAre("/w/best_acc_epoch_0.pth"));
}

TEST(SavePlanner, ASmallerMaxKeepTrimsTheRestoredKeepListOldestFirst) {
  Planned three(R"({"interval": 1, "max_keep_ckpts": 3})");
  for (int64_t e = 1; e <= 3; ++e) three.commit(three.planner().plan_regular(three.state, e, e, e));
  three.on_disk.erase("/w/epoch_2.pth");  // deleted by hand
  Planned one(R"({"interval": 1, "max_keep_ckpts": 1})");
  one.state = three.state;
  one.on_disk = three.on_disk;
  TrimPlan t = one.planner().plan_keep_trim(one.state, 3, 3);
  ASSERT_EQ(t.prunes.size(), 2u);
  EXPECT_EQ(t.prunes[0].path, "/w/epoch_1.pth");
  EXPECT_EQ(t.prunes[1].path, "/w/epoch_2.pth");
  EXPECT_FALSE(from_detail<PrunePayload>(t.prunes[1].detail, 0).existed);
  EXPECT_THAT(t.remove_after, ElementsAre("/w/epoch_1.pth"));
  EXPECT_EQ(from_detail<PrunePayload>(t.prunes[1].detail, 0).keep_ckpt_ids,
            (std::vector<int64_t>{3}));
  EXPECT_TRUE(three.planner().plan_keep_trim(three.state, 3, 3).prunes.empty());
}

}  // namespace
}  // namespace ckptledger
