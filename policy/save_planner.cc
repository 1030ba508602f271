#include "policy/save_planner.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "ledger/payload.h"
#include "policy/hook_events.h"

namespace ckptledger {
namespace {

std::string join(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

Event make(EventKind kind, const std::string& path, int64_t step, int64_t epoch, int64_t iter) {
  Event e;
  e.kind = kind;
  e.path = path;
  e.step = step;
  e.epoch = epoch;
  e.iter = iter;
  return e;
}

// Python's repr of a list of str, for MMEngine's messages.
std::string py_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", '" : "'") + items[i] + "'";
  return out + "]";
}

// What the hook does with a decided save: its events become part of the live state at once.
void fold_into(HookState& state, const std::vector<Event>& events) {
  HookStateFold fold(state);
  for (const Event& e : events) dispatch(e, fold);
}

}  // namespace

SavePlanner::SavePlanner(const ValidatedConfig& cfg, std::string out_dir, FileProbe exists)
    : cfg_(cfg), out_dir_(std::move(out_dir)), exists_(std::move(exists)) {}

bool SavePlanner::better(Rule rule, double score, const BestState* prev) {
  if (std::isnan(score)) return false;
  if (rule == Rule::kGreater) {
    return score > (prev ? prev->score : -std::numeric_limits<double>::infinity());
  }
  return score < (prev ? prev->score : std::numeric_limits<double>::infinity());
}

PlannedSave SavePlanner::plan_regular(const HookState& state, int64_t step, int64_t meta_epoch,
                                      int64_t meta_iter) const {
  PlannedSave p;
  p.path = join(out_dir_, cfg_.filename(step));
  p.meta_epoch = meta_epoch;
  p.meta_iter = meta_iter;
  p.with_optimizer = cfg_.options.save_optimizer;
  p.with_schedulers = cfg_.options.save_param_scheduler;
  p.moves_last_checkpoint = true;
  SavePayload sp;
  sp.role = "regular";
  p.commit.push_back(make(EventKind::kSaveCommitted, p.path, step, meta_epoch, meta_iter));
  const int64_t max_keep = cfg_.options.max_keep_ckpts;
  if (max_keep > 0) {
    std::vector<int64_t> keep = state.keep_tracked ? state.keep_ckpt_ids : std::vector<int64_t>{};
    // Saving the same step again (the re-save after a best) rotates nothing.
    if (keep.empty() || keep.back() != step) {
      while (static_cast<int64_t>(keep.size()) >= max_keep) {
        int64_t old = keep.front();
        keep.erase(keep.begin());
        auto it = state.regular_path_by_step.find(old);
        if (it == state.regular_path_by_step.end() || it->second == p.path) continue;
        Event prune = make(EventKind::kPruned, it->second, old, meta_epoch, meta_iter);
        PrunePayload pp;
        pp.reason = "rotation";
        pp.superseded_by = p.path;
        prune.detail = to_detail(pp);
        p.commit.push_back(prune);
        p.remove_after.push_back(it->second);
      }
      keep.push_back(step);
    }
    sp.keep_tracked = true;
    sp.keep_ckpt_ids = keep;
  }
  p.commit.front().detail = to_detail(sp);
  return p;
}

ValidationPlan SavePlanner::plan_validation(const HookState& state_in, const Metrics& metrics,
                                            int64_t E, int64_t I) const {
  ValidationPlan plan;
  HookState state = state_in;
  const int64_t cur = cfg_.options.by_epoch ? E : I;
  const auto log = [&](LogLevel level, std::string message) {
    PlanStep s;
    s.level = level;
    s.message = std::move(message);
    plan.steps.push_back(std::move(s));
  };

  ValidatedPayload vp;
  vp.metrics = metrics;
  std::vector<BestIndicator> indicators = cfg_.best;
  if (!metrics.empty() && cfg_.has_auto()) {
    if (state.auto_key.empty()) {
      std::string warning;
      BestIndicator resolved = cfg_.resolve_auto(metrics.front().first, &warning);
      if (!warning.empty()) log(LogLevel::kWarning, warning);
      vp.auto_key = resolved.key;
      indicators = {resolved};
    } else {
      // Already resolved by this run or an earlier one (replayed: the key survives a resume).
      indicators = {cfg_.resolve_auto(state.auto_key, nullptr)};
    }
  }
  // `validated` is decided first ('auto' must be resolved in the hub the best files record) and
  // appended after every save it triggers: a validation counts as complete only once its outcome
  // is committed, so a crash in between makes it due again.
  plan.validated = make(EventKind::kValidated, "", cur, E, I);
  plan.validated.detail = to_detail(vp);
  fold_into(state, {plan.validated});

  if (metrics.empty()) {
    log(LogLevel::kWarning,
        "Since `metrics` is an empty dict, the behavior to save the best checkpoint will be "
        "skipped in this evaluation.");
    return plan;
  }
  if (!cfg_.save_best_enabled || indicators.empty()) return plan;

  const std::string tmpl_name = cfg_.filename(cur);
  const char* unit = cfg_.options.by_epoch ? "epoch" : "iter";
  bool updated = false;
  for (const BestIndicator& ind : indicators) {
    auto m = std::find_if(metrics.begin(), metrics.end(),
                          [&](const auto& kv) { return kv.first == ind.key; });
    if (m == metrics.end()) {
      std::vector<std::string> keys;
      for (const auto& kv : metrics) keys.push_back(kv.first);
      throw_error(ErrorCode::kInvalidArgument,
                  fmt::format("after_val_epoch: save_best key '{}' is not in the metrics {}",
                              ind.key, py_list(keys)));
    }
    if (!m->second) continue;  // None: silently skipped, as MMEngine
    const double score = *m->second;
    auto prev_it = state.best.find(ind.key);
    const BestState* prev = prev_it == state.best.end() ? nullptr : &prev_it->second;
    if (std::isnan(score)) {
      log(LogLevel::kWarning,
          fmt::format("metric '{}' is NaN at {} {}: never a best score", ind.key, cur, unit));
      continue;
    }
    std::string name = "best_" + ind.key + "_" + tmpl_name;
    std::replace(name.begin(), name.end(), '/', '_');
    const std::string path = join(out_dir_, name);
    if (!better(ind.rule, score, prev)) {
      // The same validation, re-run after a crash that hit between its best's commit and the
      // end of its re-save: the best is already committed, the re-save is still owed.
      if (prev && prev->path == path && prev->score == score) updated = true;
      continue;
    }
    updated = true;
    const std::string old = prev ? prev->path : std::string();

    PlannedSave p;
    p.path = path;
    p.meta_epoch = E;
    p.meta_iter = I;
    Event best = make(EventKind::kBestUpdated, path, cur, E, I);
    best.metric = ind.key;
    best.score = score;
    BestPayload bp;
    bp.rule = rule_name(ind.rule);
    bp.previous_path = old;
    bp.had_previous_score = prev != nullptr;
    bp.previous_score = prev ? prev->score : 0.0;
    best.detail = to_detail(bp);
    Event committed = make(EventKind::kSaveCommitted, path, cur, E, I);
    SavePayload sp;
    sp.role = "best";
    sp.key = ind.key;
    committed.detail = to_detail(sp);
    p.commit = {committed, best};
    // The previous best may still be in flight: the ledger's decided files count, not the disk.
    const bool old_known = !old.empty() && old != path && state.live.count(old) > 0;
    const bool old_exists = !old.empty() && old != path && (old_known || exists_(old));
    if (old_exists) {
      Event prune = make(EventKind::kPruned, old, old_known ? state.live.at(old).step : cur, E, I);
      PrunePayload pp;
      pp.reason = "best_replaced";
      pp.superseded_by = path;
      prune.detail = to_detail(pp);
      p.commit.push_back(prune);
      p.remove_after.push_back(old);
      p.logs_after.emplace_back(LogLevel::kInfo,
                                fmt::format("The previous best checkpoint {} is removed", old));
    }
    p.logs_after.emplace_back(
        LogLevel::kInfo, fmt::format("The best checkpoint with {:.4f} {} at {} {} is saved to {}.",
                                     score, ind.key, cur, unit, name));
    fold_into(state, p.commit);
    PlanStep s;
    s.save = std::move(p);
    plan.steps.push_back(std::move(s));
  }
  // As MMEngine: the regular checkpoint of this step is re-saved so its hub records the new best
  // (docs/behaviour.md: re-save after a best update).
  if (updated && !state.last_ckpt.empty()) {
    PlanStep s;
    s.save = plan_regular(state, cur, E, I);
    plan.steps.push_back(std::move(s));
  }
  return plan;
}

TrimPlan SavePlanner::plan_keep_trim(const HookState& state, int64_t epoch, int64_t iter) const {
  TrimPlan t;
  const int64_t max_keep = cfg_.options.max_keep_ckpts;
  if (max_keep <= 0 || !state.keep_tracked ||
      static_cast<int64_t>(state.keep_ckpt_ids.size()) <= max_keep) {
    return t;
  }
  std::vector<int64_t> keep = state.keep_ckpt_ids;
  while (static_cast<int64_t>(keep.size()) > max_keep) {
    int64_t old = keep.front();
    keep.erase(keep.begin());
    auto it = state.regular_path_by_step.find(old);
    Event prune = make(EventKind::kPruned, it == state.regular_path_by_step.end() ? "" : it->second,
                       old, epoch, iter);
    PrunePayload pp;
    pp.reason = "keep_trim";
    pp.keep_tracked = true;
    pp.keep_ckpt_ids = keep;
    pp.existed = !prune.path.empty() && exists_(prune.path);
    prune.detail = to_detail(pp);
    if (pp.existed) t.remove_after.push_back(prune.path);
    t.prunes.push_back(prune);
  }
  return t;
}

}  // namespace ckptledger
