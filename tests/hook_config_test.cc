// HookConfig / validate(): MMEngine's CheckpointHook constructor checks and rule inference, the
// early errors and warnings of ckptledger (docs/behaviour.md: configuration errors, differences),
// and Python str.format for templates.
#include "ckptledger/hook_config.h"

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "ckptledger/error.h"

namespace ckptledger {
namespace {

using nlohmann::json;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using Keys = std::vector<std::string>;

// The message of the Error(kInvalidArgument) that `f` throws; a test failure if it throws nothing
// or something else.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected Error(kInvalidArgument), nothing was thrown";
  return "";
}

ValidatedConfig validate_json(const std::string& text) {
  return validate(HookConfig::from_json(json::parse(text)));
}

// Parse + validate error, as a scenario's hook object would get it.
std::string config_error(const std::string& text) {
  return error_of([&] { validate_json(text); });
}

HookConfig with_save_best(json save_best) {
  HookConfig c;
  c.save_best = std::move(save_best);
  return c;
}

std::string validate_error(const HookConfig& c) {
  return error_of([&] { validate(c); });
}

// ---- defaults and parsing -------------------------------------------------------------------

TEST(HookConfig, DefaultsMatchMMEngine) {
  const HookConfig c;
  EXPECT_EQ(c.interval, -1);
  EXPECT_TRUE(c.by_epoch);
  EXPECT_TRUE(c.save_optimizer);
  EXPECT_TRUE(c.save_param_scheduler);
  EXPECT_FALSE(c.out_dir.has_value());
  EXPECT_EQ(c.max_keep_ckpts, -1);
  EXPECT_TRUE(c.save_last);
  EXPECT_TRUE(c.save_best.is_null());
  EXPECT_TRUE(c.rule.is_null());
  EXPECT_TRUE(c.greater_keys.is_null());
  EXPECT_TRUE(c.less_keys.is_null());
  EXPECT_TRUE(c.file_client_args.is_null());
  EXPECT_FALSE(c.filename_tmpl.has_value());
  EXPECT_TRUE(c.backend_args.is_null());
  EXPECT_TRUE(c.published_keys.is_null());
  EXPECT_EQ(c.save_begin, 0);

  const ValidatedConfig v = validate(c);
  EXPECT_EQ(v.filename_tmpl, "epoch_{}.pth");
  EXPECT_FALSE(v.save_best_enabled);
  EXPECT_TRUE(v.best.empty());
  EXPECT_FALSE(v.single_indicator());
  EXPECT_EQ(v.greater_keys, Keys({"acc", "top", "AR@", "auc", "precision", "mAP", "mDice", "mIoU",
                                  "mAcc", "aAcc"}));
  EXPECT_EQ(v.less_keys, Keys({"loss"}));
  EXPECT_FALSE(v.published_keys.has_value());
  EXPECT_TRUE(v.warnings.empty());
  EXPECT_EQ(v.options, c);
}

TEST(HookConfig, OwnOptionsHaveDocumentedDefaults) {
  const HookConfig c = HookConfig::from_json(json::object());
  EXPECT_FALSE(c.sync);
  EXPECT_EQ(c.on_error, OnError::kRaise);
  EXPECT_EQ(c.writer_threads, 1);
  EXPECT_EQ(c.writer_nice, 10);
  EXPECT_EQ(c.max_inflight_bytes, 0);
  EXPECT_EQ(c.recovery, RecoveryMode::kRepair);
  EXPECT_FALSE(c.ledger_path.has_value());
  EXPECT_EQ(c, HookConfig{});
}

TEST(HookConfig, DefaultTemplateFollowsByEpoch) {
  EXPECT_EQ(validate_json(R"({"by_epoch": true})").filename_tmpl, "epoch_{}.pth");
  EXPECT_EQ(validate_json(R"({"by_epoch": false})").filename_tmpl, "iter_{}.pth");
  const ValidatedConfig v = validate_json(R"({"by_epoch": false, "filename_tmpl": "test_{}.pth"})");
  EXPECT_EQ(v.filename_tmpl, "test_{}.pth");
  EXPECT_EQ(v.filename(11), "test_11.pth");
}

TEST(HookConfig, FromJsonReadsEveryOption) {
  const HookConfig c = HookConfig::from_json(json::parse(R"({
    "type": "CheckpointHook", "interval": 2, "by_epoch": false, "save_optimizer": false,
    "save_param_scheduler": false, "out_dir": "ckpts", "max_keep_ckpts": 3, "save_last": false,
    "save_best": ["acc", "loss"], "rule": ["greater", null], "greater_keys": {"__tuple__": ["acc"]},
    "less_keys": "loss", "file_client_args": null, "filename_tmpl": "ckpt_{:03d}.pth",
    "backend_args": {"backend": "local"}, "published_keys": ["meta", "state_dict"],
    "save_begin": 5, "sync": true, "on_error": "warn", "writer_threads": 4,
    "writer_nice": 0, "max_inflight_bytes": 1048576, "recovery": "strict", "ledger_path": "/tmp/l.sqlite"})"));
  EXPECT_EQ(c.interval, 2);
  EXPECT_FALSE(c.by_epoch);
  EXPECT_FALSE(c.save_optimizer);
  EXPECT_FALSE(c.save_param_scheduler);
  EXPECT_EQ(c.out_dir, "ckpts");
  EXPECT_EQ(c.max_keep_ckpts, 3);
  EXPECT_FALSE(c.save_last);
  EXPECT_EQ(c.save_best, json({"acc", "loss"}));
  EXPECT_EQ(c.rule, json::parse(R"(["greater", null])"));
  EXPECT_EQ(c.greater_keys, python_tuple({"acc"}));
  EXPECT_EQ(c.less_keys, json("loss"));
  EXPECT_EQ(c.filename_tmpl, "ckpt_{:03d}.pth");
  EXPECT_EQ(c.backend_args, json({{"backend", "local"}}));
  EXPECT_EQ(c.published_keys, json({"meta", "state_dict"}));
  EXPECT_EQ(c.save_begin, 5);
  EXPECT_TRUE(c.sync);
  EXPECT_EQ(c.on_error, OnError::kWarn);
  EXPECT_EQ(c.writer_threads, 4);
  EXPECT_EQ(c.writer_nice, 0);
  EXPECT_EQ(c.max_inflight_bytes, 1048576);
  EXPECT_EQ(c.recovery, RecoveryMode::kStrict);
  EXPECT_EQ(c.ledger_path, "/tmp/l.sqlite");
  EXPECT_NO_THROW(validate(c));
}

TEST(HookConfig, ToJsonRoundTripsThroughFromJson) {
  HookConfig c;
  c.interval = 3;
  c.by_epoch = false;
  c.out_dir = "out";
  c.save_best = {"acc", "mIoU"};
  c.rule = "greater";
  c.greater_keys = python_tuple({"acc", "mIoU"});
  c.less_keys = "loss_cls";
  c.file_client_args = {{"backend", "disk"}};
  c.filename_tmpl = "ep_{:04d}.pth";
  c.published_keys = python_tuple({"state_dict"});
  c.save_begin = 2;
  c.sync = true;
  c.on_error = OnError::kWarn;
  c.writer_threads = 2;
  c.writer_nice = 3;
  c.max_inflight_bytes = 7;
  c.recovery = RecoveryMode::kStrict;
  c.ledger_path = "ledger.sqlite";
  const json j = c.to_json();
  EXPECT_EQ(j["type"], "CheckpointHook");
  EXPECT_EQ(j["greater_keys"], json::parse(R"({"__tuple__": ["acc", "mIoU"]})"));
  EXPECT_EQ(j["on_error"], "warn");
  EXPECT_EQ(j["recovery"], "strict");
  EXPECT_EQ(HookConfig::from_json(j), c);
  EXPECT_EQ(HookConfig::from_json(json::parse(j.dump())), c);  // through text, as in the ledger

  const json defaults = HookConfig{}.to_json();
  EXPECT_TRUE(defaults["out_dir"].is_null());
  EXPECT_TRUE(defaults["filename_tmpl"].is_null());
  EXPECT_TRUE(defaults["ledger_path"].is_null());
  EXPECT_EQ(HookConfig::from_json(defaults), HookConfig{});
  EXPECT_NE(HookConfig::from_json(j), HookConfig{});
}

TEST(HookConfig, TypeMustBeCheckpointHook) {
  EXPECT_NO_THROW(HookConfig::from_json(json::parse(R"({"type": "CheckpointHook"})")));
  const std::string msg = config_error(R"({"type": "LoggerHook", "interval": 1})");
  EXPECT_THAT(msg, AllOf(HasSubstr("CheckpointHook config: "), HasSubstr("\"type\""),
                         HasSubstr("\"LoggerHook\"")));
}

TEST(HookConfig, UnknownOptionIsRejectedByName) {
  const std::string msg = config_error(R"({"interval": 1, "foo": 1})");
  EXPECT_THAT(msg, AllOf(HasSubstr("unknown option \"foo\""), HasSubstr("int 1"),
                         HasSubstr("save_best")));  // lists the known options
  EXPECT_THAT(config_error(R"({"max_keep_ckpt": 3})"),
              HasSubstr("unknown option \"max_keep_ckpt\""));
}

TEST(HookConfig, NonObjectConfigIsRejected) {
  EXPECT_THAT(config_error(R"([1, 2])"), AllOf(HasSubstr("JSON object"), HasSubstr("list [1,2]")));
  EXPECT_THAT(config_error(R"("CheckpointHook")"), HasSubstr("str \"CheckpointHook\""));
}

TEST(HookConfig, StringIntervalIsRejected) {
  EXPECT_THAT(config_error(R"({"interval": "2"})"),
              HasSubstr("\"interval\" must be an int, got str \"2\""));
}

TEST(HookConfig, BoolIsNotAnInt) {
  EXPECT_THAT(config_error(R"({"interval": true})"),
              HasSubstr("\"interval\" must be an int, got bool true"));
  EXPECT_THAT(config_error(R"({"max_keep_ckpts": false})"),
              HasSubstr("\"max_keep_ckpts\" must be an int, got bool false"));
  EXPECT_THAT(config_error(R"({"save_begin": true})"),
              HasSubstr("\"save_begin\" must be an int, got bool true"));
}

TEST(HookConfig, FloatAndNullAreNotInts) {
  EXPECT_THAT(config_error(R"({"interval": 2.0})"),
              HasSubstr("\"interval\" must be an int, got float 2.0"));
  EXPECT_THAT(config_error(R"({"interval": {"__float__": "inf"}})"),
              HasSubstr("\"interval\" must be an int, got float inf"));
  EXPECT_THAT(config_error(R"({"save_begin": null})"),
              HasSubstr("\"save_begin\" must be an int, got None"));
  EXPECT_THAT(config_error(R"({"writer_threads": 18446744073709551615})"),
              AllOf(HasSubstr("\"writer_threads\""), HasSubstr("18446744073709551615")));
}

TEST(HookConfig, IntIsNotABool) {
  EXPECT_THAT(config_error(R"({"by_epoch": 1})"),
              HasSubstr("\"by_epoch\" must be a bool, got int 1"));
  EXPECT_THAT(config_error(R"({"save_last": "true"})"),
              HasSubstr("\"save_last\" must be a bool, got str \"true\""));
  EXPECT_THAT(config_error(R"({"sync": null})"), HasSubstr("\"sync\" must be a bool, got None"));
}

TEST(HookConfig, StringOptionsRejectOtherTypes) {
  EXPECT_THAT(config_error(R"({"out_dir": 5})"),
              HasSubstr("\"out_dir\" must be a str or None, got int 5"));
  EXPECT_THAT(config_error(R"({"filename_tmpl": ["a"]})"),
              HasSubstr("\"filename_tmpl\" must be a str or None, got list [\"a\"]"));
  EXPECT_THAT(config_error(R"({"ledger_path": false})"),
              HasSubstr("\"ledger_path\" must be a str or None, got bool false"));
}

TEST(HookConfig, EnumOptionsRejectUnknownValues) {
  EXPECT_THAT(config_error(R"({"on_error": "ignore"})"),
              AllOf(HasSubstr("\"on_error\""), HasSubstr("\"raise\" or \"warn\""),
                    HasSubstr("str \"ignore\"")));
  EXPECT_THAT(config_error(R"({"recovery": "auto"})"),
              AllOf(HasSubstr("\"recovery\""), HasSubstr("\"repair\" or \"strict\""),
                    HasSubstr("str \"auto\"")));
}

// ---- save_best ------------------------------------------------------------------------------

TEST(HookConfig, SaveBestStrIsOneIndicator) {
  const ValidatedConfig v = validate(with_save_best("acc"));
  EXPECT_TRUE(v.save_best_enabled);
  EXPECT_TRUE(v.single_indicator());
  EXPECT_THAT(v.key_indicators(), ElementsAre("acc"));
  EXPECT_EQ(v.best[0], (BestIndicator{"acc", Rule::kGreater, false}));
}

TEST(HookConfig, SaveBestListOfOneUsesSingleKeyNaming) {
  const ValidatedConfig v = validate(with_save_best({"acc"}));
  EXPECT_TRUE(v.single_indicator());
  EXPECT_THAT(v.key_indicators(), ElementsAre("acc"));
}

TEST(HookConfig, SaveBestSeveralKeysUseMultiKeyNaming) {
  const ValidatedConfig v = validate(with_save_best({"acc", "loss"}));
  EXPECT_FALSE(v.single_indicator());
  EXPECT_THAT(v.key_indicators(), ElementsAre("acc", "loss"));
  EXPECT_EQ(v.best[0].rule, Rule::kGreater);
  EXPECT_EQ(v.best[1].rule, Rule::kLess);
}

TEST(HookConfig, SaveBestDictIsRejected) {
  const std::string msg = validate_error(with_save_best({{"a", 1}}));
  EXPECT_THAT(msg, HasSubstr("CheckpointHook config: \"save_best\" must be a str, a list of str or "
                             "None, got dict {\"a\":1}"));
}

TEST(HookConfig, SaveBestTupleIsRejected) {
  EXPECT_THAT(
      validate_error(with_save_best(python_tuple({"acc"}))),
      HasSubstr("\"save_best\" must be a str, a list of str or None, got tuple (\"acc\",)"));
  EXPECT_THAT(config_error(R"({"save_best": {"__tuple__": ["acc", "mIoU"]}})"),
              HasSubstr("got tuple (\"acc\",\"mIoU\")"));
}

TEST(HookConfig, SaveBestIntIsRejected) {
  EXPECT_THAT(config_error(R"({"save_best": 1})"),
              HasSubstr("\"save_best\" must be a str, a list of str or None, got int 1"));
}

TEST(HookConfig, SaveBestListWithNonStrIsRejected) {
  EXPECT_THAT(config_error(R"({"save_best": ["acc", 3]})"),
              AllOf(HasSubstr("\"save_best\" must be a str, a list of str or None"),
                    HasSubstr("list [\"acc\",3]"), HasSubstr("int 3")));
}

TEST(HookConfig, SaveBestAutoWithOtherKeysIsRejected) {
  EXPECT_THAT(validate_error(with_save_best({"auto", "acc"})),
              AllOf(HasSubstr("\"save_best\""), HasSubstr("only one \"auto\""),
                    HasSubstr("[\"auto\",\"acc\"]")));
  EXPECT_THAT(validate_error(with_save_best({"auto", "auto"})), HasSubstr("only one \"auto\""));
}

TEST(HookConfig, SaveBestDuplicatesAreRejected) {
  EXPECT_THAT(validate_error(with_save_best({"acc", "mIoU", "acc"})),
              AllOf(HasSubstr("\"save_best\": duplicate key \"acc\""),
                    HasSubstr("[\"acc\",\"mIoU\",\"acc\"]")));
}

TEST(HookConfig, SaveBestEmptyListIsEnabledButHasNoIndicator) {
  const ValidatedConfig v = validate(with_save_best(json::array()));
  EXPECT_TRUE(v.save_best_enabled);
  EXPECT_TRUE(v.best.empty());
  EXPECT_FALSE(v.single_indicator());  // MMEngine creates best_ckpt_path_dict = {}
}

TEST(HookConfig, SaveBestAutoStaysUnresolved) {
  const ValidatedConfig v = validate(with_save_best("auto"));
  EXPECT_TRUE(v.has_auto());
  EXPECT_TRUE(v.single_indicator());
  EXPECT_EQ(v.best[0], (BestIndicator{"auto", Rule::kUnresolved, false}));
  EXPECT_STREQ(rule_name(v.best[0].rule), "none");
}

// ---- rule -----------------------------------------------------------------------------------

TEST(HookConfig, RuleIntIsRejected) {
  HookConfig c = with_save_best("acc");
  c.rule = 1;
  EXPECT_THAT(validate_error(c),
              HasSubstr("\"rule\" must be a str, a list of str or None, got int 1"));
}

TEST(HookConfig, RuleTupleIsRejected) {
  HookConfig c = with_save_best("acc");
  c.rule = python_tuple({"greater"});
  EXPECT_THAT(validate_error(c), HasSubstr("\"rule\" must be a str, a list of str or None, got "
                                           "tuple (\"greater\",)"));
}

TEST(HookConfig, RuleListLengthMustBeOneOrLenSaveBest) {
  HookConfig c = with_save_best({"acc"});
  c.rule = {"greater", "less"};
  EXPECT_THAT(validate_error(c),
              AllOf(HasSubstr("number of \"rule\" must be 1 or the same as number of "
                              "\"save_best\" (1), but got 2"),
                    HasSubstr("[\"greater\",\"less\"]")));
  c = with_save_best({"acc", "mIoU", "aAcc"});
  c.rule = {"greater", "less"};
  EXPECT_THAT(validate_error(c), HasSubstr("(3), but got 2"));
  c.rule = json::array();
  EXPECT_THAT(validate_error(c), HasSubstr("(3), but got 0"));
}

TEST(HookConfig, RuleListWithoutSaveBestIsRejected) {
  HookConfig c;
  c.rule = {"greater"};
  EXPECT_THAT(validate_error(c),
              AllOf(HasSubstr("\"rule\" is set to list [\"greater\"] but \"save_best\" is None"),
                    HasSubstr("set \"save_best\" or remove \"rule\"")));
}

TEST(HookConfig, RuleStrWithoutSaveBestIsRejected) {
  // MMEngine ignores it (so rule='max' passes); ckptledger rejects it.
  EXPECT_THAT(config_error(R"({"rule": "max"})"),
              HasSubstr("\"rule\" is set to str \"max\" but \"save_best\" is None"));
  EXPECT_THAT(config_error(R"({"rule": "greater"})"),
              HasSubstr("\"rule\" is set to str \"greater\" but \"save_best\" is None"));
}

TEST(HookConfig, RuleValueMustBeGreaterLessOrNone) {
  // The reference trace init_rule_invalid_str: save_best 'acc', rule 'max'.
  EXPECT_THAT(config_error(R"({"save_best": "acc", "rule": "max"})"),
              AllOf(HasSubstr("\"rule\" must be greater, less or None, but got str \"max\""),
                    HasSubstr("save_best key \"acc\"")));
  EXPECT_THAT(config_error(R"({"save_best": "acc", "rule": "Greater"})"),
              HasSubstr("but got str \"Greater\""));
}

TEST(HookConfig, RuleValueIsCheckedForAuto) {
  EXPECT_THAT(config_error(R"({"save_best": "auto", "rule": "max"})"),
              AllOf(HasSubstr("but got str \"max\""), HasSubstr("save_best key \"auto\"")));
}

TEST(HookConfig, RuleListElementOfWrongTypeIsRejected) {
  EXPECT_THAT(config_error(R"({"save_best": ["acc"], "rule": [1]})"),
              HasSubstr("\"rule\" must be greater, less or None, but got int 1"));
}

TEST(HookConfig, RuleValueIsCheckedEvenWithEmptySaveBest) {
  EXPECT_THAT(config_error(R"({"save_best": [], "rule": "max"})"),
              HasSubstr("\"rule\" must be greater, less or None, but got str \"max\""));
  EXPECT_NO_THROW(validate_json(R"({"save_best": [], "rule": []})"));  // 0 == len(save_best)
  EXPECT_NO_THROW(validate_json(R"({"save_best": [], "rule": "less"})"));
}

TEST(HookConfig, RuleValueIsCheckedBeforeInferenceOfTheSameKey) {
  // Pair by pair as in _init_rule: the bad rule of FID is reported, not FID's inference.
  EXPECT_THAT(config_error(R"({"save_best": ["acc", "FID"], "rule": [null, "max"]})"),
              AllOf(HasSubstr("but got str \"max\""), HasSubstr("save_best key \"FID\"")));
  // ...but an earlier key's inference comes before a later key's rule.
  EXPECT_THAT(config_error(R"({"save_best": ["FID", "acc"], "rule": [null, "max"]})"),
              HasSubstr("Cannot infer the rule for key FID"));
}

TEST(HookConfig, OneRuleAppliesToEveryKey) {
  const ValidatedConfig v = validate_json(R"({"save_best": ["acc", "mAcc"], "rule": "greater"})");
  EXPECT_EQ(v.best[0], (BestIndicator{"acc", Rule::kGreater, true}));
  EXPECT_EQ(v.best[1], (BestIndicator{"mAcc", Rule::kGreater, true}));
  const ValidatedConfig l = validate_json(R"({"save_best": ["acc", "FID"], "rule": ["less"]})");
  EXPECT_EQ(l.best[1], (BestIndicator{"FID", Rule::kLess, true}));
}

TEST(HookConfig, RuleListPairsWithKeys) {
  const ValidatedConfig v =
      validate_json(R"({"save_best": ["FID", "IS"], "rule": ["less", "greater"]})");
  EXPECT_EQ(v.best[0], (BestIndicator{"FID", Rule::kLess, true}));
  EXPECT_EQ(v.best[1], (BestIndicator{"IS", Rule::kGreater, true}));
}

TEST(HookConfig, NullRuleInListMeansInfer) {
  const ValidatedConfig v =
      validate_json(R"({"save_best": ["val_loss", "FID"], "rule": [null, "less"]})");
  EXPECT_EQ(v.best[0], (BestIndicator{"val_loss", Rule::kLess, false}));
  EXPECT_EQ(v.best[1], (BestIndicator{"FID", Rule::kLess, true}));
}

TEST(HookConfig, ExplicitRuleOverridesInference) {
  EXPECT_EQ(validate_json(R"({"save_best": "acc", "rule": "less"})").best[0].rule, Rule::kLess);
  EXPECT_EQ(validate_json(R"({"save_best": "loss", "rule": "greater"})").best[0].rule,
            Rule::kGreater);
  EXPECT_EQ(validate_json(R"({"save_best": "psnr", "rule": "greater"})").best[0].rule,
            Rule::kGreater);
}

TEST(HookConfig, UninferableKeyIsRejectedAtConstruction) {
  for (const char* key : {"FID", "recall", "psnr", "f1"}) {
    const std::string msg = validate_error(with_save_best(key));
    EXPECT_THAT(msg, AllOf(HasSubstr("\"save_best\" key \"" + std::string(key) + "\""),
                           HasSubstr("Cannot infer the rule for key " + std::string(key) +
                                     ", thus a specific rule must be specified."),
                           HasSubstr("Set \"rule\" to \"greater\" or \"less\"")));
  }
}

TEST(HookConfig, AmbiguousInferenceIsWarned) {
  const ValidatedConfig v = validate(with_save_best("loss_acc"));
  EXPECT_EQ(v.best[0].rule, Rule::kGreater);
  ASSERT_EQ(v.warnings.size(), 1u);
  EXPECT_THAT(v.warnings[0], AllOf(HasSubstr("\"loss_acc\""), HasSubstr("\"acc\""),
                                   HasSubstr("\"loss\""), HasSubstr("\"rule\"")));
  // An explicit rule silences it.
  EXPECT_TRUE(validate_json(R"({"save_best": "loss_acc", "rule": "less"})").warnings.empty());
}

// ---- greater_keys / less_keys ---------------------------------------------------------------

TEST(HookConfig, GreaterKeysStrWrapsAndReplacesDefaults) {
  HookConfig c = with_save_best("acc");
  c.greater_keys = "acc";
  EXPECT_EQ(validate(c).greater_keys, Keys({"acc"}));
  c = with_save_best("mIoU");  // a default greater key, no longer known
  c.greater_keys = "acc";
  EXPECT_THAT(validate_error(c), HasSubstr("Cannot infer the rule for key mIoU"));
}

TEST(HookConfig, GreaterAndLessKeysListsAndTuplesAreKept) {
  const ValidatedConfig v = validate_json(
      R"({"greater_keys": ["acc", "top"], "less_keys": {"__tuple__": ["loss_cls", "err"]}})");
  EXPECT_EQ(v.greater_keys, Keys({"acc", "top"}));
  EXPECT_EQ(v.less_keys, Keys({"loss_cls", "err"}));
  EXPECT_EQ(validate_json(R"({"less_keys": "loss_cls"})").less_keys, Keys({"loss_cls"}));
}

TEST(HookConfig, GreaterKeysNonStrElementIsRejected) {
  EXPECT_THAT(config_error(R"({"greater_keys": ["acc", 1]})"),
              AllOf(HasSubstr("\"greater_keys\" must be a str, a list or tuple of str, or None"),
                    HasSubstr("list [\"acc\",1]"), HasSubstr("element 1 is int 1")));
  EXPECT_THAT(config_error(R"({"greater_keys": {"__tuple__": [null]}})"),
              AllOf(HasSubstr("\"greater_keys\""), HasSubstr("element 0 is None")));
}

TEST(HookConfig, LessKeysNonStrIsRejected) {
  EXPECT_THAT(config_error(R"({"less_keys": 5})"),
              HasSubstr("\"less_keys\" must be a str, a list or tuple of str, or None, got int 5"));
  EXPECT_THAT(config_error(R"({"less_keys": {"loss": 1}})"),
              HasSubstr("\"less_keys\" must be a str, a list or tuple of str, or None, got dict "
                        "{\"loss\":1}"));
}

TEST(HookConfig, GreaterKeysAreCheckedWithoutSaveBest) {
  EXPECT_THAT(config_error(R"({"greater_keys": [1]})"), HasSubstr("\"greater_keys\""));
}

TEST(HookConfig, EmptyGreaterKeysMeansNoneInferGreater) {
  HookConfig c = with_save_best("acc");
  c.greater_keys = json::array();
  EXPECT_THAT(validate_error(c), HasSubstr("Cannot infer the rule for key acc"));
}

// ---- published_keys -------------------------------------------------------------------------

TEST(HookConfig, PublishedKeysStrBecomesList) {
  const ValidatedConfig v = validate_json(R"({"published_keys": "state_dict"})");
  ASSERT_TRUE(v.published_keys.has_value());
  EXPECT_EQ(*v.published_keys, Keys({"state_dict"}));
}

TEST(HookConfig, PublishedKeysListTupleAndEmptyAreAccepted) {
  EXPECT_EQ(*validate_json(R"({"published_keys": ["meta", "state_dict"]})").published_keys,
            Keys({"meta", "state_dict"}));
  EXPECT_EQ(*validate_json(R"({"published_keys": {"__tuple__": ["meta"]}})").published_keys,
            Keys({"meta"}));
  const ValidatedConfig empty = validate_json(R"({"published_keys": []})");
  ASSERT_TRUE(empty.published_keys.has_value());  // publish with every key removed
  EXPECT_TRUE(empty.published_keys->empty());
}

TEST(HookConfig, PublishedKeysBadTypeIsRejected) {
  EXPECT_THAT(config_error(R"({"published_keys": 1})"),
              HasSubstr("\"published_keys\" must be a str, a list or tuple of str, or None, got "
                        "int 1"));
  EXPECT_THAT(config_error(R"({"published_keys": {"meta": true}})"),
              HasSubstr("got dict {\"meta\":true}"));
  EXPECT_THAT(config_error(R"({"published_keys": ["meta", 2]})"),
              HasSubstr("\"published_keys\" must be a str, a list or tuple of str, or None, got "
                        "list [\"meta\",2]"));
}

TEST(HookConfig, PublishedKeysDuplicatesAreRejected) {
  EXPECT_THAT(config_error(R"({"published_keys": ["meta", "meta"]})"),
              AllOf(HasSubstr("\"published_keys\": duplicate key \"meta\""),
                    HasSubstr("[\"meta\",\"meta\"]")));
  EXPECT_THAT(config_error(R"({"published_keys": {"__tuple__": ["a", "a"]}})"),
              HasSubstr("\"published_keys\": duplicate key \"a\" in tuple (\"a\",\"a\")"));
}

// ---- save_begin -----------------------------------------------------------------------------

TEST(HookConfig, NegativeSaveBeginShowsTheValue) {
  // The reference trace init_save_begin_negative: MMEngine prints a literal {save_begin}.
  const std::string msg = config_error(R"({"save_begin": -1})");
  EXPECT_THAT(msg, HasSubstr("\"save_begin\" should not be less than 0, but got -1"));
  EXPECT_THAT(msg, Not(HasSubstr("{save_begin}")));
  EXPECT_THAT(config_error(R"({"save_begin": -42})"), HasSubstr("but got -42"));
}

TEST(HookConfig, ZeroAndPositiveSaveBeginAreAccepted) {
  EXPECT_EQ(validate_json(R"({"save_begin": 0})").options.save_begin, 0);
  EXPECT_EQ(validate_json(R"({"save_begin": 5, "interval": 2})").options.save_begin, 5);
}

// ---- storage backends -----------------------------------------------------------------------

TEST(HookConfig, FileClientArgsAloneIsAcceptedWithDeprecationWarning) {
  const ValidatedConfig v = validate_json(R"({"file_client_args": {"backend": "disk"}})");
  EXPECT_THAT(v.warnings, ElementsAre("\"file_client_args\" will be deprecated in future. Please "
                                      "use \"backend_args\" instead"));
}

TEST(HookConfig, FileClientArgsWithBackendArgsIsRejected) {
  EXPECT_THAT(
      config_error(R"({"file_client_args": {"backend": "disk"}, "backend_args": {}})"),
      AllOf(HasSubstr("\"file_client_args\" and \"backend_args\" cannot be set at the same time"),
            HasSubstr("file_client_args=dict {\"backend\":\"disk\"}"),
            HasSubstr("backend_args=dict {}")));
}

TEST(HookConfig, RemoteBackendIsRejectedListingSupportedOnes) {
  for (const char* option : {"backend_args", "file_client_args"}) {
    const std::string msg =
        config_error(std::string("{\"") + option + "\": {\"backend\": \"petrel\"}}");
    EXPECT_THAT(msg,
                AllOf(HasSubstr(std::string("\"") + option + "\""), HasSubstr("backend \"petrel\""),
                      HasSubstr("supported backends: \"local\", \"disk\"")));
  }
  EXPECT_THAT(config_error(R"({"backend_args": {"backend": "petrel", "path_mapping": {}}})"),
              HasSubstr("backend \"petrel\""));  // the backend, not the petrel-only key
}

TEST(HookConfig, LocalBackendsAreAccepted) {
  EXPECT_NO_THROW(validate_json(R"({"backend_args": {"backend": "local"}})"));
  EXPECT_NO_THROW(validate_json(R"({"backend_args": {"backend": "disk"}})"));
  EXPECT_NO_THROW(validate_json(R"({"backend_args": {}})"));
  EXPECT_NO_THROW(validate_json(R"({"file_client_args": {"backend": "local"}})"));
  EXPECT_TRUE(validate_json(R"({"backend_args": {"backend": "local"}})").warnings.empty());
}

TEST(HookConfig, BackendArgsMustBeALocalDict) {
  EXPECT_THAT(config_error(R"({"backend_args": "local"})"),
              HasSubstr("\"backend_args\" must be a dict or None, got str \"local\""));
  EXPECT_THAT(
      config_error(R"({"backend_args": {"backend": 3}})"),
      AllOf(HasSubstr("\"backend_args\" selects backend int 3"), HasSubstr("supported backends")));
  EXPECT_THAT(config_error(R"({"backend_args": {"backend": "local", "root": "/x"}})"),
              AllOf(HasSubstr("\"backend_args\" has key \"root\""), HasSubstr("str \"/x\"")));
}

// ---- filename_tmpl --------------------------------------------------------------------------

TEST(HookConfig, TemplateWithoutFieldIsRejected) {
  const std::string msg = config_error(R"({"filename_tmpl": "ckpt.pth"})");
  EXPECT_THAT(msg, AllOf(HasSubstr("\"filename_tmpl\" \"ckpt.pth\""),
                         HasSubstr("exactly one replacement field"), HasSubstr("found 0")));
  EXPECT_THAT(config_error(R"({"filename_tmpl": "ckpt_{{}}.pth"})"), HasSubstr("found 0"));
}

TEST(HookConfig, TemplateWithTwoFieldsIsRejected) {
  EXPECT_THAT(config_error(R"({"filename_tmpl": "{}{}"})"),
              AllOf(HasSubstr("\"filename_tmpl\" \"{}{}\""), HasSubstr("found 2")));
  EXPECT_THAT(config_error(R"({"filename_tmpl": "{0}-{0}.pth"})"),
              AllOf(HasSubstr("\"{0}-{0}.pth\""), HasSubstr("found 2")));
}

TEST(HookConfig, TemplateWithNamedFieldIsRejected) {
  EXPECT_THAT(
      config_error(R"({"filename_tmpl": "ep_{epoch}.pth"})"),
      AllOf(HasSubstr("\"filename_tmpl\" \"ep_{epoch}.pth\""), HasSubstr("named field {epoch}")));
  EXPECT_THAT(config_error(R"({"filename_tmpl": "ep_{1}.pth"})"),
              HasSubstr("replacement index 1 is out of range"));
  EXPECT_THAT(config_error(R"({"filename_tmpl": "ep_{0.real}.pth"})"),
              HasSubstr("attribute or index access \"0.real\""));
}

TEST(HookConfig, TemplateWithBadSpecIsRejected) {
  EXPECT_THAT(
      config_error(R"({"filename_tmpl": "ep_{:s}.pth"})"),
      AllOf(HasSubstr("\"filename_tmpl\" \"ep_{:s}.pth\""), HasSubstr("unknown format code 's'")));
  EXPECT_THAT(config_error(R"({"filename_tmpl": "ep_{:.2}.pth"})"), HasSubstr("precision"));
  EXPECT_THAT(config_error(R"({"filename_tmpl": "ep_{:,x}.pth"})"),
              HasSubstr("cannot specify ',' with 'x'"));
  EXPECT_THAT(config_error(R"({"filename_tmpl": "ep_{:,_}.pth"})"),
              HasSubstr("cannot specify both ',' and '_'"));
  EXPECT_THAT(config_error(R"({"filename_tmpl": "ep_{:_n}.pth"})"),
              HasSubstr("cannot specify '_' with 'n'"));
  EXPECT_THAT(config_error(R"({"filename_tmpl": "ep_{:z}.pth"})"), HasSubstr("(z)"));
  EXPECT_THAT(config_error(R"({"filename_tmpl": "ep_{:03dd}.pth"})"),
              HasSubstr("invalid format spec \"03dd\""));
}

TEST(HookConfig, TemplateWithUnbalancedBracesIsRejected) {
  EXPECT_THAT(config_error(R"({"filename_tmpl": "ep_{.pth"})"),
              AllOf(HasSubstr("\"ep_{.pth\""), HasSubstr("unbalanced '{'")));
  EXPECT_THAT(config_error(R"({"filename_tmpl": "ep_}{}.pth"})"),
              AllOf(HasSubstr("\"ep_}{}.pth\""), HasSubstr("single '}'")));
  EXPECT_THAT(config_error(R"({"filename_tmpl": "{"})"), HasSubstr("unbalanced '{'"));
}

TEST(HookConfig, TemplateWithFloatOrCharTypeIsRejected) {
  for (const char* t : {"{:f}", "{:.2f}", "{:e}", "{:g}", "{:%}"}) {
    EXPECT_THAT(error_of([&] { check_filename_tmpl(t); }), HasSubstr("\"filename_tmpl\"")) << t;
  }
  EXPECT_THAT(error_of([&] { check_filename_tmpl("{:f}"); }),
              HasSubstr("type 'f' turns the step into a float"));
  EXPECT_THAT(error_of([&] { check_filename_tmpl("{:c}"); }), HasSubstr("type 'c'"));
}

TEST(HookConfig, TemplateConversionsAndNestedFieldsAreRejected) {
  EXPECT_THAT(error_of([] { check_filename_tmpl("ep_{!r}.pth"); }),
              HasSubstr("conversion \"!r\" is not supported"));
  EXPECT_THAT(error_of([] { check_filename_tmpl("ep_{:{}}.pth"); }),
              HasSubstr("nested replacement fields"));
  EXPECT_THAT(error_of([] { check_filename_tmpl("ep_{:0256}.pth"); }), HasSubstr("width"));
}

TEST(HookConfig, CustomTemplatesAreAccepted) {
  for (const char* t : {"test_{}.pth", "ckpt_{:03d}.pth", "sub/ep_{}.pth", "{0}.pth", "{:_>6}",
                        "run{{1}}_{}.pth"}) {
    HookConfig c;
    c.filename_tmpl = t;
    EXPECT_NO_THROW(validate(c)) << t;
  }
}

// ---- own options ----------------------------------------------------------------------------

TEST(HookConfig, WriterThreadsBelowOneIsRejected) {
  EXPECT_THAT(config_error(R"({"writer_threads": 0})"),
              HasSubstr("\"writer_threads\" must be at least 1, got 0"));
  EXPECT_THAT(config_error(R"({"writer_threads": -3})"), HasSubstr("got -3"));
  EXPECT_THAT(config_error(R"({"writer_nice": 20})"),
              HasSubstr("\"writer_nice\" must be between 0 and 19 (a nice increment), got 20"));
  EXPECT_THAT(config_error(R"({"writer_nice": -1})"), HasSubstr("got -1"));
  EXPECT_THAT(config_error(R"({"writer_nice": "high"})"), HasSubstr("\"writer_nice\""));
}

TEST(HookConfig, NegativeMaxInflightBytesIsRejected) {
  EXPECT_THAT(config_error(R"({"max_inflight_bytes": -1})"),
              HasSubstr("\"max_inflight_bytes\" must be >= 0 (0: one checkpoint in flight), got "
                        "-1"));
}

TEST(HookConfig, EmptyLedgerPathIsRejected) {
  EXPECT_THAT(config_error(R"({"ledger_path": ""})"), HasSubstr("\"ledger_path\""));
}

// ---- order and MMEngine's own tests ---------------------------------------------------------

TEST(HookConfig, FirstErrorInConstructorOrderWins) {
  // Step 8 (file_client_args + backend_args) comes before step 10 (save_best).
  EXPECT_THAT(config_error(R"({"save_best": {"a": 1}, "file_client_args": {},
                               "backend_args": {}})"),
              HasSubstr("cannot be set at the same time"));
  // save_best (10) before rule (11) before greater_keys (12) before published_keys (14).
  EXPECT_THAT(config_error(R"({"save_best": 1, "rule": 1, "greater_keys": [1]})"),
              HasSubstr("\"save_best\""));
  EXPECT_THAT(config_error(R"({"rule": 1, "greater_keys": [1]})"), HasSubstr("\"rule\""));
  EXPECT_THAT(config_error(R"({"greater_keys": [1], "published_keys": 1})"),
              HasSubstr("\"greater_keys\""));
  // published_keys (14) before save_begin (16) before what MMEngine finds later.
  EXPECT_THAT(config_error(R"({"published_keys": 1, "save_begin": -1})"),
              HasSubstr("\"published_keys\""));
  EXPECT_THAT(config_error(R"({"save_begin": -1, "filename_tmpl": "x"})"),
              HasSubstr("\"save_begin\""));
}

TEST(HookConfig, MMEngineTestInitCases) {
  // file_client_args together with backend_args.
  EXPECT_THAT(config_error(R"({"file_client_args": {"backend": "disk"},
                               "backend_args": {"backend": "local"}})"),
              HasSubstr("cannot be set at the same time"));
  // save_best 'acc' and ['acc'] accepted, a dict rejected, 'auto' must be alone.
  EXPECT_NO_THROW(validate_json(R"({"interval": 1, "save_best": "acc"})"));
  EXPECT_NO_THROW(validate_json(R"({"interval": 1, "save_best": ["acc"]})"));
  EXPECT_THAT(config_error(R"({"interval": 1, "save_best": {"acc": ""}})"),
              HasSubstr("\"save_best\""));
  EXPECT_THAT(config_error(R"({"interval": 1, "save_best": ["auto", "acc"]})"),
              HasSubstr("only one \"auto\""));
  // Rules.
  EXPECT_NO_THROW(validate_json(R"({"interval": 1, "save_best": ["acc", "mAcc"],
                                    "rule": "greater"})"));
  EXPECT_THAT(config_error(R"({"interval": 1, "save_best": "acc", "rule": 1})"),
              HasSubstr("\"rule\""));
  EXPECT_THAT(config_error(R"({"interval": 1, "save_best": "acc", "rule": ["greater", "less"]})"),
              HasSubstr("number of \"rule\""));
  // greater_keys / less_keys: a str is wrapped, a list stays a list.
  EXPECT_EQ(
      validate_json(R"({"interval": 1, "save_best": "acc", "greater_keys": "acc"})").greater_keys,
      Keys({"acc"}));
  EXPECT_EQ(
      validate_json(R"({"interval": 1, "save_best": "acc", "greater_keys": ["acc"]})").greater_keys,
      Keys({"acc"}));
  EXPECT_EQ(
      validate_json(R"({"interval": 1, "save_best": "acc", "less_keys": "loss_cls"})").less_keys,
      Keys({"loss_cls"}));
  EXPECT_EQ(
      validate_json(R"({"interval": 1, "save_best": "acc", "less_keys": ["loss_cls"]})").less_keys,
      Keys({"loss_cls"}));
  // by_epoch=False with two keys: both inferred greater.
  const ValidatedConfig v =
      validate_json(R"({"interval": 1, "by_epoch": false, "save_best": ["acc", "mIoU"]})");
  EXPECT_THAT(v.key_indicators(), ElementsAre("acc", "mIoU"));
  EXPECT_EQ(v.best[0].rule, Rule::kGreater);
  EXPECT_EQ(v.best[1].rule, Rule::kGreater);
  EXPECT_EQ(v.filename_tmpl, "iter_{}.pth");
}

TEST(HookConfig, ReferenceScenarioHooksAreAccepted) {
  // The `hook` objects of tests/data/examples/*.json that MMEngine accepted.
  for (const char* text : {
           R"({"interval": 2, "save_best": "auto"})",
           R"({"interval": 2, "save_best": ["acc", "mIoU"]})",
           R"({"interval": 3, "save_best": "acc"})",
           R"({"interval": 1, "save_best": "coco/bbox_mAP"})",
           R"({"interval": 1, "save_best": "acc", "max_keep_ckpts": 2})",
           R"({"interval": 1, "save_best": ["acc", "loss"], "max_keep_ckpts": 2})",
           R"({"interval": 1, "published_keys": "state_dict"})",
           R"({"interval": 1, "save_best": "loss_acc"})",
           R"({"by_epoch": true, "interval": 2})",
           R"({"by_epoch": true, "interval": 1, "max_keep_ckpts": 3})",
           R"({"by_epoch": true, "interval": 1, "published_keys": ["meta", "state_dict"]})",
           R"({"by_epoch": true, "interval": 2, "save_begin": 5})",
           R"({"by_epoch": true, "interval": 1, "save_best": "test/acc"})",
           R"({"by_epoch": false, "interval": 2})",
           R"({"by_epoch": false, "interval": 1, "max_keep_ckpts": 3})",
           R"({"interval": 1, "out_dir": "$ROOT/ckpts"})",
       }) {
    EXPECT_NO_THROW(validate_json(text)) << text;
  }
  const ValidatedConfig slash = validate_json(R"({"interval": 1, "save_best": "coco/bbox_mAP"})");
  EXPECT_EQ(slash.best[0], (BestIndicator{"coco/bbox_mAP", Rule::kGreater, false}));
  EXPECT_TRUE(validate_json(R"({"interval": 1, "save_best": "loss_acc"})").warnings.size() == 1);
}

// ---- 'auto' ---------------------------------------------------------------------------------

TEST(HookConfig, AutoResolvesToTheFirstMetricKey) {
  const ValidatedConfig v = validate(with_save_best("auto"));
  std::string warning = "stale";
  EXPECT_EQ(v.resolve_auto("acc", &warning), (BestIndicator{"acc", Rule::kGreater, false}));
  EXPECT_TRUE(warning.empty());
  EXPECT_EQ(v.resolve_auto("val_loss", nullptr), (BestIndicator{"val_loss", Rule::kLess, false}));
  EXPECT_TRUE(v.has_auto());  // const: the hook keeps the resolved indicator
}

TEST(HookConfig, AutoKeepsTheExplicitRule) {
  const ValidatedConfig v = validate_json(R"({"save_best": "auto", "rule": "less"})");
  EXPECT_EQ(v.best[0], (BestIndicator{"auto", Rule::kLess, true}));
  EXPECT_EQ(v.resolve_auto("acc", nullptr), (BestIndicator{"acc", Rule::kLess, true}));
  EXPECT_EQ(v.resolve_auto("FID", nullptr), (BestIndicator{"FID", Rule::kLess, true}));
}

TEST(HookConfig, AutoResolutionFailsForAnUninferableKey) {
  const ValidatedConfig v = validate(with_save_best("auto"));
  EXPECT_THAT(error_of([&] { v.resolve_auto("FID", nullptr); }),
              AllOf(HasSubstr("'auto' resolved to metric \"FID\""),
                    HasSubstr("Cannot infer the rule for key FID, thus a specific rule must be "
                              "specified.")));
}

TEST(HookConfig, AutoResolutionUsesTheConfiguredKeysAndWarns) {
  HookConfig c = with_save_best("auto");
  c.greater_keys = {"psnr"};
  const ValidatedConfig v = validate(c);
  EXPECT_EQ(v.resolve_auto("PSNR", nullptr).rule, Rule::kGreater);
  EXPECT_THAT(error_of([&] { v.resolve_auto("acc", nullptr); }), HasSubstr("key acc"));
  std::string warning;
  EXPECT_EQ(validate(with_save_best("auto")).resolve_auto("heatmap_loss", &warning).rule,
            Rule::kGreater);
  EXPECT_THAT(warning, AllOf(HasSubstr("\"mAP\""), HasSubstr("\"loss\"")));
}

TEST(HookConfig, ResolveAutoWithoutAutoIsAnError) {
  EXPECT_THAT(error_of([] { validate(with_save_best("acc")).resolve_auto("acc", nullptr); }),
              HasSubstr("not 'auto'"));
}

// ---- infer_rule (the outcomes confirmed by running MMEngine) ----------------------------------

Rule infer(const std::string& key, std::string* warning = nullptr) {
  return infer_rule(key, default_greater_keys(), default_less_keys(), warning);
}

TEST(InferRule, ExactDefaultKeysAreGreater) {
  for (const char* key : {"acc", "mIoU", "aAcc", "mDice", "auc", "precision", "mAcc"}) {
    std::string warning = "stale";
    EXPECT_EQ(infer(key, &warning), Rule::kGreater) << key;
    EXPECT_TRUE(warning.empty()) << key;
  }
}

TEST(InferRule, SubstringsOfGreaterKeysAreGreater) {
  for (const char* key : {"Top1", "AR@100", "coco/bbox_mAP", "accuracy_top-1"}) {
    EXPECT_EQ(infer(key), Rule::kGreater) << key;
  }
}

TEST(InferRule, LossKeysAreLess) {
  EXPECT_EQ(infer("loss"), Rule::kLess);
  EXPECT_EQ(infer("val_loss"), Rule::kLess);
  EXPECT_EQ(infer("LOSS"), Rule::kLess);
}

TEST(InferRule, MatchIsCaseInsensitive) {
  EXPECT_EQ(infer("ACC"), Rule::kGreater);
  EXPECT_EQ(infer("MIOU"), Rule::kGreater);
  EXPECT_EQ(infer_rule("Val_Err", {}, {"ERR"}, nullptr), Rule::kLess);
}

TEST(InferRule, LossAccIsGreaterWithAWarningNamingBothMatches) {
  std::string warning;
  EXPECT_EQ(infer("loss_acc", &warning), Rule::kGreater);
  EXPECT_THAT(warning, AllOf(HasSubstr("\"loss_acc\""), HasSubstr("greater key(s) \"acc\""),
                             HasSubstr("less key(s) \"loss\""),
                             HasSubstr("Set \"rule\" to \"greater\" or \"less\"")));
}

TEST(InferRule, HeatmapLossIsGreaterWithAWarning) {
  std::string warning;
  EXPECT_EQ(infer("heatmap_loss", &warning), Rule::kGreater);  // contains "map" (MMEngine quirk)
  EXPECT_THAT(warning,
              AllOf(HasSubstr("greater key(s) \"mAP\""), HasSubstr("less key(s) \"loss\"")));
}

TEST(InferRule, ExactMatchBeatsSubstringWithoutWarning) {
  std::string warning;
  EXPECT_EQ(infer_rule("heatmap_loss", default_greater_keys(), {"heatmap_loss"}, &warning),
            Rule::kLess);
  EXPECT_TRUE(warning.empty());
}

TEST(InferRule, ExactMatchInBothListsIsGreaterWithWarning) {
  std::string warning;
  EXPECT_EQ(infer_rule("loss", {"loss"}, default_less_keys(), &warning), Rule::kGreater);
  EXPECT_THAT(warning, AllOf(HasSubstr("equals"), HasSubstr("\"loss\"")));
}

TEST(InferRule, UninferableKeysThrow) {
  for (const char* key : {"FID", "recall", "psnr", "f1"}) {
    EXPECT_THAT(error_of([&] { infer(key); }),
                AllOf(HasSubstr("\"save_best\" key \"" + std::string(key) + "\""),
                      HasSubstr("Cannot infer the rule for key " + std::string(key) +
                                ", thus a specific rule must be specified.")))
        << key;
  }
}

TEST(InferRule, CustomGreaterKeysMakeAccUninferable) {
  EXPECT_EQ(infer_rule("psnr", {"psnr"}, default_less_keys(), nullptr), Rule::kGreater);
  EXPECT_THAT(error_of([] { infer_rule("acc", {"psnr"}, default_less_keys(), nullptr); }),
              HasSubstr("Cannot infer the rule for key acc"));
}

// ---- format_filename (expected values produced by Python 3.11 str.format) -------------------

struct FormatCase {
  const char* tmpl;
  int64_t step;
  const char* expected;
};

TEST(FormatFilename, MatchesPythonStrFormat) {
  const FormatCase cases[] = {
      {"epoch_{}.pth", 5, "epoch_5.pth"},
      {"iter_{}.pth", 0, "iter_0.pth"},
      {"{0}.pth", 12, "12.pth"},
      {"{00}.pth", 12, "12.pth"},
      {"{:}.pth", 7, "7.pth"},
      {"{0:}.pth", 7, "7.pth"},
      {"sub/ep_{}.pth", 3, "sub/ep_3.pth"},
      {"ckpt_{:03d}.pth", 7, "ckpt_007.pth"},
      {"ckpt_{:03d}.pth", 1234, "ckpt_1234.pth"},
      {"ckpt_{:03}.pth", -7, "ckpt_-07.pth"},
      {"{:>5}", 42, "   42"},
      {"{:<5}|", 42, "42   |"},
      {"{:^6}|", 42, "  42  |"},
      {"{:^7}|", 42, "  42   |"},
      {"{:*^7}", 42, "**42***"},
      {"{:x<05}", 5, "5xxxx"},
      {"{:<05}", 5, "50000"},
      {"{:^06}", 5, "005000"},
      {"{:0>5}", 5, "00005"},
      {"{:=5}", -5, "-   5"},
      {"{:0=5}", -5, "-0005"},
      {"{:+}", 5, "+5"},
      {"{:+}", -5, "-5"},
      {"{: }", 5, " 5"},
      {"{:-}", 5, "5"},
      {"{:+06}", 5, "+00005"},
      {"{: 05}", 5, " 0005"},
      {"{:x}", 255, "ff"},
      {"{:X}", 255, "FF"},
      {"{:#x}", 255, "0xff"},
      {"{:#X}", 255, "0XFF"},
      {"{:#06x}", 255, "0x00ff"},
      {"{:b}", 5, "101"},
      {"{:#b}", 5, "0b101"},
      {"{:o}", 8, "10"},
      {"{:#o}", 8, "0o10"},
      {"{:#d}", 8, "8"},
      {"{:n}", 1234567, "1234567"},
      {"{:,}", 1234567, "1,234,567"},
      {"{:_}", 1234567, "1_234_567"},
      {"{:,d}", -1234567, "-1,234,567"},
      {"{:_x}", 11259375, "ab_cdef"},
      {"{:#_b}", 37, "0b10_0101"},
      {"{:010,}", 1234, "00,001,234"},
      {"{:08,}", 1234, "0,001,234"},
      {"{:09,}", 1234, "0,001,234"},
      {"{:010,}", -1234, "-0,001,234"},
      {"{:0=10,}", 1234, "00,001,234"},
      {"{:*>10,}", 1234, "*****1,234"},
      {"{:#012_x}", 11259375, "0x0_00ab_cdef"},
      {"{:,}", 0, "0"},
      {"{:}", std::numeric_limits<int64_t>::max(), "9223372036854775807"},
      {"{:,}", std::numeric_limits<int64_t>::min(), "-9,223,372,036,854,775,808"},
      {"{:#x}", std::numeric_limits<int64_t>::min(), "-0x8000000000000000"},
      {"{:é>5}", 42, "ééé42"},
      {"{:é^6,}", 1234, "1,234é"},
      {"{:<<4}", 1, "1<<<"},
  };
  for (const FormatCase& c : cases) {
    EXPECT_EQ(format_filename(c.tmpl, c.step), c.expected) << c.tmpl << " with " << c.step;
  }
}

TEST(FormatFilename, DoubledBracesAreLiteral) {
  EXPECT_EQ(format_filename("{{run}}_{}.pth", 3), "{run}_3.pth");
  EXPECT_EQ(format_filename("{{{}}}", 3), "{3}");
  EXPECT_EQ(format_filename("a}}b{{c{:02}", 3), "a}b{c03");
}

TEST(FormatFilename, InvalidTemplateThrowsNamingIt) {
  EXPECT_THAT(
      error_of([] { format_filename("{}{}", 1); }),
      AllOf(HasSubstr("CheckpointHook config: \"filename_tmpl\" \"{}{}\""), HasSubstr("found 2")));
  EXPECT_THAT(error_of([] { format_filename("ep_{epoch}", 1); }), HasSubstr("{epoch}"));
}

TEST(FormatFilename, ValidatedConfigUsesTheEffectiveTemplate) {
  EXPECT_EQ(validate_json(R"({})").filename(3), "epoch_3.pth");
  EXPECT_EQ(validate_json(R"({"by_epoch": false})").filename(10), "iter_10.pth");
  EXPECT_EQ(validate_json(R"({"filename_tmpl": "ckpt_{:05d}.pth"})").filename(42),
            "ckpt_00042.pth");
}

}  // namespace
}  // namespace ckptledger
