// HookConfig: the CheckpointHook options (MMEngine names and defaults, plus ckptledger's own);
// validate(): checks them as MMEngine's constructor does and resolves what the hook needs.
//
// Contract:
//  - HookConfig is plain data: set its fields from C++, or parse an MMEngine-style dict with
//    from_json(). The options MMEngine accepts in several Python types (save_best, rule,
//    greater_keys, less_keys, published_keys, file_client_args, backend_args) are kept as JSON
//    exactly as given, so that validate() checks them in MMEngine's order. JSON extensions:
//    {"__tuple__": [...]} is a Python tuple (python_tuple()), {"__float__": "nan"|"inf"|"-inf"}
//    a non-finite float, null is None.
//  - validate() raises every configuration error before anything is written, including those
//    MMEngine raises at the first save or never (docs/behaviour.md: configuration errors). It
//    follows MMEngine's constructor order (the first error wins), then checks what MMEngine only
//    finds later (filename_tmpl, the storage backend), then ckptledger's own options.
//  - Every error is Error(kInvalidArgument); its message starts with "CheckpointHook config: " and
//    names the option and the bad value.
// Thread safety: all types are values; all functions are pure (no I/O, no global state).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ckptledger {

// What a failed background checkpoint write does (ckptledger option `on_error`).
enum class OnError {
  kRaise,  // "raise": the failure is sticky and raised from the next hook call
  kWarn,   // "warn": logged and recorded in the ledger (save_failed); training goes on
};

// How resume treats disagreement between the ledger and the disk (ckptledger option `recovery`).
enum class RecoveryMode {
  kRepair,  // "repair": torn saves aborted, lost files recorded (`recovered` events), run goes on
  kStrict,  // "strict": any finding beyond a torn tail is an Error(kCorruption) naming it
};

const char* on_error_name(OnError v);            // "raise" | "warn"
const char* recovery_mode_name(RecoveryMode v);  // "repair" | "strict"

// Every option of MMEngine's CheckpointHook (same names and defaults), then ours; the table is in
// docs/behaviour.md (configuration).
struct HookConfig {
  // --- MMEngine ------------------------------------------------------------------------------
  int64_t interval = -1;  // <= 0: no periodic saves
  bool by_epoch = true;
  bool save_optimizer = true;
  bool save_param_scheduler = true;
  std::optional<std::string> out_dir;  // nullopt: the runner's work_dir
  int64_t max_keep_ckpts = -1;         // <= 0: keep every regular checkpoint
  bool save_last = true;
  nlohmann::json save_best;         // null | str | list of str
  nlohmann::json rule;              // null | "greater" | "less" | list of those (or null)
  nlohmann::json greater_keys;      // null (MMEngine defaults) | str | list or tuple of str
  nlohmann::json less_keys;         // null (MMEngine defaults) | str | list or tuple of str
  nlohmann::json file_client_args;  // null | dict (deprecated, warns) with "backend": local|disk
  std::optional<std::string> filename_tmpl;  // nullopt: "epoch_{}.pth" / "iter_{}.pth"
  nlohmann::json backend_args;               // null | dict with "backend": local|disk
  nlohmann::json published_keys;             // null | str | list or tuple of str
  int64_t save_begin = 0;

  // --- ckptledger only (not in MMEngine) -------------------------------------------------------
  // true: the training thread writes each checkpoint itself and returns when it is committed.
  // false: the snapshot is handed to the background writer pool.
  bool sync = false;
  OnError on_error = OnError::kRaise;  // JSON: "raise" | "warn"
  int64_t writer_threads = 1;          // >= 1: threads of the writer pool
  // 0..19: how much lower the writer's CPU priority is than training's (a nice increment for the
  // pool threads and the hashing/writing threads they start).
  int64_t writer_nice = 10;
  // >= 0: bytes of snapshots allowed in flight before the training thread waits;
  // 0 = a validation's burst: one checkpoint, or with save_best the regular save, one best save per
  // key and the regular re-save after a best (2 + keys).
  int64_t max_inflight_bytes = 0;
  RecoveryMode recovery = RecoveryMode::kRepair;  // JSON: "repair" | "strict"
  std::optional<std::string> ledger_path;  // nullopt: <work_dir>/ckptledger.sqlite; else non-empty
  // With a process group (CheckpointHook::join; docs/distributed.md): what each rank writes.
  // "main": rank 0 writes one file of the replicated state; "spread": the replicated state's
  // tensors are divided among the ranks, each writes its share as a part; "sharded": each rank
  // writes its own state as its part. Alone (no process group) every layout is one file.
  std::string save_layout = "main";

  // Parses the `hook` object of a scenario or an MMEngine dict(type='CheckpointHook', ...) as JSON.
  // `type`, if present, must be "CheckpointHook". Rejects unknown keys (MMEngine would forward them
  // to every save and fail there) and wrong JSON types for scalar options (a JSON bool is not an
  // int, a float or a string is not an int, an int is not a bool). Missing keys keep their default.
  // Semantic checks are validate()'s.
  static HookConfig from_json(const nlohmann::json& j);
  // Every option (and "type": "CheckpointHook"); from_json(to_json()) == *this.
  nlohmann::json to_json() const;

  friend bool operator==(const HookConfig& a, const HookConfig& b);
  friend bool operator!=(const HookConfig& a, const HookConfig& b) { return !(a == b); }
};

// {"__tuple__": [items...]}: a Python tuple, for the options that accept one.
nlohmann::json python_tuple(std::vector<nlohmann::json> items);

// How a best-checkpoint key compares scores (docs/behaviour.md: rule inference).
enum class Rule {
  kUnresolved,  // 'auto' without an explicit rule: inferred once the metric key is known
  kGreater,     // higher is better (strictly)
  kLess,        // lower is better (strictly)
};
const char* rule_name(Rule r);  // "none" | "greater" | "less"

struct BestIndicator {
  std::string key;  // metric name, or "auto" until resolve_auto()
  Rule rule = Rule::kUnresolved;
  bool explicit_rule = false;  // came from `rule` (not inferred); 'auto' resolution keeps it
  friend bool operator==(const BestIndicator& a, const BestIndicator& b) {
    return a.key == b.key && a.rule == b.rule && a.explicit_rule == b.explicit_rule;
  }
};

// MMEngine's default inference keys (greater_keys / less_keys when None).
const std::vector<std::string>& default_greater_keys();
const std::vector<std::string>& default_less_keys();

// Infers the rule of `key` in MMEngine's order. Case-insensitive; an exact match beats a substring
// match, and at each level greater beats less (so "heatmap_loss" and "loss_acc" are greater). If
// the deciding level matches both lists, *warning (when not null) names both matches and suggests
// `rule` (a ckptledger addition); otherwise it is cleared. Throws Error(kInvalidArgument) "...
// Cannot infer the rule for key K, thus a specific rule must be specified." naming save_best and
// the key when nothing matches. Lower-casing is ASCII-only (Python lower-cases all of Unicode).
Rule infer_rule(const std::string& key, const std::vector<std::string>& greater_keys,
                const std::vector<std::string>& less_keys, std::string* warning);

// Python `tmpl.format(step)` for a template with exactly one replacement field: "{}", "{0}" or
// one with an integer format spec ("{:03d}", "{:>5}", "{:#x}", "{:,}", "{:_b}", ...); "{{" and
// "}}" are literal braces. The whole int mini-language is supported:
//   [[fill]align][sign][#][0][width][,|_][type]
// align in < > = ^, sign in + - space, type in b d n o x X or none ('n' formats as 'd': Python
// never sets LC_NUMERIC). Rejected with Error(kInvalidArgument) naming filename_tmpl and the value:
//  - zero or several fields, named fields ("{epoch}"), indices other than 0, attribute or index
//    access ("{0.real}"), conversions ("{!r}"), nested fields ("{:{}}"), unbalanced braces;
//  - specs Python rejects for an int (precision, 'z', 's', ',' with b o x X n, ',' with '_');
//  - by choice: 'c' (a character, not a number), the float types e E f F g G % (Python turns the
//    step into a float), widths over 255 (no file name component is longer).
std::string format_filename(const std::string& tmpl, int64_t step);
// Throws exactly what format_filename() throws for an unusable template; returns otherwise.
void check_filename_tmpl(const std::string& tmpl);

// The resolved configuration the hook runs with. Produced only by validate().
struct ValidatedConfig {
  HookConfig options;         // as given: record options.to_json() in the ledger
  std::string filename_tmpl;  // effective: options.filename_tmpl or the by_epoch default
  // save_best was not None. It may still hold no key (save_best=[]: never saves a best, but a
  // multi-key best state exists, as in MMEngine).
  bool save_best_enabled = false;
  std::vector<BestIndicator> best;        // save_best in order, rules resolved (except 'auto')
  std::vector<std::string> greater_keys;  // effective, as given (original case)
  std::vector<std::string> less_keys;
  std::optional<std::vector<std::string>> published_keys;  // nullopt: no publishing
  std::vector<std::string> warnings;  // to log once at construction (deprecation, ambiguous rules)

  std::vector<std::string> key_indicators() const;  // the keys of `best` ({"auto"} possible)
  // One indicator (including 'auto'): hub keys best_score / best_ckpt. Otherwise (several, or
  // none with save_best=[]): best_score_<key> / best_ckpt_<key>.
  bool single_indicator() const { return best.size() == 1; }
  bool has_auto() const { return best.size() == 1 && best[0].key == "auto"; }
  std::string filename(int64_t step) const { return format_filename(filename_tmpl, step); }

  // MMEngine's 'auto': the indicator resolved with the first key of the first metrics dict. The
  // stored explicit rule is kept; otherwise the rule is inferred (may throw, as infer_rule).
  // Precondition: has_auto(). Does not modify *this: the hook stores the result.
  BestIndicator resolve_auto(const std::string& first_metric_key, std::string* warning) const;
};

// Checks `config` in MMEngine's constructor order, with ckptledger's early errors and ambiguous-key
// warnings (docs/behaviour.md: differences), and resolves it. Throws Error(kInvalidArgument) on the
// first problem.
ValidatedConfig validate(const HookConfig& config);

}  // namespace ckptledger
