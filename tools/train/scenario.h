// The scenario format of `ckptledger simulate` (docs/behaviour.md: simulate traces): parsing,
// validation, and the per-run plan that the simulator executes.
//
// A scenario scripts a training schedule (loop type, lengths, validation metrics) and a list of
// restarts; run i ends at restart i's stage (a crash, or "end") and restart i configures run i+1.
// Parsing validates everything *except* the CheckpointHook options in `hook`, which are kept as
// JSON (tuple markers included) for the hook's own config parser.
//
// JSON extensions (scenarios and traces): {"__float__": "nan"|"inf"|"-inf"} is a non-finite float,
// {"__tuple__": [...]} a Python tuple. Malformed input throws
// ckptledger::Error(ErrorCode::kInvalidArgument) with a message naming the field and the bad value.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ckptledger {

using ordered_json = nlohmann::ordered_json;

// ---- JSON extension helpers
// ----------------------------------------------------------------------

// True for an object {"__float__": <anything>} (one key).
bool is_float_marker(const ordered_json& j);
// True for an object {"__tuple__": <anything>} (one key).
bool is_tuple_marker(const ordered_json& j);
// A JSON number, or a well-formed float marker, as a double; nullopt for anything else (null
// included, and a marker whose string is not nan / inf / -inf).
std::optional<double> decode_float(const ordered_json& j);
// A finite double as a JSON number; NaN / +-inf as the float marker.
ordered_json encode_float(double v);
// The items of a tuple marker; throws kInvalidArgument when `j` is not a tuple marker holding an
// array.
const ordered_json& tuple_items(const ordered_json& j);

// ---- Scenario
// -------------------------------------------------------------------------------------

enum class LoopKind { kEpoch, kIter };
const char* loop_kind_name(LoopKind loop);  // "epoch" | "iter"

// Where a run ends: `at` of a restart element.
enum class StopAt { kAfterTrainEpoch, kAfterTrainIter, kAfterValEpoch, kEnd };
const char* stop_at_name(StopAt at);  // "after_train_epoch" | ... | "end"

// One entry of a val metrics dict, in the dict's key order.
struct Metric {
  std::string key;
  std::optional<double> value;  // nullopt: JSON null (Python None); NaN / +-inf kept as such
  bool is_integer = false;      // written as a JSON integer (MMEngine keeps an int score an int)
  ordered_json raw;             // the value as written (float markers not decoded)
};

struct ValStep {
  int64_t step = 0;             // completed epochs (epoch loop) or iterations (iteration loop)
  std::vector<Metric> metrics;  // empty: the `{}` dict (the hook warns and skips)
  ordered_json metrics_json;    // the dict as written, key order kept
};

// A restart element (also the `crash` shorthand): ends one run and configures the next.
struct Restart {
  StopAt at = StopAt::kEnd;
  std::optional<int64_t> step;  // nullopt: the first time `at` occurs (always nullopt for kEnd)
  // Overrides for the next run.
  std::optional<ordered_json> hook;  // object; merged key by key over the current options
  std::optional<int64_t> max_epochs;
  std::optional<int64_t> max_iters;
  std::optional<std::vector<ValStep>> val;  // replaces the current list
  std::optional<std::string> load_from;     // may contain $ROOT / $WORK_DIR
  bool resume = true;
};

struct Scenario {
  std::string name;
  std::string description;
  ordered_json hook = ordered_json::object();  // with the `out_dir` shorthand folded in
  LoopKind loop = LoopKind::kEpoch;            // default: from hook.by_epoch (default true)
  int64_t max_epochs = 3;
  int64_t iters_per_epoch = 2;
  int64_t max_iters = 6;
  std::vector<ValStep> val;
  std::string work_dir = "work_dirs/exp";  // relative to the root
  bool param_scheduler = true;
  bool record_all_stages = false;
  std::vector<Restart> restarts;  // the `crash` shorthand, if any, is restarts[0]
};

// Accepts a plain scenario or a case file {"scenario": ..., "trace": ...}.
Scenario parse_scenario(const ordered_json& j);
// Reads and parses a file: kNotFound when unreadable, kInvalidArgument (prefixed with the path)
// when not JSON or not a valid scenario.
Scenario load_scenario_file(const std::string& path);

// ---- Per-run plan
// ---------------------------------------------------------------------------------

struct StopPoint {
  StopAt at = StopAt::kEnd;     // kEnd: the run finishes normally
  std::optional<int64_t> step;  // nullopt: the first time `at` occurs
  bool is_crash() const { return at != StopAt::kEnd; }
};

struct RunPlan {
  int index = 0;
  ordered_json hook;  // merged options, $ROOT / $WORK_DIR substituted in every string value
  LoopKind loop = LoopKind::kEpoch;
  int64_t max_epochs = 3;  // as configured (after overrides); see loop_max_epochs()
  int64_t max_iters = 6;   // as configured (after overrides); see loop_max_iters()
  int64_t iters_per_epoch = 2;
  std::vector<ValStep> val;
  std::string work_dir;  // absolute, lexically normalised
  bool param_scheduler = true;
  bool record_all_stages = false;
  bool resume = false;                   // run 0: false; run i>0: restarts[i-1].resume
  std::optional<std::string> load_from;  // run i>0: restarts[i-1].load_from, substituted
  StopPoint stop;                        // restarts[i], or kEnd for the last run

  // The loop's own counters, as MMEngine's loops keep them: an epoch loop runs
  // max_epochs * iters_per_epoch iterations; an iteration loop has max_epochs 1.
  int64_t loop_max_epochs() const { return loop == LoopKind::kEpoch ? max_epochs : 1; }
  int64_t loop_max_iters() const {
    return loop == LoopKind::kEpoch ? max_epochs * iters_per_epoch : max_iters;
  }
};

// Replaces every "$WORK_DIR" and "$ROOT" in `s`.
std::string substitute_vars(const std::string& s, const std::string& root_abs,
                            const std::string& work_dir_abs);

// One plan per run: restarts.size() + 1 runs. `root_abs` must be absolute (kInvalidArgument).
std::vector<RunPlan> plan_runs(const Scenario& scenario, const std::string& root_abs);

}  // namespace ckptledger
