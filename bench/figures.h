// Machine-readable figures (torch-free: every bench includes it). Each bench prints its human
// table as before and, given `--json FILE`, also writes there every figure it measured: a ratio
// to a baseline measured in the same run, the goal it is held to (if any) and whether it was met.
// scripts/figures.py collects these files into the table of docs/figures.md.
//
//   {"bench": "ledger_bench", "figures": [{"figure": "...", "goal": "<= 1.5", "ratio": 1.43,
//     "value": "257.5 us vs 180.5 us", "met": true}, ...]}
//
// `met` is null for a figure without a goal. `value` is free text: what was measured and the
// baseline, so that the table can show the absolute numbers a goal may be stated in.
#pragma once

#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace ckptledger::bench {

class FigureLog {
 public:
  explicit FigureLog(std::string bench) : bench_(std::move(bench)) {}

  // A figure with a goal: `met` says whether this run met it (nullopt: the goal does not apply to
  // this instance, say one stated for another size).
  void add(const std::string& figure, double ratio, const std::string& goal,
           std::optional<bool> met, const std::string& value = "") {
    push(figure, ratio, goal, met, value);
  }
  // A figure without a goal.
  void add(const std::string& figure, double ratio, const std::string& value = "") {
    push(figure, ratio, "", std::nullopt, value);
  }

  // Writes the figures to `path` (nothing when `path` is empty); throws when it cannot.
  void write(const std::string& path) const {
    if (path.empty()) return;
    nlohmann::json out = {{"bench", bench_}, {"figures", figures_}};
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << out.dump(1) << "\n";
    f.close();
    if (!f) throw std::runtime_error("cannot write " + path);
  }

 private:
  void push(const std::string& figure, double ratio, const std::string& goal,
            std::optional<bool> met, const std::string& value) {
    nlohmann::json j = {{"figure", figure}, {"ratio", ratio}, {"goal", goal}, {"value", value}};
    j["met"] = met ? nlohmann::json(*met) : nlohmann::json(nullptr);
    figures_.push_back(std::move(j));
  }

  std::string bench_;
  nlohmann::json figures_ = nlohmann::json::array();
};

}  // namespace ckptledger::bench
