#include "tools/train/simulate.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <typeinfo>
#include <utility>

#include <c10/util/Exception.h>
#include <cxxabi.h>
#include <fmt/format.h>

#include "ckptledger/checkpoint_hook.h"
#include "ckptledger/error.h"
#include "ckptledger/hook_config.h"
#include "ckptledger/ledger.h"
#include "ckptledger/loops.h"
#include "hook/checkpoint_format.h"
#include "storage/dir_lock.h"
#include "tools/train/scenario.h"
#include "tools/train/sim_runner.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---- small helpers ---------------------------------------------------------------------------

const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kInfo:
      return "INFO";
    case LogLevel::kWarning:
      return "WARNING";
    case LogLevel::kError:
      return "ERROR";
  }
  return "INFO";
}

// A JSON value with every non-finite float written as {"__float__": ...}.
ordered_json encode_nonfinite(const json& v) {
  if (v.is_number_float()) return encode_float(v.get<double>());
  if (v.is_array()) {
    ordered_json out = ordered_json::array();
    for (const json& x : v) out.push_back(encode_nonfinite(x));
    return out;
  }
  if (v.is_object()) {
    ordered_json out = ordered_json::object();
    for (auto it = v.begin(); it != v.end(); ++it) out[it.key()] = encode_nonfinite(it.value());
    return out;
  }
  return ordered_json::parse(v.dump());
}

ordered_json ivalue_to_json(const c10::IValue& v) {
  if (v.isNone()) return nullptr;
  if (v.isBool()) return v.toBool();
  if (v.isInt()) return v.toInt();
  if (v.isDouble()) return encode_float(v.toDouble());
  if (v.isString()) return v.toStringRef();
  if (v.isList()) {
    ordered_json out = ordered_json::array();
    for (const c10::IValue& x : v.toListRef()) out.push_back(ivalue_to_json(x));
    return out;
  }
  if (v.isTuple()) {
    ordered_json out = ordered_json::array();
    for (const c10::IValue& x : v.toTupleRef().elements()) out.push_back(ivalue_to_json(x));
    return out;
  }
  if (v.isGenericDict()) {
    ordered_json out = ordered_json::object();
    for (const auto& kv : v.toGenericDict()) {
      const c10::IValue& k = kv.key();
      std::string key = k.isString() ? k.toStringRef() : ivalue_to_json(k).dump();
      out[key] = ivalue_to_json(kv.value());
    }
    return out;
  }
  if (v.isTensor()) return "<tensor>";
  return std::string("<") + v.tagKind() + ">";
}

// The message hub keys the trace records: best_score*, best_ckpt*, last_ckpt, keep_ckpt_ids.
bool is_hub_key(const std::string& k) {
  return k.rfind("best_score", 0) == 0 || k.rfind("best_ckpt", 0) == 0 || k == "last_ckpt" ||
         k == "keep_ckpt_ids";
}

std::string exception_type(const std::exception& e) {
  if (const auto* ce = dynamic_cast<const Error*>(&e)) {
    return std::string("Error(") + error_code_name(ce->code()) + ")";
  }
  if (dynamic_cast<const c10::Error*>(&e) != nullptr) return "c10::Error";
  int status = 0;
  const char* mangled = typeid(e).name();
  std::unique_ptr<char, void (*)(void*)> demangled(
      abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  return status == 0 && demangled ? demangled.get() : mangled;
}

std::string read_text(const std::string& path, bool* ok) {
  std::ifstream in(path, std::ios::binary);
  *ok = static_cast<bool>(in);
  if (!in) return {};
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string rstrip(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

// Appends one JSON record per line with write(2): what was written survives a SIGKILL.
class RecordWriter {
 public:
  explicit RecordWriter(const std::string& path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      throw_error(ErrorCode::kIOError,
                  fmt::format("simulate-run: cannot open {}: {}", path, std::strerror(errno)));
    }
  }
  ~RecordWriter() {
    if (fd_ >= 0) ::close(fd_);
  }
  RecordWriter(const RecordWriter&) = delete;
  RecordWriter& operator=(const RecordWriter&) = delete;

  void write(const ordered_json& record) {
    std::string line = record.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    const char* p = line.data();
    size_t left = line.size();
    while (left > 0) {
      ssize_t n = ::write(fd_, p, left);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        throw_error(ErrorCode::kIOError,
                    fmt::format("simulate-run: cannot write a record: {}", std::strerror(errno)));
      }
      p += n;
      left -= static_cast<size_t>(n);
    }
  }

 private:
  int fd_ = -1;
};

// Log lines from the hook (any thread), handed out per recorded event.
class LogBuffer {
 public:
  void add(LogLevel level, const std::string& message) {
    std::lock_guard<std::mutex> lock(mu_);
    lines_.push_back(ordered_json::array({level_name(level), message}));
  }
  ordered_json take() {
    std::lock_guard<std::mutex> lock(mu_);
    ordered_json out = std::move(lines_);
    lines_ = ordered_json::array();
    return out;
  }

 private:
  std::mutex mu_;
  ordered_json lines_ = ordered_json::array();
};

bool is_ledger_file(const fs::path& p, const std::vector<std::string>& ledger_paths) {
  static const char* kSuffixes[] = {"", "-wal", "-shm", "-journal"};
  const std::string name = p.filename().string();
  const std::string full = p.string();
  for (const char* suffix : kSuffixes) {
    if (name == std::string(kDefaultLedgerName) + suffix) return true;
    for (const std::string& lp : ledger_paths) {
      if (full == lp + suffix) return true;
    }
  }
  return false;
}

std::optional<std::string> ledger_path_option(const RunPlan& plan, const std::string& root) {
  auto it = plan.hook.find("ledger_path");
  if (it == plan.hook.end() || !it->is_string()) return std::nullopt;
  fs::path p(it->get<std::string>());
  if (p.is_relative()) p = fs::path(root) / p;
  return p.lexically_normal().string();
}

// ---- the child: one run ----------------------------------------------------------------------

Metrics to_metrics(const std::vector<Metric>& in) {
  Metrics out;
  for (const Metric& m : in) out.emplace_back(m.key, m.value);
  return out;
}

const ValStep* find_val(const std::vector<ValStep>& val, int64_t step) {
  for (const ValStep& v : val) {
    if (v.step == step) return &v;
  }
  return nullptr;
}

std::optional<StopAt> stop_at_of(Stage s) {
  switch (s) {
    case Stage::kAfterTrainEpoch:
      return StopAt::kAfterTrainEpoch;
    case Stage::kAfterTrainIter:
      return StopAt::kAfterTrainIter;
    case Stage::kAfterValEpoch:
      return StopAt::kAfterValEpoch;
    default:
      return std::nullopt;
  }
}

class RunRecorder {
 public:
  RunRecorder(const RunPlan& plan, std::string root, RecordWriter& out, LogBuffer& logs)
      : plan_(plan), root_(std::move(root)), out_(out), logs_(logs) {}

  void attach(CheckpointHook* hook, SimRunner* runner,
              std::function<std::optional<std::string>()> resumed_from) {
    hook_ = hook;
    runner_ = runner;
    resumed_from_ = std::move(resumed_from);
  }

  // Loop observer: records the stage and, at the planned point, kills the process.
  void on_stage(Stage stage) {
    hook_->wait_idle();
    if (stage == Stage::kBeforeTrain) {
      if (auto r = resumed_from_()) out_.write({{"kind", "resumed"}, {"path", *r}});
    }
    if (recorded(stage)) out_.write({{"kind", "event"}, {"event", event(stage)}});
    if (crash_due(stage)) {
      out_.write({{"kind", "crash"}});
      ::kill(::getpid(), SIGKILL);
      ::pause();
    }
  }

  void write_published() {
    if (hook_ == nullptr) return;
    out_.write({{"kind", "published"}, {"files", hook_->published()}});
  }

 private:
  bool recorded(Stage stage) const {
    if (plan_.record_all_stages) return true;
    const bool by_epoch = hook_->config().options.by_epoch;
    if (stage == Stage::kAfterTrainIter && by_epoch) return false;
    if (stage == Stage::kAfterTrainEpoch && !by_epoch) return false;
    return true;
  }

  bool crash_due(Stage stage) const {
    if (!plan_.stop.is_crash() || stop_at_of(stage) != plan_.stop.at) return false;
    if (!plan_.stop.step) return true;  // the first time the stage occurs
    int64_t step = 0;
    switch (stage) {
      case Stage::kAfterTrainEpoch:
        step = runner_->epoch() + 1;
        break;
      case Stage::kAfterTrainIter:
        step = runner_->iter() + 1;
        break;
      default:  // after_val_epoch: the validation step
        step = plan_.loop == LoopKind::kEpoch ? runner_->epoch() : runner_->iter();
        break;
    }
    return step == *plan_.stop.step;
  }

  ordered_json event(Stage stage) {
    ordered_json ev;
    ev["stage"] = stage_name(stage);
    ev["epoch"] = runner_->epoch();
    ev["iter"] = runner_->iter();
    ev["files"] = list_root_files(root_, {hook_->ledger_path()});
    ev["info"] = encode_nonfinite(hook_->hub_info());
    bool ok = false;
    std::string last = read_text((fs::path(plan_.work_dir) / "last_checkpoint").string(), &ok);
    ev["last_checkpoint"] = ok ? ordered_json(rstrip(last)) : ordered_json(nullptr);
    ordered_json saves = ordered_json::array();
    for (const std::string& p : hook_->last_stage_saves()) {
      saves.push_back({{"file", p}, {"ckpt", checkpoint_summary(p)}});
    }
    if (!saves.empty()) ev["saves"] = saves;
    ordered_json logs = logs_.take();
    if (!logs.empty()) ev["logs"] = logs;
    return ev;
  }

  const RunPlan& plan_;
  std::string root_;
  RecordWriter& out_;
  LogBuffer& logs_;
  CheckpointHook* hook_ = nullptr;
  SimRunner* runner_ = nullptr;
  std::function<std::optional<std::string>()> resumed_from_;
};

ordered_json error_record(const char* phase, const std::string& stage, const std::string& type,
                          const std::string& message) {
  return {{"kind", "error"},
          {"error", {{"phase", phase}, {"stage", stage}, {"type", type}, {"message", message}}}};
}

// ---- the parent ------------------------------------------------------------------------------

std::string temp_dir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/ckptledger-simulate-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    throw_error(ErrorCode::kIOError,
                fmt::format("simulate: cannot create a temporary directory {}: {}", tmpl,
                            std::strerror(errno)));
  }
  return buf.data();
}

struct ChildStatus {
  bool exited = false;
  int exit_code = 0;
  int signal = 0;
};

ChildStatus run_child(const std::string& exe, const std::vector<std::string>& args,
                      const std::string& cwd) {
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(exe.c_str()));
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = ::fork();
  if (pid < 0) {
    throw_error(ErrorCode::kIOError,
                fmt::format("simulate: fork failed: {}", std::strerror(errno)));
  }
  if (pid == 0) {
    // The trace may go to stdout: the child's stdout joins its stderr (the parent's stderr).
    if (::dup2(STDERR_FILENO, STDOUT_FILENO) < 0 || ::chdir(cwd.c_str()) != 0) {
      std::fprintf(stderr, "simulate: cannot prepare the run process: %s\n", std::strerror(errno));
      ::_exit(127);
    }
    ::execv(exe.c_str(), argv.data());
    std::fprintf(stderr, "simulate: cannot run %s: %s\n", exe.c_str(), std::strerror(errno));
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      throw_error(ErrorCode::kIOError,
                  fmt::format("simulate: waitpid failed: {}", std::strerror(errno)));
    }
  }
  ChildStatus cs;
  if (WIFEXITED(status)) {
    cs.exited = true;
    cs.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    cs.signal = WTERMSIG(status);
  }
  return cs;
}

std::vector<ordered_json> read_records(const std::string& path) {
  std::vector<ordered_json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    ordered_json rec = ordered_json::parse(line, nullptr, false);
    if (rec.is_discarded()) continue;  // a torn last line
    out.push_back(std::move(rec));
  }
  return out;
}

ordered_json assemble_run(const RunPlan& plan, const std::vector<ordered_json>& records,
                          const ChildStatus& status, std::vector<std::string>* published) {
  ordered_json events = ordered_json::array();
  std::optional<std::string> resumed_from;
  std::optional<ordered_json> error;
  bool crashed = false, ended = false;
  for (const ordered_json& rec : records) {
    const std::string kind = rec.value("kind", "");
    if (kind == "event") {
      events.push_back(rec.at("event"));
    } else if (kind == "resumed") {
      resumed_from = rec.at("path").get<std::string>();
    } else if (kind == "crash") {
      crashed = true;
    } else if (kind == "error") {
      error = rec.at("error");
    } else if (kind == "published") {
      for (const auto& f : rec.at("files")) published->push_back(f.get<std::string>());
    } else if (kind == "end") {
      ended = true;
    }
  }

  ordered_json run;
  run["run"] = plan.index;
  if (plan.index > 0) {
    run["resume"] = plan.resume;
    run["load_from"] = plan.load_from ? ordered_json(*plan.load_from) : ordered_json(nullptr);
  }
  if (resumed_from) run["resumed_from"] = *resumed_from;
  if (!status.exited && status.signal == SIGKILL && crashed) {
    run["end"] = "crashed";
    run["crash"] = {
        {"at", stop_at_name(plan.stop.at)},
        {"step", plan.stop.step ? ordered_json(*plan.stop.step) : ordered_json(nullptr)}};
  } else if (status.exited && status.exit_code == 0 && (ended || error)) {
    run["end"] = ended ? "completed" : "error";
    if (!ended) run["error"] = *error;
  } else {
    std::string how = status.exited ? fmt::format("exited with status {}", status.exit_code)
                                    : fmt::format("was killed by signal {} ({})", status.signal,
                                                  ::strsignal(status.signal));
    std::string stage = events.empty() ? "unknown" : events.back().value("stage", "unknown");
    std::string message = fmt::format("the process of run {} {}{}", plan.index, how,
                                      error ? " after: " + error->value("message", "") : "");
    run["end"] = "error";
    run["error"] = {{"phase", "train"},
                    {"stage", error ? error->value("stage", stage) : stage},
                    {"type", "ProcessDied"},
                    {"message", message}};
  }
  run["events"] = std::move(events);
  return run;
}

// Rewrites every string (and object key): published names, then the root.
class Normaliser {
 public:
  Normaliser(std::string root, const std::vector<std::string>& published) : root_(std::move(root)) {
    int n = 0;
    std::map<std::string, std::string> seen;
    for (const std::string& p : published) {
      const std::string name = fs::path(p).filename().string();
      if (seen.count(name)) continue;
      // <stem>-<8 hex>.pth
      const size_t dash = name.rfind('-');
      if (dash == std::string::npos) continue;
      seen[name] = name.substr(0, dash) + fmt::format("-<sha8#{}>.pth", ++n);
      names_.emplace_back(name, seen[name]);
    }
  }

  ordered_json apply(const ordered_json& v) const {
    if (v.is_string()) return str(v.get<std::string>());
    if (v.is_array()) {
      ordered_json out = ordered_json::array();
      for (const auto& x : v) out.push_back(apply(x));
      return out;
    }
    if (v.is_object()) {
      ordered_json out = ordered_json::object();
      for (auto it = v.begin(); it != v.end(); ++it) out[str(it.key())] = apply(it.value());
      return out;
    }
    return v;
  }

  std::string str(std::string s) const {
    for (const auto& [from, to] : names_) replace_all(s, from, to, false);
    replace_all(s, root_, "$ROOT", true);
    return s;
  }

 private:
  static bool path_char(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
  }
  static void replace_all(std::string& s, const std::string& from, const std::string& to,
                          bool whole_component) {
    if (from.empty()) return;
    size_t pos = 0;
    while ((pos = s.find(from, pos)) != std::string::npos) {
      const size_t end = pos + from.size();
      if (whole_component && end < s.size() && path_char(s[end])) {
        pos = end;
        continue;
      }
      s.replace(pos, from.size(), to);
      pos += to.size();
    }
  }

  std::string root_;
  std::vector<std::pair<std::string, std::string>> names_;
};

void write_output(const ordered_json& trace, const std::optional<std::string>& output) {
  const std::string text = trace.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
  if (!output) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    return;
  }
  std::ofstream out(*output, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) {
    throw_error(ErrorCode::kIOError, fmt::format("simulate: cannot write {}", *output));
  }
}

}  // namespace

// ---- public ----------------------------------------------------------------------------------

std::vector<std::string> list_root_files(const std::string& root,
                                         const std::vector<std::string>& ledger_paths) {
  std::vector<std::string> out;
  std::error_code ec;
  fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec);
  for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code ec2;
    if (it->is_directory(ec2) && !it->is_symlink(ec2)) continue;
    if (is_ledger_file(it->path(), ledger_paths)) continue;
    if (it->path().filename() == kDirLockName) continue;  // the hook's, not MMEngine's
    out.push_back(it->path().lexically_relative(root).generic_string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

ordered_json checkpoint_summary(const std::string& path) {
  c10::IValue v;
  try {
    v = read_checkpoint(path);
  } catch (const std::exception& e) {
    return {{"error", e.what()}};
  }
  if (!v.isGenericDict()) return {{"error", "not a dict"}};
  const c10::impl::GenericDict d = v.toGenericDict();
  std::vector<std::string> keys;
  for (const auto& kv : d) {
    keys.push_back(kv.key().isString() ? kv.key().toStringRef() : ivalue_to_json(kv.key()).dump());
  }
  std::sort(keys.begin(), keys.end());
  ordered_json s;
  s["keys"] = keys;
  if (d.contains("meta") && d.at("meta").isGenericDict()) {
    ordered_json meta = ordered_json::object();
    const c10::impl::GenericDict m = d.at("meta").toGenericDict();
    for (const char* k : {"epoch", "iter"}) {
      if (m.contains(k)) meta[k] = ivalue_to_json(m.at(k));
    }
    s["meta"] = meta;
  }
  if (d.contains("message_hub")) {
    json hub = json::object();  // sorted keys
    const c10::IValue& mh = d.at("message_hub");
    if (mh.isGenericDict() && mh.toGenericDict().contains("runtime_info") &&
        mh.toGenericDict().at("runtime_info").isGenericDict()) {
      for (const auto& kv : mh.toGenericDict().at("runtime_info").toGenericDict()) {
        if (kv.key().isString() && is_hub_key(kv.key().toStringRef())) {
          hub[kv.key().toStringRef()] = json::parse(ivalue_to_json(kv.value()).dump());
        }
      }
    }
    s["hub"] = ordered_json::parse(hub.dump());
  }
  if (d.contains("param_schedulers")) {
    const c10::IValue& ps = d.at("param_schedulers");
    int64_t n = 0;
    if (ps.isList()) {
      n = static_cast<int64_t>(ps.toListRef().size());
    } else if (ps.isGenericDict()) {
      for (const auto& kv : ps.toGenericDict()) {
        n += kv.value().isList() ? static_cast<int64_t>(kv.value().toListRef().size()) : 1;
      }
    }
    s["n_param_schedulers"] = n;
  }
  return s;
}

int simulate_run(const std::string& scenario_path, const std::string& root, int run_index,
                 const std::string& out_path) {
  RecordWriter out(out_path);
  const Scenario scenario = load_scenario_file(scenario_path);
  const std::vector<RunPlan> plans = plan_runs(scenario, root);
  if (run_index < 0 || run_index >= static_cast<int>(plans.size())) {
    throw_error(ErrorCode::kInvalidArgument,
                fmt::format("simulate-run: run {} out of range (the scenario has {} runs)",
                            run_index, plans.size()));
  }
  const RunPlan& plan = plans[static_cast<size_t>(run_index)];
  LogBuffer logs;
  RunRecorder recorder(plan, root, out, logs);

  std::unique_ptr<CheckpointHook> hook;
  try {
    HookConfig config = HookConfig::from_json(json::parse(plan.hook.dump()));
    hook = std::make_unique<CheckpointHook>(
        config, [&logs](LogLevel level, const std::string& msg) { logs.add(level, msg); });
  } catch (const std::exception& e) {
    out.write(error_record("hook_init", "hook_init", exception_type(e), e.what()));
    return 0;
  }

  std::unique_ptr<SimRunner> runner;
  try {
    SimRunnerOptions ro;
    ro.work_dir = plan.work_dir;
    ro.param_scheduler = plan.param_scheduler;
    ro.seed = 0;
    ro.experiment_name = scenario.name.empty() ? "simulate" : scenario.name;
    ro.cfg = plan.hook.dump();
    runner = std::make_unique<SimRunner>(std::move(ro));
  } catch (const std::exception& e) {
    out.write(error_record("runner_init", "runner_init", exception_type(e), e.what()));
    return 0;
  }

  LoopOptions lo;
  lo.resume = plan.resume;
  lo.load_from = plan.load_from;
  lo.val_due = [&plan](int64_t step) { return find_val(plan.val, step) != nullptr; };
  lo.validate = [&plan](int64_t step) { return to_metrics(find_val(plan.val, step)->metrics); };
  lo.on_stage = [&recorder](Stage s) { recorder.on_stage(s); };
  TrainStep step = [&runner](int64_t) { runner->train_step(); };

  std::unique_ptr<EpochLoop> epoch_loop;
  std::unique_ptr<IterLoop> iter_loop;
  const char* current = "loop_init";
  try {
    if (plan.loop == LoopKind::kEpoch) {
      epoch_loop = std::make_unique<EpochLoop>(*runner, *hook, plan.loop_max_epochs(),
                                               plan.iters_per_epoch, step, lo);
    } else {
      iter_loop = std::make_unique<IterLoop>(*runner, *hook, plan.loop_max_iters(),
                                             plan.iters_per_epoch, step, lo);
    }
    recorder.attach(hook.get(), runner.get(), [&]() {
      return epoch_loop ? epoch_loop->resumed_from() : iter_loop->resumed_from();
    });
    if (epoch_loop) {
      epoch_loop->run();
    } else {
      iter_loop->run();
    }
  } catch (const std::exception& e) {
    if (epoch_loop) current = epoch_loop->current_call();
    if (iter_loop) current = iter_loop->current_call();
    recorder.write_published();
    out.write(error_record("train", current, exception_type(e), e.what()));
    return 0;
  }
  recorder.write_published();
  epoch_loop.reset();
  iter_loop.reset();
  hook.reset();  // anything that goes wrong from here on is not a completed run
  out.write({{"kind", "end"}});
  return 0;
}

ordered_json simulate(const SimulateOptions& options) {
  // 1. The scenario (malformed: Error(kInvalidArgument) naming the field).
  const Scenario scenario = load_scenario_file(options.scenario_path);

  // 2. The root: created when missing, must be empty.
  std::error_code ec;
  if (options.root.empty()) throw_error(ErrorCode::kInvalidArgument, "simulate: --root is empty");
  fs::create_directories(options.root, ec);
  std::error_code kind_ec;
  if (fs::exists(options.root, kind_ec) && !fs::is_directory(options.root, kind_ec)) {
    throw_error(ErrorCode::kInvalidArgument,
                fmt::format("simulate: root {} is not a directory", options.root));
  }
  if (ec) {
    throw_error(ErrorCode::kIOError,
                fmt::format("simulate: cannot create root {}: {}", options.root, ec.message()));
  }
  if (::access(options.root.c_str(), W_OK | X_OK) != 0) {
    throw_error(ErrorCode::kIOError, fmt::format("simulate: root {} is not writable: {}",
                                                 options.root, std::strerror(errno)));
  }
  if (fs::directory_iterator(options.root) != fs::directory_iterator()) {
    throw_error(ErrorCode::kInvalidArgument,
                fmt::format("simulate: root {} is not empty (a scenario needs a fresh root)",
                            options.root));
  }
  const std::string root = fs::canonical(options.root).string();
  const std::vector<RunPlan> plans = plan_runs(scenario, root);

  // 3. The runs, each its own process.
  const std::string tmp = temp_dir();
  const std::string scenario_copy = tmp + "/scenario.json";
  fs::copy_file(options.scenario_path, scenario_copy);
  std::vector<std::string> ledger_paths;
  ordered_json runs = ordered_json::array();
  std::vector<std::string> published;
  try {
    for (const RunPlan& plan : plans) {
      if (auto lp = ledger_path_option(plan, root)) ledger_paths.push_back(*lp);
      const std::string records = fmt::format("{}/run-{}.jsonl", tmp, plan.index);
      ChildStatus status = run_child(options.self_exe,
                                     {"simulate-run", scenario_copy, "--root", root, "--run",
                                      std::to_string(plan.index), "--out", records},
                                     root);
      runs.push_back(assemble_run(plan, read_records(records), status, &published));
    }
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  fs::remove_all(tmp, ec);

  // 4. The final state, read back from the disk.
  ordered_json final_state;
  const std::vector<std::string> files = list_root_files(root, ledger_paths);
  final_state["files"] = files;
  ordered_json checkpoints = ordered_json::object();
  for (const std::string& f : files) {
    if (fs::path(f).extension() == ".pth") {
      checkpoints[f] = checkpoint_summary((fs::path(root) / f).string());
    }
  }
  final_state["checkpoints"] = checkpoints;
  ordered_json pub = ordered_json::array();
  for (const std::string& p : published) {
    ordered_json entry = {{"file", p}};
    ordered_json summary = checkpoint_summary(p);
    entry["keys"] = summary.contains("keys") ? summary["keys"] : ordered_json(nullptr);
    pub.push_back(entry);
  }
  final_state["published"] = pub;

  ordered_json trace;
  trace["format"] = 1;
  trace["runs"] = runs;
  trace["final"] = final_state;
  const ordered_json normalised = Normaliser(root, published).apply(trace);
  write_output(normalised, options.output);
  return normalised;
}

}  // namespace ckptledger
