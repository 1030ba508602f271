#include "tools/train/scenario.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <set>
#include <utility>

#include <fmt/format.h>

#include "ckptledger/error.h"

namespace ckptledger {

namespace {

constexpr const char* kFloatKey = "__float__";
constexpr const char* kTupleKey = "__tuple__";

// The offending value, as JSON, shortened so that a message stays one readable line.
std::string show(const ordered_json& v) {
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  constexpr size_t kMax = 80;
  if (s.size() > kMax) s = s.substr(0, kMax - 3) + "...";
  return s;
}

[[noreturn]] void fail(const std::string& field, const std::string& what, const ordered_json& got) {
  throw_error(ErrorCode::kInvalidArgument, fmt::format("scenario: {}{}{}; got {}", field,
                                                       field.empty() ? "" : " ", what, show(got)));
}

[[noreturn]] void fail_unknown(const std::string& where, const std::string& key,
                               std::initializer_list<const char*> known) {
  std::string list;
  for (const char* k : known) {
    if (!list.empty()) list += ", ";
    list += k;
  }
  throw_error(ErrorCode::kInvalidArgument,
              fmt::format("scenario: {}{}unknown field \"{}\"; expected one of {}", where,
                          where.empty() ? "" : " has ", key, list));
}

void check_keys(const ordered_json& obj, const std::string& where,
                std::initializer_list<const char*> known) {
  for (const auto& item : obj.items()) {
    bool ok = false;
    for (const char* k : known) ok = ok || item.key() == k;
    if (!ok) fail_unknown(where, item.key(), known);
  }
}

std::string get_string(const std::string& field, const ordered_json& v) {
  if (!v.is_string()) fail(field, "must be a string", v);
  return v.get<std::string>();
}

bool get_bool(const std::string& field, const ordered_json& v) {
  if (!v.is_boolean()) fail(field, "must be true or false", v);
  return v.get<bool>();
}

int64_t get_positive_int(const std::string& field, const ordered_json& v) {
  if (!v.is_number_integer()) fail(field, "must be a positive integer", v);
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail(field, "is too large", v);
    }
    int64_t n = static_cast<int64_t>(v.get<uint64_t>());
    if (n <= 0) fail(field, "must be a positive integer", v);
    return n;
  }
  int64_t n = v.get<int64_t>();
  if (n <= 0) fail(field, "must be a positive integer", v);
  return n;
}

// Python truthiness of a JSON scalar (for the default `loop` from hook.by_epoch).
bool truthy(const ordered_json& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number_integer()) return v.get<int64_t>() != 0;
  if (v.is_number_float()) return v.get<double>() != 0.0;
  if (v.is_string() || v.is_array() || v.is_object()) return !v.empty();
  return true;
}

Metric parse_metric(const std::string& field, const std::string& key, const ordered_json& v) {
  Metric m;
  m.key = key;
  m.raw = v;
  if (v.is_null()) return m;
  if (v.is_number()) {
    m.value = v.get<double>();
    m.is_integer = v.is_number_integer();
    return m;
  }
  if (is_float_marker(v)) {
    if (auto d = decode_float(v)) {
      m.value = *d;
      return m;
    }
  }
  fail(field, "must be a number, null or {\"__float__\": \"nan\"|\"inf\"|\"-inf\"}", v);
}

std::vector<ValStep> parse_val(const std::string& field, const ordered_json& v) {
  if (!v.is_array()) fail(field, "must be a list of {\"step\": K, \"metrics\": {...}}", v);
  std::vector<ValStep> out;
  std::set<int64_t> seen;
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string where = fmt::format("{}[{}]", field, i);
    const ordered_json& e = v[i];
    if (!e.is_object()) fail(where, "must be an object {\"step\": K, \"metrics\": {...}}", e);
    check_keys(e, where, {"step", "metrics"});
    if (!e.contains("step")) fail(where, "is missing \"step\"", e);
    if (!e.contains("metrics")) fail(where, "is missing \"metrics\"", e);
    ValStep vs;
    vs.step = get_positive_int(where + ".step", e["step"]);
    if (!seen.insert(vs.step).second) fail(where + ".step", "repeats an earlier step", e["step"]);
    const ordered_json& metrics = e["metrics"];
    if (!metrics.is_object()) fail(where + ".metrics", "must be an object", metrics);
    vs.metrics_json = metrics;
    for (const auto& item : metrics.items()) {
      const std::string mfield =
          fmt::format("{}.metrics[{}]", where, ordered_json(item.key()).dump());
      vs.metrics.push_back(parse_metric(mfield, item.key(), item.value()));
    }
    out.push_back(std::move(vs));
  }
  return out;
}

StopAt parse_stop_at(const std::string& field, const ordered_json& v) {
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    for (StopAt at : {StopAt::kAfterTrainEpoch, StopAt::kAfterTrainIter, StopAt::kAfterValEpoch,
                      StopAt::kEnd}) {
      if (s == stop_at_name(at)) return at;
    }
  }
  fail(field, "must be one of after_train_epoch, after_train_iter, after_val_epoch, end", v);
}

Restart parse_restart(const std::string& where, const ordered_json& v) {
  if (!v.is_object()) fail(where, "must be an object {\"at\": STAGE, \"step\": K, ...}", v);
  check_keys(v, where,
             {"at", "step", "hook", "max_epochs", "max_iters", "val", "load_from", "resume"});
  Restart r;
  if (!v.contains("at")) fail(where, "is missing \"at\"", v);
  r.at = parse_stop_at(where + ".at", v["at"]);
  if (v.contains("step") && !v["step"].is_null()) {
    if (r.at == StopAt::kEnd) fail(where + ".step", "must be null when at is \"end\"", v["step"]);
    if (!v["step"].is_number_integer())
      fail(where + ".step", "must be an integer or null", v["step"]);
    r.step = get_positive_int(where + ".step", v["step"]);
  }
  if (v.contains("hook")) {
    if (!v["hook"].is_object()) fail(where + ".hook", "must be an object", v["hook"]);
    r.hook = v["hook"];
  }
  if (v.contains("max_epochs"))
    r.max_epochs = get_positive_int(where + ".max_epochs", v["max_epochs"]);
  if (v.contains("max_iters")) r.max_iters = get_positive_int(where + ".max_iters", v["max_iters"]);
  if (v.contains("val")) r.val = parse_val(where + ".val", v["val"]);
  if (v.contains("load_from") && !v["load_from"].is_null()) {
    r.load_from = get_string(where + ".load_from", v["load_from"]);
  }
  if (v.contains("resume")) r.resume = get_bool(where + ".resume", v["resume"]);
  return r;
}

// Recursively substitutes $ROOT / $WORK_DIR in string values (keys are left alone).
ordered_json substitute_json(const ordered_json& j, const std::string& root,
                             const std::string& work_dir) {
  if (j.is_string()) return substitute_vars(j.get<std::string>(), root, work_dir);
  if (j.is_array()) {
    ordered_json out = ordered_json::array();
    for (const auto& e : j) out.push_back(substitute_json(e, root, work_dir));
    return out;
  }
  if (j.is_object()) {
    ordered_json out = ordered_json::object();
    for (const auto& item : j.items())
      out[item.key()] = substitute_json(item.value(), root, work_dir);
    return out;
  }
  return j;
}

std::string normalise_abs(const std::filesystem::path& p) {
  std::string s = p.lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

}  // namespace

// ---- JSON extensions
// ------------------------------------------------------------------------------

bool is_float_marker(const ordered_json& j) {
  return j.is_object() && j.size() == 1 && j.contains(kFloatKey);
}

bool is_tuple_marker(const ordered_json& j) {
  return j.is_object() && j.size() == 1 && j.contains(kTupleKey);
}

std::optional<double> decode_float(const ordered_json& j) {
  if (j.is_number()) return j.get<double>();
  if (!is_float_marker(j)) return std::nullopt;
  const ordered_json& s = j[kFloatKey];
  if (!s.is_string()) return std::nullopt;
  const std::string& v = s.get_ref<const std::string&>();
  if (v == "nan") return std::numeric_limits<double>::quiet_NaN();
  if (v == "inf") return std::numeric_limits<double>::infinity();
  if (v == "-inf") return -std::numeric_limits<double>::infinity();
  return std::nullopt;
}

ordered_json encode_float(double v) {
  if (std::isnan(v)) return ordered_json{{kFloatKey, "nan"}};
  if (std::isinf(v)) return ordered_json{{kFloatKey, v > 0 ? "inf" : "-inf"}};
  return ordered_json(v);
}

const ordered_json& tuple_items(const ordered_json& j) {
  if (!is_tuple_marker(j) || !j[kTupleKey].is_array()) {
    throw_error(ErrorCode::kInvalidArgument,
                fmt::format("not a tuple marker {{\"__tuple__\": [...]}}: {}", show(j)));
  }
  return j[kTupleKey];
}

// ---- names
// ----------------------------------------------------------------------------------------

const char* loop_kind_name(LoopKind loop) { return loop == LoopKind::kEpoch ? "epoch" : "iter"; }

const char* stop_at_name(StopAt at) {
  switch (at) {
    case StopAt::kAfterTrainEpoch:
      return "after_train_epoch";
    case StopAt::kAfterTrainIter:
      return "after_train_iter";
    case StopAt::kAfterValEpoch:
      return "after_val_epoch";
    case StopAt::kEnd:
      return "end";
  }
  return "?";
}

// ---- parsing
// --------------------------------------------------------------------------------------

Scenario parse_scenario(const ordered_json& in) {
  if (!in.is_object()) fail("", "must be a JSON object", in);
  const ordered_json* jp = &in;
  if (in.contains("scenario")) {  // a case file {"scenario": ..., "trace": ...}
    for (const auto& item : in.items()) {
      if (item.key() != "scenario" && item.key() != "trace") {
        throw_error(ErrorCode::kInvalidArgument,
                    fmt::format("scenario: case file has unknown field \"{}\"; expected scenario, "
                                "trace",
                                item.key()));
      }
    }
    jp = &in["scenario"];
    if (!jp->is_object()) fail("", "must be a JSON object", *jp);
  }
  const ordered_json& j = *jp;
  check_keys(
      j, "",
      {"name", "description", "hook", "loop", "max_epochs", "iters_per_epoch", "max_iters", "val",
       "work_dir", "out_dir", "param_scheduler", "record_all_stages", "crash", "restarts"});

  Scenario s;
  if (j.contains("name") && !j["name"].is_null()) s.name = get_string("name", j["name"]);
  if (j.contains("description") && !j["description"].is_null()) {
    s.description = get_string("description", j["description"]);
  }
  if (j.contains("hook")) {
    if (!j["hook"].is_object()) fail("hook", "must be an object", j["hook"]);
    s.hook = j["hook"];
  }
  if (j.contains("out_dir") && !j["out_dir"].is_null()) {
    const std::string out_dir = get_string("out_dir", j["out_dir"]);
    if (s.hook.contains("out_dir")) {
      fail("out_dir", "conflicts with hook.out_dir (give one of them)", j["out_dir"]);
    }
    s.hook["out_dir"] = out_dir;
  }
  if (j.contains("loop")) {
    const ordered_json& v = j["loop"];
    if (v == "epoch") {
      s.loop = LoopKind::kEpoch;
    } else if (v == "iter") {
      s.loop = LoopKind::kIter;
    } else {
      fail("loop", "must be \"epoch\" or \"iter\"", v);
    }
  } else {
    const bool by_epoch = s.hook.contains("by_epoch") ? truthy(s.hook["by_epoch"]) : true;
    s.loop = by_epoch ? LoopKind::kEpoch : LoopKind::kIter;
  }
  if (j.contains("max_epochs")) s.max_epochs = get_positive_int("max_epochs", j["max_epochs"]);
  if (j.contains("iters_per_epoch")) {
    s.iters_per_epoch = get_positive_int("iters_per_epoch", j["iters_per_epoch"]);
  }
  if (j.contains("max_iters")) s.max_iters = get_positive_int("max_iters", j["max_iters"]);
  if (j.contains("val")) s.val = parse_val("val", j["val"]);
  if (j.contains("work_dir")) {
    s.work_dir = get_string("work_dir", j["work_dir"]);
    if (s.work_dir.empty() || s.work_dir.front() == '/') {
      fail("work_dir", "must be a non-empty path relative to the root", j["work_dir"]);
    }
  }
  if (j.contains("param_scheduler")) {
    s.param_scheduler = get_bool("param_scheduler", j["param_scheduler"]);
  }
  if (j.contains("record_all_stages")) {
    s.record_all_stages = get_bool("record_all_stages", j["record_all_stages"]);
  }
  if (j.contains("crash") && !j["crash"].is_null()) {
    s.restarts.push_back(parse_restart("crash", j["crash"]));
  }
  if (j.contains("restarts")) {
    const ordered_json& r = j["restarts"];
    if (!r.is_array()) fail("restarts", "must be a list of restart elements", r);
    for (size_t i = 0; i < r.size(); ++i) {
      s.restarts.push_back(parse_restart(fmt::format("restarts[{}]", i), r[i]));
    }
  }
  return s;
}

Scenario load_scenario_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw_error(ErrorCode::kNotFound, fmt::format("scenario file {} cannot be read", path));
  }
  ordered_json j;
  try {
    j = ordered_json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw_error(ErrorCode::kInvalidArgument, fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
  try {
    return parse_scenario(j);
  } catch (const Error& e) {
    throw Error(e.code(), fmt::format("{}: {}", path, e.what()));
  }
}

// ---- planning
// -------------------------------------------------------------------------------------

std::string substitute_vars(const std::string& s, const std::string& root_abs,
                            const std::string& work_dir_abs) {
  std::string out;
  out.reserve(s.size());
  static const std::string kRoot = "$ROOT";
  static const std::string kWorkDir = "$WORK_DIR";
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, kWorkDir.size(), kWorkDir) == 0) {
      out += work_dir_abs;
      i += kWorkDir.size();
    } else if (s.compare(i, kRoot.size(), kRoot) == 0) {
      out += root_abs;
      i += kRoot.size();
    } else {
      out += s[i++];
    }
  }
  return out;
}

std::vector<RunPlan> plan_runs(const Scenario& scenario, const std::string& root_abs) {
  if (root_abs.empty() || root_abs.front() != '/') {
    throw_error(ErrorCode::kInvalidArgument,
                fmt::format("scenario root must be an absolute path; got \"{}\"", root_abs));
  }
  const std::string root = normalise_abs(root_abs);
  const std::string work_dir = normalise_abs(std::filesystem::path(root) / scenario.work_dir);

  ordered_json hook = scenario.hook;
  int64_t max_epochs = scenario.max_epochs;
  int64_t max_iters = scenario.max_iters;
  std::vector<ValStep> val = scenario.val;

  std::vector<RunPlan> plans;
  const size_t n_runs = scenario.restarts.size() + 1;
  for (size_t i = 0; i < n_runs; ++i) {
    RunPlan p;
    p.index = static_cast<int>(i);
    p.hook = substitute_json(hook, root, work_dir);
    p.loop = scenario.loop;
    p.max_epochs = max_epochs;
    p.max_iters = max_iters;
    p.iters_per_epoch = scenario.iters_per_epoch;
    p.val = val;
    p.work_dir = work_dir;
    p.param_scheduler = scenario.param_scheduler;
    p.record_all_stages = scenario.record_all_stages;
    if (i > 0) {
      const Restart& prev = scenario.restarts[i - 1];
      p.resume = prev.resume;
      if (prev.load_from) p.load_from = substitute_vars(*prev.load_from, root, work_dir);
    }
    if (i < scenario.restarts.size()) {
      const Restart& r = scenario.restarts[i];
      p.stop.at = r.at;
      p.stop.step = r.step;
      // Overrides configure the next run and carry on to the ones after it.
      if (r.hook) {
        for (const auto& item : r.hook->items()) hook[item.key()] = item.value();
      }
      if (r.max_epochs) max_epochs = *r.max_epochs;
      if (r.max_iters) max_iters = *r.max_iters;
      if (r.val) val = *r.val;
    }
    plans.push_back(std::move(p));
  }
  return plans;
}

}  // namespace ckptledger
