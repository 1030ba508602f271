// The scenario model of `ckptledger simulate` (docs/behaviour.md: simulate traces): parsing,
// defaults, restarts, substitution and the error messages for malformed scenarios.
#include "tools/train/scenario.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "ckptledger/error.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

fs::path test_data() {
  const char* d = std::getenv("CKPT_TEST_DATA");
  return d ? fs::path(d) : fs::path(__FILE__).parent_path() / "data";
}

std::vector<fs::path> example_files() {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(test_data() / "examples")) {
    if (e.path().extension() == ".json") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

ordered_json read_json(const fs::path& p) {
  std::ifstream in(p);
  return ordered_json::parse(in);
}

Scenario parse(const std::string& text) { return parse_scenario(ordered_json::parse(text)); }

// The message of the kInvalidArgument error that parsing `text` throws ("" if none).
std::string parse_error(const std::string& text) {
  try {
    parse(text);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    return e.what();
  }
  return "";
}

TEST(ScenarioTest, EveryExampleFileParsesAndPlansItsRecordedRuns) {
  const auto files = example_files();
  ASSERT_GE(files.size(), 18u);
  for (const auto& f : files) {
    SCOPED_TRACE(f.string());
    const Scenario s = load_scenario_file(f.string());
    EXPECT_EQ(s.name, f.stem().string());
    const auto plans = plan_runs(s, "/tmp/root");
    const ordered_json trace = read_json(f)["trace"];
    ASSERT_EQ(plans.size(), trace["runs"].size());
    for (size_t i = 0; i < plans.size(); ++i) {
      const ordered_json& run = trace["runs"][i];
      EXPECT_EQ(plans[i].index, static_cast<int>(i));
      EXPECT_EQ(plans[i].resume, run.value("resume", false));
      if (run["end"] == "crashed") {
        ASSERT_TRUE(plans[i].stop.is_crash());
        EXPECT_EQ(stop_at_name(plans[i].stop.at), run["crash"]["at"].get<std::string>());
        EXPECT_EQ(plans[i].stop.step, run["crash"]["step"].get<int64_t>());
      } else {
        EXPECT_FALSE(plans[i].stop.is_crash());
      }
    }
  }
}

TEST(ScenarioTest, EmptyScenarioTakesTheDocumentedDefaults) {
  const Scenario s = parse("{}");
  EXPECT_EQ(s.name, "");
  EXPECT_EQ(s.hook, ordered_json::object());
  EXPECT_EQ(s.loop, LoopKind::kEpoch);
  EXPECT_EQ(s.max_epochs, 3);
  EXPECT_EQ(s.iters_per_epoch, 2);
  EXPECT_EQ(s.max_iters, 6);
  EXPECT_TRUE(s.val.empty());
  EXPECT_EQ(s.work_dir, "work_dirs/exp");
  EXPECT_TRUE(s.param_scheduler);
  EXPECT_FALSE(s.record_all_stages);
  EXPECT_TRUE(s.restarts.empty());

  const auto plans = plan_runs(s, "/tmp/root/");
  ASSERT_EQ(plans.size(), 1u);
  EXPECT_EQ(plans[0].work_dir, "/tmp/root/work_dirs/exp");
  EXPECT_FALSE(plans[0].resume);
  EXPECT_FALSE(plans[0].load_from.has_value());
  EXPECT_EQ(plans[0].stop.at, StopAt::kEnd);
  EXPECT_FALSE(plans[0].stop.is_crash());
  EXPECT_EQ(plans[0].loop_max_epochs(), 3);
  EXPECT_EQ(plans[0].loop_max_iters(), 6);
}

TEST(ScenarioTest, LoopDefaultsFromHookByEpochButAnExplicitLoopWins) {
  EXPECT_EQ(parse(R"({"hook": {"by_epoch": false}})").loop, LoopKind::kIter);
  EXPECT_EQ(parse(R"({"hook": {"by_epoch": true}})").loop, LoopKind::kEpoch);
  EXPECT_EQ(parse(R"({"hook": {"by_epoch": false}, "loop": "epoch"})").loop, LoopKind::kEpoch);
  const Scenario s = parse(R"({"loop": "iter", "max_iters": 11, "max_epochs": 7})");
  const RunPlan p = plan_runs(s, "/r")[0];
  EXPECT_EQ(p.loop_max_iters(), 11);
  EXPECT_EQ(p.loop_max_epochs(), 1);
  EXPECT_EQ(
      plan_runs(parse(R"({"max_epochs": 5, "iters_per_epoch": 4})"), "/r")[0].loop_max_iters(), 20);
}

TEST(ScenarioTest, CrashShorthandBecomesTheFirstRestart) {
  const Scenario s = parse(R"({
    "crash": {"at": "after_val_epoch", "step": 2},
    "restarts": [{"at": "after_train_iter", "step": null}, {"at": "end", "resume": false}]})");
  ASSERT_EQ(s.restarts.size(), 3u);
  EXPECT_EQ(s.restarts[0].at, StopAt::kAfterValEpoch);
  EXPECT_EQ(s.restarts[0].step, 2);
  EXPECT_EQ(s.restarts[1].at, StopAt::kAfterTrainIter);
  EXPECT_FALSE(s.restarts[1].step.has_value());
  EXPECT_EQ(s.restarts[2].at, StopAt::kEnd);

  const auto plans = plan_runs(s, "/r");
  ASSERT_EQ(plans.size(), 4u);
  EXPECT_TRUE(plans[0].stop.is_crash());
  EXPECT_EQ(plans[0].stop.step, 2);
  EXPECT_FALSE(plans[0].resume);
  EXPECT_TRUE(plans[1].resume);
  EXPECT_FALSE(plans[1].stop.step.has_value());
  EXPECT_FALSE(plans[2].stop.is_crash());  // "end": finishes normally, then run 3 starts
  EXPECT_TRUE(plans[2].resume);
  EXPECT_FALSE(plans[3].resume);
  EXPECT_EQ(plans[3].stop.at, StopAt::kEnd);
}

TEST(ScenarioTest, OverridesMergeOverTheCurrentOptionsAndCarryToLaterRuns) {
  const Scenario s = parse(R"({
    "hook": {"interval": 1, "save_best": "acc", "max_keep_ckpts": 2},
    "max_epochs": 4,
    "val": [{"step": 1, "metrics": {"acc": 0.1}}],
    "restarts": [
      {"at": "after_train_epoch", "step": 2, "hook": {"max_keep_ckpts": 3, "out_dir": null,
                                                      "rule": "greater"},
       "max_epochs": 6, "val": [{"step": 5, "metrics": {}}], "load_from": "$WORK_DIR/epoch_2.pth",
       "resume": false},
      {"at": "end", "max_iters": 9}]})");
  const auto plans = plan_runs(s, "/r");
  ASSERT_EQ(plans.size(), 3u);
  EXPECT_EQ(plans[0].hook.dump(), R"({"interval":1,"save_best":"acc","max_keep_ckpts":2})");
  EXPECT_EQ(plans[0].max_epochs, 4);
  ASSERT_EQ(plans[0].val.size(), 1u);
  EXPECT_EQ(plans[1].hook.dump(),
            R"({"interval":1,"save_best":"acc","max_keep_ckpts":3,"out_dir":null,)"
            R"("rule":"greater"})");
  EXPECT_EQ(plans[1].max_epochs, 6);
  ASSERT_EQ(plans[1].val.size(), 1u);
  EXPECT_EQ(plans[1].val[0].step, 5);
  EXPECT_TRUE(plans[1].val[0].metrics.empty());
  EXPECT_FALSE(plans[1].resume);
  EXPECT_EQ(plans[1].load_from, "/r/work_dirs/exp/epoch_2.pth");
  // Run 2: the overrides of restart 0 persist; load_from / resume do not.
  EXPECT_EQ(plans[2].hook, plans[1].hook);
  EXPECT_EQ(plans[2].max_epochs, 6);
  EXPECT_EQ(plans[2].max_iters, 9);
  EXPECT_EQ(plans[2].val[0].step, 5);
  EXPECT_TRUE(plans[2].resume);
  EXPECT_FALSE(plans[2].load_from.has_value());
}

TEST(ScenarioTest, RootAndWorkDirAreSubstitutedInEveryHookString) {
  const Scenario s = parse(R"({
    "work_dir": "./runs/a/",
    "hook": {"out_dir": "$ROOT/ckpts", "published_keys": {"__tuple__": ["$ROOT", "x$WORK_DIR"]},
             "nested": {"a": ["$WORK_DIR/$ROOT"]}, "interval": 2},
    "crash": {"at": "after_train_epoch", "step": 1, "load_from": "$ROOT/w.pth"}})");
  const auto plans = plan_runs(s, "/tmp/sim/./root");
  EXPECT_EQ(plans[0].work_dir, "/tmp/sim/root/runs/a");
  EXPECT_EQ(plans[0].hook["out_dir"], "/tmp/sim/root/ckpts");
  EXPECT_EQ(plans[0].hook["published_keys"].dump(),
            R"({"__tuple__":["/tmp/sim/root","x/tmp/sim/root/runs/a"]})");
  EXPECT_EQ(plans[0].hook["nested"]["a"][0], "/tmp/sim/root/runs/a//tmp/sim/root");
  EXPECT_EQ(plans[0].hook["interval"], 2);
  EXPECT_EQ(plans[1].load_from, "/tmp/sim/root/w.pth");
  // The scenario itself keeps the placeholders.
  EXPECT_EQ(s.hook["out_dir"], "$ROOT/ckpts");
  EXPECT_EQ(substitute_vars("$ROOTx$WORK_DIR$", "/a", "/a/w"), "/ax/a/w$");
}

TEST(ScenarioTest, OutDirShorthandFoldsIntoTheHookOptions) {
  const Scenario s = parse(R"({"hook": {"interval": 1}, "out_dir": "ckpts"})");
  EXPECT_EQ(s.hook.dump(), R"({"interval":1,"out_dir":"ckpts"})");
  EXPECT_FALSE(parse(R"({"out_dir": null})").hook.contains("out_dir"));
}

TEST(ScenarioTest, MetricsKeepKeyOrderNullsIntegersAndNonFiniteFloats) {
  const Scenario s = parse(R"({"val": [{"step": 2, "metrics": {
      "z": 0.5, "a": null, "m": {"__float__": "nan"}, "b": {"__float__": "-inf"}, "i": 3}}]})");
  ASSERT_EQ(s.val.size(), 1u);
  const auto& m = s.val[0].metrics;
  ASSERT_EQ(m.size(), 5u);
  EXPECT_EQ(m[0].key, "z");
  EXPECT_EQ(m[0].value, 0.5);
  EXPECT_FALSE(m[0].is_integer);
  EXPECT_EQ(m[1].key, "a");
  EXPECT_FALSE(m[1].value.has_value());
  EXPECT_TRUE(m[1].raw.is_null());
  EXPECT_EQ(m[2].key, "m");
  ASSERT_TRUE(m[2].value.has_value());
  EXPECT_TRUE(std::isnan(*m[2].value));
  EXPECT_EQ(m[3].value, -INFINITY);
  EXPECT_EQ(m[4].value, 3.0);
  EXPECT_TRUE(m[4].is_integer);
  EXPECT_EQ(s.val[0].metrics_json.dump(),
            R"({"z":0.5,"a":null,"m":{"__float__":"nan"},"b":{"__float__":"-inf"},"i":3})");
}

TEST(ScenarioTest, TupleMarkersInHookOptionsAreKeptForTheHookParser) {
  const Scenario s = parse(R"({"hook": {"save_best": {"__tuple__": ["acc", "loss"]}}})");
  ASSERT_TRUE(is_tuple_marker(s.hook["save_best"]));
  EXPECT_EQ(tuple_items(s.hook["save_best"]).dump(), R"(["acc","loss"])");
  EXPECT_THROW(tuple_items(ordered_json::array()), Error);
}

TEST(ScenarioTest, FloatMarkersDecodeAndEncode) {
  EXPECT_TRUE(std::isnan(*decode_float(ordered_json::parse(R"({"__float__": "nan"})"))));
  EXPECT_EQ(decode_float(ordered_json::parse(R"({"__float__": "inf"})")), INFINITY);
  EXPECT_EQ(decode_float(ordered_json::parse(R"({"__float__": "-inf"})")), -INFINITY);
  EXPECT_EQ(decode_float(ordered_json(1.5)), 1.5);
  EXPECT_EQ(decode_float(ordered_json(2)), 2.0);
  EXPECT_FALSE(decode_float(ordered_json(nullptr)).has_value());
  EXPECT_FALSE(decode_float(ordered_json::parse(R"({"__float__": "NaN"})")).has_value());
  EXPECT_EQ(encode_float(NAN).dump(), R"({"__float__":"nan"})");
  EXPECT_EQ(encode_float(-INFINITY).dump(), R"({"__float__":"-inf"})");
  EXPECT_EQ(encode_float(0.25).dump(), "0.25");
}

TEST(ScenarioTest, MalformedScenariosAreRejectedWithTheFieldAndTheBadValue) {
  struct Case {
    const char* json;
    const char* message;
  };
  const Case cases[] = {
      {R"([1, 2])", R"(scenario: must be a JSON object; got [1,2])"},
      {R"({"scenario": 3, "trace": {}})", R"(scenario: must be a JSON object; got 3)"},
      {R"({"scenario": {}, "notes": 1})",
       R"(scenario: case file has unknown field "notes"; expected scenario, trace)"},
      {R"({"max_epoch": 3})",
       R"(scenario: unknown field "max_epoch"; expected one of name, description, )"
       R"(hook, loop, max_epochs, iters_per_epoch, max_iters, val, work_dir, out_dir, )"
       R"(param_scheduler, record_all_stages, crash, restarts)"},
      {R"({"name": 3})", R"(scenario: name must be a string; got 3)"},
      {R"({"hook": [1]})", R"(scenario: hook must be an object; got [1])"},
      {R"({"max_epochs": 0})", R"(scenario: max_epochs must be a positive integer; got 0)"},
      {R"({"max_epochs": -2})", R"(scenario: max_epochs must be a positive integer; got -2)"},
      {R"({"max_epochs": "3"})", R"(scenario: max_epochs must be a positive integer; got "3")"},
      {R"({"max_iters": 2.5})", R"(scenario: max_iters must be a positive integer; got 2.5)"},
      {R"({"iters_per_epoch": true})",
       R"(scenario: iters_per_epoch must be a positive integer; got true)"},
      {R"({"loop": "epochs"})", R"(scenario: loop must be "epoch" or "iter"; got "epochs")"},
      {R"({"param_scheduler": 1})", R"(scenario: param_scheduler must be true or false; got 1)"},
      {R"({"work_dir": "/abs"})",
       R"(scenario: work_dir must be a non-empty path relative to the root; got "/abs")"},
      {R"({"out_dir": "a", "hook": {"out_dir": "b"}})",
       R"(scenario: out_dir conflicts with hook.out_dir (give one of them); got "a")"},
      {R"({"val": {"step": 1}})",
       R"(scenario: val must be a list of {"step": K, "metrics": {...}}; got {"step":1})"},
      {R"({"val": [{"step": "2", "metrics": {}}]})",
       R"(scenario: val[0].step must be a positive integer; got "2")"},
      {R"({"val": [{"step": 1.0, "metrics": {}}]})",
       R"(scenario: val[0].step must be a positive integer; got 1.0)"},
      {R"({"val": [{"step": 1, "metrics": {}}, {"step": 1, "metrics": {}}]})",
       R"(scenario: val[1].step repeats an earlier step; got 1)"},
      {R"({"val": [{"step": 1, "metrics": [0.5]}]})",
       R"(scenario: val[0].metrics must be an object; got [0.5])"},
      {R"({"val": [{"step": 1}]})", R"(scenario: val[0] is missing "metrics"; got {"step":1})"},
      {R"({"val": [{"step": 1, "metrics": {}, "extra": 1}]})",
       R"(scenario: val[0] has unknown field "extra"; expected one of step, metrics)"},
      {R"({"val": [{"step": 1, "metrics": {"acc": "high"}}]})",
       R"(scenario: val[0].metrics["acc"] must be a number, null or {"__float__": )"
       R"("nan"|"inf"|"-inf"}; got "high")"},
      {R"({"val": [{"step": 1, "metrics": {"acc": {"__float__": "NaN"}}}]})",
       R"(scenario: val[0].metrics["acc"] must be a number, null or {"__float__": )"
       R"("nan"|"inf"|"-inf"}; got {"__float__":"NaN"})"},
      {R"({"restarts": {"at": "end"}})",
       R"(scenario: restarts must be a list of restart elements; got {"at":"end"})"},
      {R"({"restarts": [{"at": "end"}, {"at": "after_lunch"}]})",
       R"(scenario: restarts[1].at must be one of after_train_epoch, after_train_iter, )"
       R"(after_val_epoch, end; got "after_lunch")"},
      {R"({"restarts": ["end"]})",
       R"(scenario: restarts[0] must be an object {"at": STAGE, "step": K, ...}; got "end")"},
      {R"({"restarts": [{"step": 2}]})",
       R"(scenario: restarts[0] is missing "at"; got {"step":2})"},
      {R"({"restarts": [{"at": "after_train_iter", "step": "3"}]})",
       R"(scenario: restarts[0].step must be an integer or null; got "3")"},
      {R"({"restarts": [{"at": "after_train_iter", "step": 0}]})",
       R"(scenario: restarts[0].step must be a positive integer; got 0)"},
      {R"({"restarts": [{"at": "end", "step": 2}]})",
       R"(scenario: restarts[0].step must be null when at is "end"; got 2)"},
      {R"({"restarts": [{"at": "end", "lr": 0.1}]})",
       R"(scenario: restarts[0] has unknown field "lr"; expected one of at, step, hook, )"
       R"(max_epochs, max_iters, val, load_from, resume)"},
      {R"({"restarts": [{"at": "end", "hook": "interval=2"}]})",
       R"(scenario: restarts[0].hook must be an object; got "interval=2")"},
      {R"({"restarts": [{"at": "end", "max_epochs": -1}]})",
       R"(scenario: restarts[0].max_epochs must be a positive integer; got -1)"},
      {R"({"restarts": [{"at": "end", "resume": "yes"}]})",
       R"(scenario: restarts[0].resume must be true or false; got "yes")"},
      {R"({"restarts": [{"at": "end", "load_from": 5}]})",
       R"(scenario: restarts[0].load_from must be a string; got 5)"},
      {R"({"restarts": [{"at": "end", "val": [{"step": 1, "metrics": 0}]}]})",
       R"(scenario: restarts[0].val[0].metrics must be an object; got 0)"},
      {R"({"crash": {"at": "before_train"}})",
       R"(scenario: crash.at must be one of after_train_epoch, after_train_iter, )"
       R"(after_val_epoch, end; got "before_train")"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.json);
    EXPECT_EQ(parse_error(c.json), c.message);
  }
}

TEST(ScenarioTest, HookOptionsThemselvesAreNotValidatedHere) {
  const Scenario s = parse(R"({"hook": {"interval": "often", "no_such_option": [1]}})");
  EXPECT_EQ(s.hook["interval"], "often");
}

TEST(ScenarioTest, LoadScenarioFileNamesTheFileInErrors) {
  const fs::path dir = fs::temp_directory_path() / "ckptledger_scenario_test";
  fs::create_directories(dir);
  const fs::path bad_json = dir / "bad.json";
  std::ofstream(bad_json) << "{\"max_epochs\": ";
  const fs::path bad_field = dir / "field.json";
  std::ofstream(bad_field) << R"({"loop": "x"})";

  try {
    load_scenario_file((dir / "missing.json").string());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_THAT(e.what(), HasSubstr("missing.json"));
  }
  try {
    load_scenario_file(bad_json.string());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_THAT(e.what(), HasSubstr(bad_json.string() + ": not valid JSON"));
  }
  try {
    load_scenario_file(bad_field.string());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(std::string(e.what()),
              bad_field.string() + R"(: scenario: loop must be "epoch" or "iter"; got "x")");
  }
  fs::remove_all(dir);
}

TEST(ScenarioTest, PlanRunsRequiresAnAbsoluteRoot) {
  try {
    plan_runs(parse("{}"), "relative/root");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_THAT(e.what(), HasSubstr("relative/root"));
  }
}

}  // namespace
}  // namespace ckptledger
