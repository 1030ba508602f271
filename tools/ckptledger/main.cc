// `ckptledger`: the command-line tool. It does not link libtorch; `simulate` and `demo` are handed
// over to `ckptledger-train` (tools/train/train_main.cc). Each verb opens ledgers read-only unless
// it says otherwise; the catalog verbs (runs, history, best, latest, show, verify, state, export,
// gc) take a ledger file or a work_dir (default: the current directory), print a readable table, or
// JSON with --json.
//
// Exit codes: 0 ok; 1 problems found (verify: chain or files; gc: something to reclaim or record;
// --root: a ledger below DIR could not be read); 2 usage error (malformed arguments); 3 ledger not
// found; 4 corrupt or foreign ledger; 5 ledger of a newer version; 6 I/O error; 7 busy;
// 8 nothing matched (latest: no committed regular checkpoint verifies; show: the ledger knows no
// such file; best --metric: no best for that metric).
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "catalog/catalog.h"
#include "catalog/report.h"
#include "ckptledger/ledger.h"
#include "ledger/sha256.h"
#include "tools/ckptledger/verbs.h"
#include "tools/cli.h"

namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;
using ckptledger::Catalog;
using ckptledger::cell_text;
using ckptledger::TextTable;

using ckptledger::cli::kExitNothing;
using ckptledger::cli::kExitOk;
using ckptledger::cli::kExitProblems;

// Each verb reads its ledger once: a finished ledger is opened immutable, so that nothing is
// created beside it and read-only storage can be read (LedgerOptions::one_look).
constexpr bool kOneLook = true;

void print_json(const ojson& j) { std::fputs(ckptledger::report::render(j).c_str(), stdout); }
void print_text(const std::string& s) { std::fputs(s.c_str(), stdout); }

// `path` relative to `dir` when it is below it (tables only; JSON keeps absolute paths).
std::string rel(const ojson& path, const std::string& dir) {
  return ckptledger::relative_to(cell_text(path), dir);
}

// ---- verbs ------------------------------------------------------------------------------------

struct Common {
  std::string ledger = ".";
  bool json = false;
};

int run_runs(const Common& c) {
  auto cat = Catalog::open(c.ledger, kOneLook);
  if (c.json) {
    print_json(ckptledger::report::runs(*cat));
    return kExitOk;
  }
  ckptledger::ResultSet rs = cat->runs();
  TextTable t({"run_id", "started_at", "ended_at", "ended", "pid", "host", "resumed_from"});
  for (size_t i = 0; i < rs.rows.size(); ++i) {
    t.add({cell_text(rs.at(i, "run_id")), cell_text(rs.at(i, "started_at")),
           cell_text(rs.at(i, "ended_at")), cell_text(rs.at(i, "ended")),
           cell_text(rs.at(i, "pid")), cell_text(rs.at(i, "host")),
           rel(rs.at(i, "resumed_from"), cat->work_dir())});
  }
  print_text(t.render());
  return kExitOk;
}

void print_history(const ckptledger::ResultSet& rs, const std::string& dir, bool json) {
  if (json) {
    print_json(ckptledger::report::history_rows(rs));
    return;
  }
  TextTable t({"seq", "time", "kind", "step", "epoch", "iter", "path", "summary"});
  for (size_t i = 0; i < rs.rows.size(); ++i) {
    t.add({cell_text(rs.at(i, "seq")), cell_text(rs.at(i, "time")), cell_text(rs.at(i, "kind")),
           cell_text(rs.at(i, "step")), cell_text(rs.at(i, "epoch")), cell_text(rs.at(i, "iter")),
           rel(rs.at(i, "path"), dir), cell_text(rs.at(i, "summary"))});
  }
  print_text(t.render());
}

int run_history(const Common& c, const std::vector<std::string>& kinds, const std::string& since,
                const std::string& path, int64_t limit) {
  ckptledger::HistoryFilter f;
  f.kinds = kinds;
  if (!since.empty()) {
    f.since = ckptledger::parse_point(since, "--since", /*counters=*/false);
  }
  if (!path.empty()) f.path = path;
  if (limit < 0) throw ckptledger::UsageError("--limit: must be >= 0");
  f.limit = limit;
  auto cat = Catalog::open(c.ledger, kOneLook);
  print_history(cat->history(f), cat->work_dir(), c.json);
  return kExitOk;
}

// Ledgers to report on: the one given, or every ledger below --root.
std::vector<std::string> targets(const Common& c, const std::string& root) {
  if (root.empty()) return {c.ledger};
  std::vector<std::string> all = ckptledger::find_ledgers(root);
  if (all.empty()) {
    throw ckptledger::Error(
        ckptledger::ErrorCode::kNotFound,
        fmt::format("--root {}: no {} below it", root, ckptledger::kDefaultLedgerName));
  }
  return all;
}

std::string root_rel(const std::string& dir, const std::string& root) {
  std::error_code ec;
  std::string r = fs::relative(dir, fs::absolute(root, ec), ec).string();
  return ec || r.empty() ? dir : r;
}

int run_best(const Common& c, const std::string& metric, const std::string& root) {
  std::optional<std::string> m;
  if (!metric.empty()) m = metric;
  ojson all;
  std::string work_dir;  // single ledger: the table's paths are relative to it
  std::vector<std::string> errors;
  if (root.empty()) {
    auto cat = Catalog::open(c.ledger, kOneLook);
    all = ckptledger::report::best_rows(*cat, m, /*root=*/false);
    work_dir = cat->work_dir();
  } else {
    all = ckptledger::report::best_many(targets(c, root), m, &errors);
    for (const std::string& e : errors) fmt::print(stderr, "ckptledger: error: {}\n", e);
  }
  if (c.json) {
    print_json(all);
  } else {
    TextTable t(root.empty() ? std::vector<std::string>{"metric", "rule", "score", "step", "epoch",
                                                        "iter", "since", "status", "path"}
                             : std::vector<std::string>{"work_dir", "metric", "rule", "score",
                                                        "step", "since", "status", "path"});
    for (const ojson& o : all) {
      if (root.empty()) {
        t.add({cell_text(o["metric"]), cell_text(o["rule"]), cell_text(o["score"]),
               cell_text(o["step"]), cell_text(o["epoch"]), cell_text(o["iter"]),
               cell_text(o["since"]), cell_text(o["status"]), rel(o["path"], work_dir)});
      } else {
        const std::string dir = cell_text(o["work_dir"]);
        t.add({root_rel(dir, root), cell_text(o["metric"]), cell_text(o["rule"]),
               cell_text(o["score"]), cell_text(o["step"]), cell_text(o["since"]),
               cell_text(o["status"]), rel(o["path"], dir)});
      }
    }
    print_text(t.render());
  }
  if (!errors.empty()) return kExitProblems;
  if (m && all.empty()) {
    fmt::print(stderr, "ckptledger: no best checkpoint for metric '{}'\n", *m);
    return kExitNothing;
  }
  return kExitOk;
}

int run_latest(const Common& c, const std::string& root) {
  ojson all = ojson::array();
  std::vector<std::string> errors, skipped;
  if (root.empty()) {
    auto cat = Catalog::open(c.ledger, kOneLook);
    ckptledger::LatestResult r = cat->latest();
    for (const auto& rej : r.rejected) skipped.push_back(rej.path + ": " + rej.reason);
    ojson o = ckptledger::report::latest(*cat, r, /*root=*/false);
    if (!o.is_null()) all.push_back(o);
    for (const std::string& s : skipped) fmt::print(stderr, "ckptledger: skipped {}\n", s);
    if (o.is_null()) {
      fmt::print(stderr, "ckptledger: {}: no committed regular checkpoint verifies\n",
                 cat->ledger_path());
    }
  } else {
    all = ckptledger::report::latest_many(targets(c, root), &errors, &skipped);
    for (const std::string& e : errors) fmt::print(stderr, "ckptledger: error: {}\n", e);
    for (const std::string& s : skipped) fmt::print(stderr, "ckptledger: skipped {}\n", s);
  }
  if (c.json) {
    print_json(root.empty() ? (all.empty() ? ojson(nullptr) : all[0]) : all);
  } else {
    std::string text;
    for (const ojson& o : all) {
      if (!root.empty()) text += root_rel(cell_text(o["work_dir"]), root) + "\n";
      for (const char* k :
           {"path", "step", "epoch", "iter", "bytes", "sha256", "committed_at", "seq", "run_id"}) {
        text += fmt::format("{}{:<13}{}\n", root.empty() ? "" : "  ", k, cell_text(o[k]));
      }
      for (const ojson& p : o.value("parts", ojson::array())) {
        text += fmt::format("{}{:<13}{} ({} bytes, sha256 {:.12})\n", root.empty() ? "" : "  ",
                            "part " + cell_text(p["rank"]), cell_text(p["path"]),
                            cell_text(p["bytes"]), cell_text(p["sha256"]));
      }
    }
    print_text(text);
  }
  if (!errors.empty()) return kExitProblems;
  return all.empty() ? kExitNothing : kExitOk;
}

int run_show(const Common& c, const std::string& path) {
  auto cat = Catalog::open(c.ledger, kOneLook);
  const ojson doc = ckptledger::report::show(*cat, path);
  if (doc.is_null()) {
    fmt::print(stderr, "ckptledger: {}: the ledger knows no file {}\n", cat->ledger_path(), path);
    return kExitNothing;
  }
  if (c.json) {
    print_json(doc);
    return kExitOk;
  }
  const std::string resolved = doc["path"].get<std::string>();
  const ojson& disk = doc["on_disk"];
  std::string ignored;
  ckptledger::ResultSet rows = cat->checkpoint_rows(resolved, &ignored);
  ckptledger::ResultSet events = cat->events_about(resolved);
  std::string out = fmt::format("{}\n", resolved);
  for (size_t i = 0; i < rows.rows.size(); ++i) {
    out += fmt::format("  write #{} (seq {}): {} {}, step {} epoch {} iter {}\n", i + 1,
                       cell_text(rows.at(i, "seq")), cell_text(rows.at(i, "kind")),
                       cell_text(rows.at(i, "status")), cell_text(rows.at(i, "step")),
                       cell_text(rows.at(i, "epoch")), cell_text(rows.at(i, "iter")));
    if (!rows.at(i, "bytes").is_null()) {
      out += fmt::format("    {} bytes, sha256 {}, committed {}\n", cell_text(rows.at(i, "bytes")),
                         cell_text(rows.at(i, "sha256")), cell_text(rows.at(i, "committed_at")));
    }
    if (!rows.at(i, "removed_by_seq").is_null()) {
      out += fmt::format("    removed {} by seq {} ({})\n", cell_text(rows.at(i, "removed_at")),
                         cell_text(rows.at(i, "removed_by_seq")),
                         cell_text(rows.at(i, "removed_reason")));
    }
  }
  if (!disk["exists"].get<bool>()) {
    out += "  on disk: missing\n";
  } else {
    out += fmt::format("  on disk: {} bytes{}\n", cell_text(disk["bytes"]),
                       !disk.contains("matches_ledger")     ? ""
                       : disk["matches_ledger"].get<bool>() ? ", sha256 matches the ledger"
                                                            : ", DIFFERS from the ledger");
  }
  if (doc.contains("parts")) {
    out += "  parts of the newest write:\n";
    for (const ojson& p : doc["parts"]) {
      const ojson& d = p["on_disk"];
      out += fmt::format("    rank {}: {}, {} bytes, sha256 {:.12}, on disk: {}\n",
                         cell_text(p["rank"]), rel(p["path"], cat->work_dir()),
                         cell_text(p["bytes"]), cell_text(p["sha256"]),
                         !d["exists"].get<bool>() ? "MISSING"
                         : d.value("matches_ledger", false)
                             ? "matches the ledger"
                             : cell_text(d["bytes"]) + " bytes, DIFFERS from the ledger");
    }
  }
  print_text(out + "\n");
  print_history(events, cat->work_dir(), false);
  return kExitOk;
}

// A progress bar on stderr, redrawn at most 10 times a second.
class ProgressBar {
 public:
  void update(int64_t done, int64_t total, size_t file, size_t files) {
    auto now = std::chrono::steady_clock::now();
    if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const int width = 30;
    double f = total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
    int fill = static_cast<int>(f * width);
    fmt::print(stderr, "\r[{}{}] {:3.0f}%  file {}/{}  {:.1f}/{:.1f} MiB", std::string(fill, '#'),
               std::string(width - fill, '.'), f * 100, std::min(file + 1, files), files,
               done / 1048576.0, total / 1048576.0);
    drawn_ = true;
  }
  ~ProgressBar() {
    if (drawn_) fmt::print(stderr, "\r{}\r", std::string(79, ' '));
  }

 private:
  std::chrono::steady_clock::time_point last_{};
  bool drawn_ = false;
};

int run_verify(const Common& c) {
  auto cat = Catalog::open(c.ledger, kOneLook);
  ckptledger::VerifyResult r;
  {
    std::optional<ProgressBar> bar;
    ckptledger::ProgressFn progress;
    if (::isatty(STDERR_FILENO)) {
      bar.emplace();
      progress = [&](int64_t d, int64_t t, size_t i, size_t n) { bar->update(d, t, i, n); };
    }
    r = cat->verify(progress);
  }
  if (c.json) {
    print_json(ckptledger::report::verify(*cat, r));
    return r.ok() ? kExitOk : kExitProblems;
  }
  if (r.chain.ok()) {
    fmt::print("{}: hash chain intact ({} events)\n", cat->ledger_path(), r.chain.events_checked);
  } else {
    fmt::print("{}: hash chain BROKEN: {}\n", cat->ledger_path(), r.chain.problem);
  }
  size_t bad = 0;
  for (const auto& f : r.files) {
    if (f.problem.empty()) continue;
    ++bad;
    std::string what = f.problem;
    if (f.problem == "size differs") {
      what += fmt::format(" ({} bytes on disk, {} recorded)", f.actual_bytes, f.expected_bytes);
    }
    if (f.problem == "sha256 differs") {
      what += fmt::format(" ({} on disk, {} recorded)", f.actual_sha256.substr(0, 12),
                          f.expected_sha256.substr(0, 12));
    }
    if (f.checkpoint.empty()) {
      fmt::print("  {} {}: {}\n", f.kind, f.path, what);
    } else {
      fmt::print("  {} {} part {} {}: {}\n", f.kind, f.checkpoint, f.rank, f.path, what);
    }
  }
  fmt::print("{}: {} live files checked (size and SHA-256), {} with problems\n", cat->ledger_path(),
             r.files.size(), bad);
  return r.ok() ? kExitOk : kExitProblems;
}

int run_state(const Common& c, const std::string& as_of) {
  std::optional<ckptledger::Point> p;
  if (!as_of.empty()) p = ckptledger::parse_point(as_of, "--as-of");
  auto cat = Catalog::open(c.ledger, kOneLook);
  ckptledger::StateResult r = cat->state_as_of(p);
  const ckptledger::HookState& s = r.state;
  if (c.json) {
    print_json(ckptledger::report::state(*cat, r));
    return kExitOk;
  }
  std::string out =
      fmt::format("state as of seq {}{}\n", r.seq, r.time.empty() ? "" : " (" + r.time + ")");
  out += "message hub:\n";
  if (r.hub.empty()) out += "  (empty)\n";
  for (auto& [k, v] : r.hub.items()) {
    out += fmt::format("  {:<22}{}\n", k,
                       v.is_string()         ? v.get<std::string>()
                       : v.is_number_float() ? cell_text(v)
                                             : v.dump());
  }
  out += fmt::format("runs so far: {}\n\nlive files:\n", s.runs);
  print_text(out);
  TextTable t({"role", "step", "bytes", "path"});
  for (const auto& [path, f] : s.live) {
    t.add({f.role, std::to_string(f.step), std::to_string(f.bytes), rel(path, cat->work_dir())});
  }
  print_text(t.render());
  return kExitOk;
}

std::string csv_field(const ojson& v) {
  std::string s = cell_text(v);
  if (v.is_number_float()) s = v.dump();  // full precision
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char ch : s) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return q + "\"";
}

int run_export(const Common& c, std::string format, const std::string& view,
               const std::string& output) {
  if (c.json) format = "json";
  auto cat = Catalog::open(c.ledger, kOneLook);
  std::ofstream file;
  if (!output.empty()) {
    file.open(output, std::ios::binary | std::ios::trunc);
    if (!file) {
      throw ckptledger::Error(ckptledger::ErrorCode::kIOError,
                              fmt::format("export: cannot write {}", output));
    }
  }
  std::ostream& out = output.empty() ? std::cout : file;
  const std::string sql = view == "events" ? "SELECT * FROM events ORDER BY seq"
                          : view == "best" ? "SELECT * FROM best ORDER BY metric"
                          : view == "runs" ? "SELECT * FROM runs ORDER BY started_seq"
                          : view == "checkpoint_parts"
                              ? "SELECT * FROM checkpoint_parts ORDER BY seq, rank"
                              : fmt::format("SELECT * FROM {} ORDER BY seq", view);
  bool first = true;
  if (format == "json") out << "[";
  std::vector<std::string> header;
  cat->for_each_row(sql, {},
                    [&](const std::vector<std::string>& cols, const std::vector<ojson>& row) {
                      if (format == "json") {
                        ojson o = ojson::object();
                        for (size_t i = 0; i < cols.size(); ++i) o[cols[i]] = row[i];
                        out << (first ? "\n  " : ",\n  ") << o.dump();
                      } else {
                        if (first) {
                          for (size_t i = 0; i < cols.size(); ++i)
                            out << (i ? "," : "") << csv_field(cols[i]);
                          out << "\r\n";
                        }
                        for (size_t i = 0; i < cols.size(); ++i)
                          out << (i ? "," : "") << csv_field(row[i]);
                        out << "\r\n";
                      }
                      first = false;
                      return true;
                    });
  if (format == "json") out << (first ? "]\n" : "\n]\n");
  out.flush();
  if (!out) throw ckptledger::Error(ckptledger::ErrorCode::kIOError, "export: write failed");
  return kExitOk;
}

// Reported only: unknown files (left alone) and saves a live writer is making.
bool actionable(const ckptledger::Finding& f) {
  return f.finding != "unknown_file" && f.finding != "in_flight";
}

int run_gc(const Common& c, bool apply) {
  std::string ledger_path, work_dir;
  {
    auto cat = Catalog::open(c.ledger, kOneLook);
    ledger_path = cat->ledger_path();
    work_dir = cat->work_dir();
  }
  ckptledger::ReconcilePlan plan =
      apply ? ckptledger::gc_apply(ledger_path) : Catalog::open(ledger_path, kOneLook)->gc_plan();
  size_t actions = 0, removed = 0;
  for (const auto& f : plan.findings) {
    actions += actionable(f);
    removed += !f.remove.empty();
  }
  if (c.json) {
    ojson a = ojson::array();
    for (const auto& f : plan.findings) {
      a.push_back({{"finding", f.finding},
                   {"action", f.action},
                   {"path", f.path},
                   {"detail", f.detail},
                   {"remove", f.remove.empty() ? ojson(nullptr) : ojson(f.remove)},
                   {"bytes", f.bytes < 0 ? ojson(nullptr) : ojson(f.bytes)}});
    }
    print_json({{"ledger", ledger_path},
                {"dry_run", !apply},
                {"findings", a},
                {"ledger_behind_work_dir", plan.behind}});
  } else {
    TextTable t({"finding", "action", "bytes", "path", "detail"});
    for (const auto& f : plan.findings) {
      std::string what = f.action;
      if (!f.remove.empty() && f.remove != f.path) what += ": " + rel(f.remove, work_dir);
      t.add({f.finding, what, f.bytes < 0 ? "" : std::to_string(f.bytes), rel(f.path, work_dir),
             f.detail});
    }
    if (apply) {
      print_text(
          fmt::format("{}: {} finding(s) recorded as `recovered` events, {} file(s) removed\n",
                      ledger_path, plan.findings.size(), removed));
    } else {
      print_text(fmt::format(
          "{}: dry run, nothing changed: {} thing(s) reconciliation would do (gc --apply does "
          "them)\n",
          ledger_path, actions));
    }
    if (!t.empty()) print_text(t.render());
    for (const std::string& b : plan.behind) {
      print_text(fmt::format("ledger behind its work_dir (a training start refuses): {}\n", b));
    }
  }
  return !apply && (actions || !plan.behind.empty()) ? kExitProblems : kExitOk;
}

// The verbs that train through the real hook live in `ckptledger-train` (it links libtorch, which
// costs ~0.5 s of start-up): this binary hands them over, so that the catalog verbs start fast.
constexpr const char* kTrainVerbs[] = {"simulate", "simulate-run", "demo", "demo-train", "train"};

bool is_train_verb(const char* arg) {
  for (const char* v : kTrainVerbs) {
    if (std::strcmp(arg, v) == 0) return true;
  }
  return false;
}

// `export` names two verbs: the catalog's table dump (CSV/JSON, below), and the export of a
// checkpoint as one torch.load-able file, which reads checkpoints and so lives in
// `ckptledger-train`. An argument ending in ".pth" (the output, or the checkpoint) selects the
// latter.
bool is_checkpoint_export(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "export") != 0) return false;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.size() > 4 && a.compare(a.size() - 4, 4, ".pth") == 0) return true;
  }
  return false;
}

// Replaces this process with `ckptledger-train` from this binary's directory, same arguments.
int hand_over(int argc, char** argv) {
  const fs::path train =
      fs::path(ckptledger::cli::self_exe(argv[0])).parent_path() / "ckptledger-train";
  std::vector<char*> args(argv, argv + argc);
  std::string exe = train.string();
  args[0] = exe.data();
  args.push_back(nullptr);
  ::execv(exe.c_str(), args.data());
  fmt::print(stderr,
             "ckptledger: error: `{}` is provided by {}, which cannot be started: {} (install or "
             "build it next to this binary)\n",
             argv[1], exe, std::strerror(errno));
  return ckptledger::cli::kExitIO;
}

// Levenshtein distance, for suggestions.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// The closest of `names` to `word`, when close enough to be a typo.
std::string closest(const std::string& word, const std::vector<std::string>& names) {
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (const std::string& n : names) {
    const size_t d = edit_distance(word, n);
    if (d < best_d) {
      best_d = d;
      best = n;
    }
  }
  return best;
}

// " (did you mean ...?)" for the first unknown verb or option on the command line, else "".
std::string did_you_mean(CLI::App& app, int argc, char** argv) {
  std::vector<std::string> verbs;
  for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; }))
    verbs.push_back(sub->get_name());
  if (argc < 2) return "";
  const std::string first = argv[1];
  CLI::App* sub = nullptr;
  if (first.compare(0, 1, "-") != 0) {
    if (std::find(verbs.begin(), verbs.end(), first) == verbs.end()) {
      const std::string v = closest(first, verbs);
      return v.empty() ? "" : fmt::format(" (did you mean `{}`?)", v);
    }
    sub = app.get_subcommand(first);
  }
  std::vector<std::string> options;
  for (const CLI::Option* o : (sub ? sub : &app)->get_options()) {
    for (const std::string& n : o->get_lnames()) options.push_back("--" + n);
  }
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.compare(0, 2, "--") != 0) continue;
    arg = arg.substr(0, arg.find('='));
    if (std::find(options.begin(), options.end(), arg) != options.end()) continue;
    const std::string o = closest(arg, options);
    return o.empty() ? "" : fmt::format(" (did you mean `{}`?)", o);
  }
  return "";
}

CLI::App* verb(CLI::App& app, const char* name, const char* help, Common& c) {
  CLI::App* v = app.add_subcommand(name, help);
  v->add_option("ledger", c.ledger, "ledger file or work_dir (default: .)");
  v->add_flag("--json", c.json, "machine-readable JSON on stdout");
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && (is_train_verb(argv[1]) || is_checkpoint_export(argc, argv))) {
    return hand_over(argc, argv);
  }
  CLI::App app{"ckptledger: MMEngine's CheckpointHook on an append-only SQLite ledger"};
  app.set_version_flag("--version", std::string("ckptledger ") + CKPTLEDGER_VERSION);
  app.require_subcommand(0, 1);
  app.footer(
      "Exit codes: 0 ok, 1 problems found, 2 usage error, 3 ledger not found, 4 corrupt or "
      "foreign ledger, 5 ledger of a newer version, 6 I/O error, 7 busy, 8 nothing matched.");

  Common c;
  auto* runs =
      verb(app, "runs", "Each process that ran: start, end, how it ended, resumed from", c);
  std::vector<std::string> h_kinds;
  std::string h_since, h_path;
  int64_t h_limit = 0;
  auto* history = verb(app, "history", "The event stream, readable", c);
  history->add_option("--kind", h_kinds, "only these kinds (repeat or comma-separate)")
      ->delimiter(',')
      ->allow_extra_args(false);
  history->add_option("--since", h_since, "from this seq, or this time (ISO-8601), on");
  history->add_option("--path", h_path, "only events about this file");
  history->add_option("--limit", h_limit, "only the newest N matching events");

  std::string metric, best_root;
  auto* best = verb(app, "best", "The current best checkpoint per metric", c);
  best->add_option("--metric", metric, "only this metric");
  best->add_option("--root", best_root, "every work_dir below DIR (*/ckptledger.sqlite)");

  std::string latest_root;
  auto* latest = verb(app, "latest",
                      "The newest committed regular checkpoint whose file verifies (what a resume "
                      "loads)",
                      c);
  latest->add_option("--root", latest_root, "every work_dir below DIR (*/ckptledger.sqlite)");

  std::string show_path;
  auto* show = app.add_subcommand("show", "Everything known about one checkpoint file");
  show->add_option("path", show_path, "the checkpoint file (absolute, relative, or a file name)")
      ->required();
  show->add_option("ledger", c.ledger, "ledger file or work_dir (default: .)");
  show->add_flag("--json", c.json, "machine-readable JSON on stdout");

  auto* verify = verb(app, "verify",
                      "Recompute the hash chain and check every live file's size and SHA-256", c);

  std::string as_of;
  auto* state = verb(app, "state", "The hook state (message hub) replayed up to a point", c);
  state->add_option("--as-of", as_of, "SEQ, TIME (ISO-8601), epoch:N or iter:N (default: now)");

  std::string exp_format = "csv", exp_view = "events", exp_output;
  auto* exportv =
      verb(app, "export",
           "Dump a table or view as CSV or JSON; with an argument ending in .pth, write "
           "a checkpoint as one torch.load-able file (ckptledger-train export)",
           c);
  exportv->add_option("--format", exp_format, "csv (default) or json")
      ->check(CLI::IsMember({"csv", "json"}));
  exportv
      ->add_option("--view", exp_view,
                   "events (default), checkpoints, checkpoint_parts, best, runs or history")
      ->check(
          CLI::IsMember({"events", "checkpoints", "checkpoint_parts", "best", "runs", "history"}));
  exportv->add_option("-o,--output", exp_output, "file to write (default: stdout)");

  bool gc_apply = false;
  auto* gc = verb(app, "gc",
                  "What reconciliation would do (temp files, pruned files still on disk, live "
                  "files missing); a dry run unless --apply",
                  c);
  gc->add_flag("--apply", gc_apply,
               "do it, as a training start would: takes the writer's lock (exit 7 while a "
               "training process holds it), records each finding as a `recovered` event");

  ckptledger::cli::WatchOptions w;
  auto* watch = app.add_subcommand(
      "watch", "Print each committed event once, in order, as it commits (like tail -f)");
  watch->add_option("ledger", w.ledger, "ledger file or work_dir (default: .); may not exist yet");
  watch->add_option("--since", w.since, "the last seq already seen: start after it (default 0)");
  watch->add_option("--kind", w.kinds, "only these kinds (repeat or comma-separate)")
      ->delimiter(',')
      ->allow_extra_args(false);
  watch->add_flag("--json", w.json, "one JSON object per line (a history row), flushed");
  watch->add_flag("--until-finished", w.until_finished,
                  "exit once the newest run has finished and no process writes");

  ckptledger::cli::ServeOptions sv;
  auto* serve = app.add_subcommand(
      "serve", "Serve the ledger read-only over HTTP: JSON, events, metrics, files, dashboard");
  serve->add_option("ledger", sv.target, "work_dir or ledger file (default: .)");
  serve->add_option("--root", sv.root, "serve every work_dir below DIR (*/ckptledger.sqlite)");
  serve->add_option("--bind", sv.bind, "address to listen on (default 127.0.0.1)");
  serve->add_option("--port", sv.port, "TCP port (default 8470; 0: any free port)");
  serve->add_option("--token-file", sv.token_file,
                    "require `Authorization: Bearer <first line of FILE>`");
  serve->add_option("--max-connections", sv.max_connections, "at most N connections (default 512)");
  serve->add_option("--threads", sv.threads, "I/O threads (default 2)");
  serve->add_option("--nice", sv.nice,
                    "niceness increment of the server's threads, 0..19 (default 10: a training "
                    "process on the same cores goes first)");
  serve->add_option("--dashboard-dir", sv.dashboard_dir,
                    "serve the dashboard's files from DIR instead of the built-in copy");

  // Listed for --help; hand_over() takes them before parsing.
  app.add_subcommand("simulate",
                     "Run a scenario through the real hook and write its trace (ckptledger-train)")
      ->allow_extras();
  app.add_subcommand("demo",
                     "Train a small real model, SIGKILL it, resume it from the ledger, compare it "
                     "with an uninterrupted run and show the ledger (ckptledger-train)")
      ->allow_extras();
  app.add_subcommand("train",
                     "Train the demo's model with a chosen optimizer and scheduler through the "
                     "hook, resuming from the work_dir (ckptledger-train)")
      ->allow_extras();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e) == 0 ? kExitOk : ckptledger::cli::kExitUsage;
    fmt::print(stderr, "ckptledger: usage error: {}{}; see ckptledger --help\n", e.what(),
               did_you_mean(app, argc, argv));
    return ckptledger::cli::kExitUsage;
  }
  return ckptledger::cli::guarded([&]() -> int {
    if (*runs) return run_runs(c);
    if (*history) return run_history(c, h_kinds, h_since, h_path, h_limit);
    if (*best) return run_best(c, metric, best_root);
    if (*latest) return run_latest(c, latest_root);
    if (*show) return run_show(c, show_path);
    if (*verify) return run_verify(c);
    if (*state) return run_state(c, as_of);
    if (*exportv) return run_export(c, exp_format, exp_view, exp_output);
    if (*gc) return run_gc(c, gc_apply);
    if (*watch) return ckptledger::cli::run_watch(w);
    if (*serve) return ckptledger::cli::run_serve(sv);
    // No verb: the help, on stderr, as a usage error (a script that forgot the verb must fail).
    std::fputs(app.help().c_str(), stderr);
    return ckptledger::cli::kExitUsage;
  });
}
