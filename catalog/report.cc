#include "catalog/report.h"

#include <filesystem>

#include "ckptledger/error.h"
#include "ledger/sha256.h"

namespace ckptledger::report {
namespace {

namespace fs = std::filesystem;

ojson null_if_empty(const std::string& s) { return s.empty() ? ojson(nullptr) : ojson(s); }

// `o` with work_dir and ledger first.
ojson led_by_ledger(const Catalog& cat, const ojson& o) {
  ojson w = {{"work_dir", cat.work_dir()}, {"ledger", cat.ledger_path()}};
  for (auto& [k, v] : o.items()) w[k] = v;
  return w;
}

// `path` on disk against a record: {exists, bytes, sha256, matches_ledger}; the SHA-256 is computed
// only when the size is the recorded one, and neither it nor matches_ledger is given without a
// recorded SHA-256.
ojson disk_state(const std::string& path, int64_t expected_bytes,
                 const std::string& expected_sha256) {
  ojson disk = {{"exists", false}};
  std::error_code ec;
  if (!fs::exists(path, ec)) return disk;
  disk["exists"] = true;
  disk["bytes"] = static_cast<int64_t>(fs::file_size(path, ec));
  if (expected_sha256.empty()) return disk;
  uint64_t size = 0;
  try {
    std::string sha =
        disk["bytes"] == expected_bytes ? Sha256::file_hex(path, &size) : std::string();
    disk["sha256"] = null_if_empty(sha);
    disk["matches_ledger"] = sha == expected_sha256;
  } catch (const Error& e) {
    disk["error"] = e.what();
  }
  return disk;
}

}  // namespace

std::string render(const ojson& doc) { return doc.dump(2) + "\n"; }

ojson parsed(const ojson& v) {
  if (!v.is_string()) return v;
  ojson j = ojson::parse(v.get<std::string>(), nullptr, false);
  return j.is_discarded() ? v : j;
}

ojson history_rows(const ResultSet& rs) {
  ojson a = rs.to_json();
  for (auto& r : a) r["detail"] = parsed(r["detail"]);
  return a;
}

ojson history(Catalog& cat, const HistoryFilter& filter) {
  return history_rows(cat.history(filter));
}

ojson runs(Catalog& cat) {
  ojson a = cat.runs().to_json();
  for (auto& r : a) r["config"] = parsed(r["config"]);
  return a;
}

ojson best_rows(Catalog& cat, const std::optional<std::string>& metric, bool root) {
  ResultSet rs = cat.best(metric);
  ojson all = ojson::array();
  for (size_t i = 0; i < rs.rows.size(); ++i) {
    all.push_back(root ? led_by_ledger(cat, rs.row_object(i)) : rs.row_object(i));
  }
  return all;
}

ojson latest(Catalog& cat, const LatestResult& r, bool root) {
  ojson o = r.checkpoint;
  if (o.is_null()) return o;
  ojson rejected = ojson::array();
  for (const auto& rej : r.rejected)
    rejected.push_back({{"path", rej.path}, {"reason", rej.reason}});
  o["rejected"] = rejected;
  return root ? led_by_ledger(cat, o) : o;
}

ojson show(Catalog& cat, const std::string& path) {
  std::string resolved;
  ResultSet rows = cat.checkpoint_rows(path, &resolved);
  ResultSet events = cat.events_about(resolved);
  if (rows.rows.empty() && events.rows.empty()) return nullptr;
  // The disk, against the newest record.
  std::string expected_sha256;
  int64_t expected_bytes = -1;
  if (!rows.rows.empty()) {
    const size_t last = rows.rows.size() - 1;
    const ojson& b = rows.at(last, "bytes");
    expected_bytes = b.is_number() ? b.get<int64_t>() : -1;
    expected_sha256 = cell_text(rows.at(last, "sha256"));
  }
  ojson o = {{"path", resolved}, {"ledger", cat.ledger_path()}};
  o["checkpoints"] = rows.to_json();
  o["on_disk"] = disk_state(resolved, expected_bytes, expected_sha256);
  // The parts of the newest committed write, when several ranks wrote it (one file: no key).
  for (size_t i = rows.rows.size(); i-- > 0;) {
    if (rows.at(i, "bytes").is_null()) continue;  // a failed write
    ResultSet parts = cat.query(
        "SELECT rank, part_path, bytes, sha256 FROM checkpoint_parts WHERE seq = ? ORDER BY rank",
        {rows.at(i, "seq")});
    if (parts.rows.size() > 1) {
      ojson a = ojson::array();
      for (const auto& p : parts.rows) {
        const int64_t bytes = p[2].is_number() ? p[2].get<int64_t>() : -1;
        a.push_back({{"rank", p[0]},
                     {"path", p[1]},
                     {"bytes", p[2]},
                     {"sha256", p[3]},
                     {"on_disk", disk_state(cell_text(p[1]), bytes, cell_text(p[3]))}});
      }
      o["parts"] = a;
    }
    break;
  }
  o["events"] = history_rows(events);
  return o;
}

ojson verify(Catalog& cat, const VerifyResult& r) {
  ojson files = ojson::array();
  for (const auto& f : r.files) {
    if (f.problem.empty()) continue;
    ojson o = {{"path", f.path},
               {"kind", f.kind},
               {"problem", f.problem},
               {"expected_bytes", f.expected_bytes},
               {"actual_bytes", f.actual_bytes < 0 ? ojson(nullptr) : ojson(f.actual_bytes)},
               {"expected_sha256", f.expected_sha256},
               {"actual_sha256", null_if_empty(f.actual_sha256)}};
    if (!f.checkpoint.empty()) {  // a part: its checkpoint and rank
      o["checkpoint"] = f.checkpoint;
      o["rank"] = f.rank;
    }
    files.push_back(std::move(o));
  }
  return {{"ledger", cat.ledger_path()},
          {"ok", r.ok()},
          {"events_checked", r.chain.events_checked},
          {"chain_ok", r.chain.ok()},
          {"chain_problem", r.chain.ok() ? ojson(nullptr) : ojson(r.chain.problem)},
          {"first_bad_seq", r.chain.ok() ? ojson(nullptr) : ojson(r.chain.first_bad_seq)},
          {"live_files_checked", r.files.size()},
          {"file_problems", files}};
}

ojson state(Catalog& cat, const StateResult& r) {
  const HookState& s = r.state;
  ojson best = ojson::object();
  for (const auto& [k, b] : s.best) best[k] = {{"score", b.score}, {"path", b.path}};
  ojson live = ojson::array();
  for (const auto& [path, f] : s.live) {
    live.push_back({{"path", path},
                    {"role", f.role},
                    {"step", f.step},
                    {"epoch", f.epoch},
                    {"iter", f.iter},
                    {"bytes", f.bytes},
                    {"sha256", f.digest},
                    {"seq", f.seq}});
  }
  return {{"ledger", cat.ledger_path()},
          {"seq", r.seq},
          {"time", null_if_empty(r.time)},
          {"hub", r.hub},
          {"best", best},
          {"auto_key", s.auto_key},
          {"keep_ckpt_ids", s.keep_ckpt_ids},
          {"last_ckpt", null_if_empty(s.last_ckpt)},
          {"runs", s.runs},
          {"live", live}};
}

ojson best_many(const std::vector<std::string>& ledgers, const std::optional<std::string>& metric,
                std::vector<std::string>* errors) {
  ojson all = ojson::array();
  for (const std::string& target : ledgers) {
    try {
      auto cat = Catalog::open(target, /*one_look=*/true);
      for (auto& row : best_rows(*cat, metric, /*root=*/true)) all.push_back(std::move(row));
    } catch (const Error& e) {
      errors->push_back(e.what());
    }
  }
  return all;
}

ojson latest_many(const std::vector<std::string>& ledgers, std::vector<std::string>* errors,
                  std::vector<std::string>* skipped) {
  ojson all = ojson::array();
  for (const std::string& target : ledgers) {
    try {
      auto cat = Catalog::open(target, /*one_look=*/true);
      LatestResult r = cat->latest();
      for (const auto& rej : r.rejected) skipped->push_back(rej.path + ": " + rej.reason);
      ojson o = latest(*cat, r, /*root=*/true);
      if (!o.is_null()) all.push_back(std::move(o));
    } catch (const Error& e) {
      errors->push_back(e.what());
    }
  }
  return all;
}

}  // namespace ckptledger::report
