// The catalog: the views of migration 0003 (docs/ledger-format.md), the Catalog queries, and the
// CLI verbs (run through CKPT_BIN) with their exit codes (docs/cli.md). Ledgers are built by
// appending the events the hook appends, directly with ckptledger::Ledger (no libtorch), with real
// files on disk.
//
// CatalogWriter.Run is not a test: tests/catalog_interop_test.py runs this binary with
// --gtest_filter=CatalogWriter.Run and CKPT_WRITER_* set, as a writer whose append latency it
// measures while Python holds a read transaction open. Without CKPT_WRITER_LEDGER it skips.
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "catalog/catalog.h"
#include "catalog/follow.h"
#include "catalog/report.h"
#include "ckptledger/hook_state.h"
#include "ckptledger/ledger.h"
#include "ledger/sha256.h"
#include "policy/hook_events.h"
#include "policy/parts.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ojson = nlohmann::ordered_json;

const char* kConfig =
    R"({"type":"CheckpointHook","interval":1,"max_keep_ckpts":2,"save_best":"acc","rule":"greater"})";

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const std::string& p, const std::string& content) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << content;
}

void raw_sql(const std::string& p, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(p.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  std::string msg = err ? err : "";
  sqlite3_free(err);
  sqlite3_close(db);
  ASSERT_EQ(rc, SQLITE_OK) << msg;
}

struct Cli {
  int rc = -1;
  std::string out, err;
  ojson json() const { return ojson::parse(out); }
};

// Appends what the hook appends, writing and removing the files as the hook does.
class CatalogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("ckptledger_catalog_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    work_ = (dir_ / "work").string();
    fs::create_directories(work_);
    ledger_path_ = work_ + "/" + kDefaultLedgerName;
  }
  void TearDown() override {
    w_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // ---- the writer (one process = one open; a new open is a new run_id) ----
  Ledger& writer() {
    if (!w_) w_ = Ledger::open(ledger_path_);
    return *w_;
  }
  void crash() { w_.reset(); }
  int64_t append(Event e) { return writer().append(e); }
  std::vector<int64_t> append_batch(std::vector<Event> events) {
    writer().append_batch(events);
    std::vector<int64_t> seqs;
    for (const Event& e : events) seqs.push_back(e.seq);
    return seqs;
  }

  std::string file(const std::string& name) const { return work_ + "/" + name; }
  static std::string content(const std::string& path, int version) {
    return fmt::format("checkpoint {} v{}\n", path, version);
  }
  static Event make(EventKind k, const std::string& path, int64_t epoch) {
    Event e;
    e.kind = k;
    e.path = path;
    e.step = epoch;
    e.epoch = epoch;
    e.iter = epoch * 10;
    return e;
  }

  int64_t run_started(bool resume) {
    RunStartedPayload rs;
    rs.config = kConfig;
    rs.work_dir = rs.out_dir = work_;
    rs.pid = ::getpid();
    rs.host = "testhost";
    rs.resume = resume;
    rs.version = "0.1.0";
    Event e;
    e.kind = EventKind::kRunStarted;
    e.detail = to_detail(rs);
    return append(e);
  }
  int64_t resumed(const std::string& path, int64_t epoch) {
    Event e = make(EventKind::kResumed, path, epoch);
    e.step.reset();
    ResumedPayload rp;
    rp.source = "auto";
    e.detail = to_detail(rp);
    return append(e);
  }
  int64_t begun(const std::string& path, int64_t epoch, const std::string& role) {
    Event e = make(EventKind::kSaveBegun, path, epoch);
    SavePayload sp;
    sp.role = role;
    e.detail = to_detail(sp);
    return append(e);
  }
  // save_begun, the file, then [save_committed, pruned...] in one transaction, then the removals.
  // Returns the seqs of the transaction.
  std::vector<int64_t> save_regular(int64_t epoch, std::vector<int64_t> keep,
                                    const std::vector<std::string>& prune, int version = 1) {
    const std::string path = file(fmt::format("epoch_{}.pth", epoch));
    begun(path, epoch, "regular");
    const std::string c = content(path, version);
    spit(path, c);
    Event e = make(EventKind::kSaveCommitted, path, epoch);
    e.bytes = static_cast<int64_t>(c.size());
    e.digest = Sha256::hex(c);
    SavePayload sp;
    sp.role = "regular";
    sp.keep_tracked = true;
    sp.keep_ckpt_ids = std::move(keep);
    e.detail = to_detail(sp);
    std::vector<Event> batch{e};
    for (const std::string& p : prune) batch.push_back(pruned(p, epoch, "rotation", path));
    auto seqs = append_batch(batch);
    for (const std::string& p : prune) fs::remove(p);
    return seqs;
  }
  static Event pruned(const std::string& path, int64_t epoch, const std::string& reason,
                      const std::string& by) {
    Event p = make(EventKind::kPruned, path, epoch);
    PrunePayload pp;
    pp.reason = reason;
    pp.superseded_by = by;
    p.detail = to_detail(pp);
    return p;
  }
  // [save_committed, best_updated, pruned(best_replaced)?]
  std::vector<int64_t> save_best(const std::string& metric, int64_t epoch, double score,
                                 const std::string& previous) {
    const std::string path = file(fmt::format("best_{}_epoch_{}.pth", metric, epoch));
    begun(path, epoch, "best");
    const std::string c = content(path, 1);
    spit(path, c);
    Event e = make(EventKind::kSaveCommitted, path, epoch);
    e.bytes = static_cast<int64_t>(c.size());
    e.digest = Sha256::hex(c);
    SavePayload sp;
    sp.role = "best";
    sp.key = metric;
    e.detail = to_detail(sp);
    Event b = make(EventKind::kBestUpdated, path, epoch);
    b.metric = metric;
    b.score = score;
    BestPayload bp;
    bp.rule = "greater";
    bp.previous_path = previous;
    b.detail = to_detail(bp);
    std::vector<Event> batch{e, b};
    if (!previous.empty()) batch.push_back(pruned(previous, epoch, "best_replaced", path));
    auto seqs = append_batch(batch);
    if (!previous.empty()) fs::remove(previous);
    return seqs;
  }
  int64_t validated(int64_t epoch, std::vector<std::pair<std::string, std::optional<double>>> m) {
    Event e = make(EventKind::kValidated, "", epoch);
    ValidatedPayload vp;
    vp.metrics = std::move(m);
    e.detail = to_detail(vp);
    return append(e);
  }
  int64_t save_failed(const std::string& path, const std::string& error) {
    Event e;
    e.kind = EventKind::kSaveFailed;
    e.path = path;
    SavePayload sp;
    sp.error = error;
    e.detail = to_detail(sp);
    return append(e);
  }
  int64_t published(const std::string& path, const std::string& source, bool already_present) {
    const std::string c = content(path, 1);
    if (!already_present) spit(path, c);
    Event e;
    e.kind = EventKind::kPublished;
    e.path = path;
    e.bytes = static_cast<int64_t>(c.size());
    e.digest = Sha256::hex(c);
    PublishedPayload pp;
    pp.source = source;
    pp.keys = {"meta", "state_dict"};
    pp.already_present = already_present;
    e.detail = to_detail(pp);
    return append(e);
  }
  int64_t recovered(const std::string& path, const std::string& finding) {
    Event e;
    e.kind = EventKind::kRecovered;
    e.path = path;
    RecoveredPayload rp;
    rp.finding = finding;
    rp.action = "none";
    rp.detail = "SHA-256 differs";
    e.detail = to_detail(rp);
    return append(e);
  }
  int64_t run_finished() {
    Event e;
    e.kind = EventKind::kRunFinished;
    return append(e);
  }

  // A save of a job of `world` ranks, as rank 0 commits it (SavePayload v2): part 0 is
  // epoch_<epoch>.pth, part r > 0 the file policy/parts.h names for save `save_no` of run 1 (one
  // part for "main"). save_begun, every part's file, then [save_committed, pruned...]; the pruned
  // checkpoints' files and `prune_parts` are then removed, as the hook removes them.
  struct PartsSave {
    int64_t seq = 0;
    std::string path;
    std::vector<std::string> parts;  // rank order, part 0 = path
    SavePayload payload;
    Event commit;
  };
  PartsSave parts_save(int64_t epoch, int world, const std::string& layout, int64_t save_no,
                       std::vector<int64_t> keep = {}, const std::vector<std::string>& prune = {},
                       const std::vector<std::string>& prune_parts = {}, bool commit = true) {
    PartsSave ps;
    ps.path = file(fmt::format("epoch_{}.pth", epoch));
    begun(ps.path, epoch, "regular");
    SavePayload& sp = ps.payload;
    sp.v = 2;
    sp.role = "regular";
    sp.keep_tracked = !keep.empty();
    sp.keep_ckpt_ids = std::move(keep);
    sp.layout = layout;
    sp.world_size = world;
    sp.coord_us = 700;
    for (int r = 0; r < (layout == "main" ? 1 : world); ++r) {
      const std::string p = r == 0 ? ps.path : part_path(ps.path, r, 1, save_no);
      const std::string c = content(p, static_cast<int>(save_no)) + std::string(r * 7, 'x');
      spit(p, c);
      ps.parts.push_back(p);
      sp.part_paths.push_back(p);
      sp.part_bytes.push_back(static_cast<int64_t>(c.size()));
      sp.part_sha256.push_back(Sha256::hex(c));
      sp.part_stall_us.push_back(100 + r);
    }
    sp.stall_us = 100;
    ps.commit = make(EventKind::kSaveCommitted, ps.path, epoch);
    ps.commit.bytes = sp.part_bytes[0];
    ps.commit.digest = sp.part_sha256[0];
    ps.commit.detail = to_detail(sp);
    if (!commit) return ps;
    std::vector<Event> batch{ps.commit};
    for (const std::string& p : prune) batch.push_back(pruned(p, epoch, "rotation", ps.path));
    ps.seq = append_batch(batch)[0];
    for (const std::string& p : prune) fs::remove(p);
    for (const std::string& p : prune_parts) fs::remove(p);
    return ps;
  }
  static void flip_first_byte(const std::string& path) {
    std::string c = slurp(path);
    c[0] ^= 1;
    spit(path, c);
  }

  // The story every view test reads: three processes (a crash, a finish, one still open).
  struct Story {
    int64_t a_start, a_last, torn_begun, b_start, b_resumed, b_begun, failed, e4, prune2, pub,
        pub_again, corrupt, b_finish, c_start, e5, best5;
    std::vector<int64_t> e1, e1_again, best1, e2, best2, e2_again, e3;
  };
  Story story() {
    Story s;
    // Process A: fresh start, epochs 1-3, dies in the middle of epoch 4's save.
    s.a_start = run_started(false);
    s.e1 = save_regular(1, {1}, {});
    validated(1, {{"acc", 0.5}, {"loss", std::nullopt}});
    s.best1 = save_best("acc", 1, 0.5, "");
    s.e1_again = save_regular(1, {1}, {}, 2);  // re-save after the best: overwrites epoch_1.pth
    s.e2 = save_regular(2, {1, 2}, {});
    validated(2, {{"acc", 0.7}, {"loss", 0.3}});
    s.best2 = save_best("acc", 2, 0.7, file("best_acc_epoch_1.pth"));
    s.e2_again = save_regular(2, {1, 2}, {}, 2);
    s.e3 = save_regular(3, {2, 3}, {file("epoch_1.pth")});
    s.torn_begun = begun(file("epoch_4.pth"), 4, "regular");
    s.a_last = s.torn_begun;
    crash();
    // Process B: resumes from epoch 3, a failed save and its retry, a publish, finishes.
    s.b_start = run_started(true);
    s.b_resumed = resumed(file("epoch_3.pth"), 3);
    s.b_begun = begun(file("epoch_4.pth"), 4, "regular");
    s.failed = save_failed(file("epoch_4.pth"), "cannot write: No space left on device");
    auto e4 = save_regular(4, {3, 4}, {file("epoch_2.pth")});
    s.e4 = e4[0];
    s.prune2 = e4[1];
    s.pub = published(file("epoch_4-0123abcd.pth"), file("epoch_4.pth"), false);
    s.pub_again = published(file("epoch_4-0123abcd.pth"), file("epoch_4.pth"), true);
    s.corrupt = recovered(file("epoch_3.pth"), "corrupt");
    s.b_finish = run_finished();
    crash();
    // Process C: starts without resume (a fresh message hub), still running.
    s.c_start = run_started(false);
    s.e5 = save_regular(5, {5}, {})[0];
    validated(5, {{"acc", 0.2}, {"loss", 0.9}});
    s.best5 = save_best("acc", 5, 0.2, "")[1];
    return s;
  }

  std::unique_ptr<Catalog> catalog() { return Catalog::open(work_); }

  Cli cli(const std::string& args, const char* bin = std::getenv("CKPT_BIN")) {
    Cli r;
    if (!bin) {
      ADD_FAILURE() << "CKPT_BIN is not set (ctest sets it)";
      return r;
    }
    const std::string out = (dir_ / "cli.out").string(), err = (dir_ / "cli.err").string();
    const std::string cmd = fmt::format("'{}' {} > '{}' 2> '{}'", bin, args, out, err);
    int st = std::system(cmd.c_str());
    r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
  }

  fs::path dir_;
  std::string work_;
  std::string ledger_path_;
  std::unique_ptr<Ledger> w_;
};

std::vector<std::string> column_names(Catalog& c, const std::string& view) {
  return c.query("SELECT * FROM " + view + " LIMIT 0").columns;
}

// ---- the views: a contract ------------------------------------------------------------------

TEST_F(CatalogTest, ViewsHaveTheirContractColumns) {
  run_started(false);
  crash();
  auto c = catalog();
  EXPECT_THAT(column_names(*c, "checkpoints"),
              ElementsAre("path", "kind", "step", "epoch", "iter", "status", "bytes", "sha256",
                          "committed_at", "removed_at", "removed_reason", "removed_by_seq", "seq",
                          "run_id"));
  EXPECT_THAT(column_names(*c, "best"),
              ElementsAre("metric", "rule", "score", "path", "step", "epoch", "iter", "since",
                          "seq", "bytes", "sha256", "status"));
  EXPECT_THAT(
      column_names(*c, "runs"),
      ElementsAre("run_id", "started_at", "ended_at", "ended", "config", "resumed_from", "resume",
                  "pid", "host", "work_dir", "out_dir", "version", "started_seq", "last_seq"));
  EXPECT_THAT(column_names(*c, "history"),
              ElementsAre("seq", "time", "ts_us", "run_id", "kind", "step", "epoch", "iter", "path",
                          "metric", "score", "bytes", "sha256", "summary", "detail"));
}

TEST_F(CatalogTest, CheckpointsViewTellsEachFilesStory) {
  Story s = story();
  auto c = catalog();
  ResultSet rs = c->query(
      "SELECT path, kind, step, status, removed_reason, removed_by_seq, seq, bytes IS NOT NULL, "
      "length(sha256), committed_at IS NOT NULL, removed_at IS NOT NULL FROM checkpoints "
      "ORDER BY seq");
  std::vector<std::string> got;
  for (const auto& r : rs.rows) {
    std::string name = fs::path(r[0].get<std::string>()).filename().string();
    got.push_back(fmt::format("{} {} {} {} {} {} {}", r[6].get<int64_t>(), name,
                              r[1].get<std::string>(), cell_text(r[2]), r[3].get<std::string>(),
                              cell_text(r[4]), cell_text(r[5])));
    const bool committed = r[3] != "failed";
    EXPECT_EQ(r[7], committed ? 1 : 0) << got.back();
    EXPECT_EQ(r[8], committed ? ojson(64) : ojson(nullptr)) << got.back();
    EXPECT_EQ(r[9], committed ? 1 : 0) << got.back();
    EXPECT_EQ(r[10], r[3] == "live" ? 0 : 1) << got.back();
  }
  const std::string enospc = "cannot write: No space left on device";
  EXPECT_THAT(
      got,
      ElementsAreArray({
          fmt::format("{} epoch_1.pth regular 1 replaced overwritten {}", s.e1[0], s.e1_again[0]),
          fmt::format("{} best_acc_epoch_1.pth best 1 replaced best_replaced {}", s.best1[0],
                      s.best2[2]),
          fmt::format("{} epoch_1.pth regular 1 pruned rotation {}", s.e1_again[0], s.e3[1]),
          fmt::format("{} epoch_2.pth regular 2 replaced overwritten {}", s.e2[0], s.e2_again[0]),
          fmt::format("{} best_acc_epoch_2.pth best 2 live  ", s.best2[0]),
          fmt::format("{} epoch_2.pth regular 2 pruned rotation {}", s.e2_again[0], s.prune2),
          fmt::format("{} epoch_3.pth regular 3 corrupt corrupt {}", s.e3[0], s.corrupt),
          // A save whose process died before its outcome: failed, torn, ended by the retry.
          fmt::format("{} epoch_4.pth regular 4 failed torn_save {}", s.torn_begun, s.b_begun),
          fmt::format("{} epoch_4.pth regular 4 failed {} {}", s.failed, enospc, s.failed),
          fmt::format("{} epoch_4.pth regular 4 live  ", s.e4),
          // The second publish of the same content wrote no file: no row.
          fmt::format("{} epoch_4-0123abcd.pth published  live  ", s.pub),
          fmt::format("{} epoch_5.pth regular 5 live  ", s.e5),
          fmt::format("{} best_acc_epoch_5.pth best 5 live  ", s.best5 - 1),
      }));
}

TEST_F(CatalogTest, LiveCheckpointsAreTheFoldsLiveFiles) {
  story();
  auto c = catalog();
  HookState st;
  HookStateFold fold(st);
  c->ledger().replay(fold);
  ResultSet live = c->query("SELECT path, sha256 FROM checkpoints WHERE status = 'live'");
  std::map<std::string, std::string> view;
  for (const auto& r : live.rows) view[r[0]] = r[1];
  std::map<std::string, std::string> folded;
  for (const auto& [p, f] : st.live) folded[p] = f.digest;
  EXPECT_EQ(view, folded);
}

TEST_F(CatalogTest, BestViewIsTheHookStatesBestSinceTheLastFreshStart) {
  Story s = story();
  {
    auto c = catalog();
    ResultSet b = c->best(std::nullopt);
    ASSERT_EQ(b.rows.size(), 1u);
    // Process C started without resume: its 0.2 is the best, not A's 0.7 (as the hook's hub).
    EXPECT_EQ(b.at(0, "metric"), "acc");
    EXPECT_EQ(b.at(0, "rule"), "greater");
    EXPECT_DOUBLE_EQ(b.at(0, "score").get<double>(), 0.2);
    EXPECT_EQ(b.at(0, "path"), file("best_acc_epoch_5.pth"));
    EXPECT_EQ(b.at(0, "step"), 5);
    EXPECT_EQ(b.at(0, "seq"), s.best5);
    EXPECT_EQ(b.at(0, "status"), "live");
    EXPECT_EQ(b.at(0, "sha256"), Sha256::hex(content(file("best_acc_epoch_5.pth"), 1)));
    HookState st;
    HookStateFold fold(st);
    c->ledger().replay(fold);
    ASSERT_EQ(st.best.size(), 1u);
    EXPECT_EQ(st.best.at("acc").path, b.at(0, "path"));
    EXPECT_DOUBLE_EQ(st.best.at("acc").score, b.at(0, "score").get<double>());
    EXPECT_TRUE(c->best(std::string("loss")).rows.empty());
  }
  // A new best in C replaces it; the view follows.
  save_best("acc", 6, 0.3, file("best_acc_epoch_5.pth"));
  ResultSet b = catalog()->best(std::string("acc"));
  ASSERT_EQ(b.rows.size(), 1u);
  EXPECT_EQ(b.at(0, "path"), file("best_acc_epoch_6.pth"));
}

TEST_F(CatalogTest, RunsViewSaysHowEachProcessEnded) {
  Story s = story();
  ResultSet r = catalog()->runs();
  ASSERT_EQ(r.rows.size(), 3u);
  EXPECT_EQ(r.at(0, "ended"), "crashed");
  EXPECT_EQ(r.at(0, "last_seq"), s.a_last);
  EXPECT_TRUE(r.at(0, "resumed_from").is_null());
  EXPECT_EQ(r.at(0, "resume"), 0);
  EXPECT_EQ(r.at(0, "started_seq"), s.a_start);
  EXPECT_EQ(r.at(1, "ended"), "finished");
  EXPECT_EQ(r.at(1, "resumed_from"), file("epoch_3.pth"));
  EXPECT_EQ(r.at(1, "resume"), 1);
  EXPECT_EQ(r.at(1, "last_seq"), s.b_finish);
  EXPECT_EQ(r.at(1, "config"), kConfig);
  EXPECT_EQ(r.at(1, "host"), "testhost");
  EXPECT_EQ(r.at(1, "work_dir"), work_);
  // C holds the writer lock: the catalog says running (the view: unknown); ended_at unknown.
  EXPECT_EQ(r.at(2, "ended"), "running");
  EXPECT_TRUE(r.at(2, "ended_at").is_null());
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_LE(r.at(i, "started_at").get<std::string>(), r.at(i, "ended_at").get<std::string>());
  }
  EXPECT_EQ(
      catalog()->query("SELECT ended FROM runs WHERE started_seq = ?", {s.c_start}).rows[0][0],
      "unknown");
  crash();
  EXPECT_EQ(catalog()->runs().at(2, "ended"), "crashed");
}

TEST_F(CatalogTest, HistoryViewIsReadable) {
  Story s = story();
  auto c = catalog();
  auto summary = [&](int64_t seq) {
    return c->query("SELECT summary FROM history WHERE seq = ?", {seq}).rows.at(0).at(0);
  };
  EXPECT_THAT(summary(s.a_start).get<std::string>(),
              HasSubstr(fmt::format("pid {} on testhost, fresh start", ::getpid())));
  EXPECT_EQ(summary(s.a_start + 3), "acc=0.5, loss=None");
  EXPECT_EQ(summary(s.best2[1]), "acc = 0.7 (greater; previous none)");
  EXPECT_EQ(summary(s.best2[2]), "best_replaced, superseded by best_acc_epoch_2.pth");
  EXPECT_EQ(summary(s.e3[1]), "rotation, superseded by epoch_3.pth");
  EXPECT_THAT(summary(s.e3[0]).get<std::string>(), HasSubstr("regular, "));
  EXPECT_THAT(summary(s.e3[0]).get<std::string>(), HasSubstr(", keep [2,3]"));
  EXPECT_EQ(summary(s.failed), "failed: cannot write: No space left on device");
  EXPECT_EQ(summary(s.b_resumed), "resumed (auto)");
  EXPECT_EQ(summary(s.pub_again).get<std::string>(),
            fmt::format("from {}, keys [\"meta\",\"state_dict\"] (already present)",
                        file("epoch_4.pth")));
  EXPECT_EQ(summary(s.corrupt), "corrupt: none (SHA-256 differs)");
  EXPECT_EQ(summary(s.b_finish), "training finished");
  // Every event once, in order, with its time as ISO-8601 text.
  ResultSet h = c->query("SELECT seq, time, ts_us FROM history ORDER BY seq");
  ASSERT_EQ(static_cast<int64_t>(h.rows.size()), c->ledger().last_seq());
  for (size_t i = 0; i < h.rows.size(); ++i) {
    EXPECT_EQ(h.rows[i][0], static_cast<int64_t>(i + 1));
    EXPECT_EQ(h.rows[i][1], format_iso8601_us(h.rows[i][2].get<int64_t>()));
  }
}

TEST_F(CatalogTest, OldLedgerGetsTheViewsWithoutBeingWritten) {
  {
    LedgerOptions o;
    o.migrate_to = 2;  // as written by the binary before migration 0003
    w_ = Ledger::open(ledger_path_, o);
    run_started(false);
    save_regular(1, {1}, {});
    save_best("acc", 1, 0.5, "");
    crash();
  }
  raw_sql(ledger_path_, "PRAGMA wal_checkpoint(TRUNCATE)");
  const std::string before = slurp(ledger_path_);
  {
    auto c = catalog();
    EXPECT_EQ(c->ledger().schema_version(), 2);
    EXPECT_EQ(c->best(std::nullopt).rows.size(), 1u);
    EXPECT_EQ(c->query("SELECT count(*) FROM checkpoints WHERE status = 'live'").rows[0][0], 2);
    EXPECT_EQ(c->runs().rows.size(), 1u);
    EXPECT_EQ(c->latest().checkpoint["path"], file("epoch_1.pth"));
    EXPECT_EQ(c->query("SELECT count(*) FROM checkpoint_parts").rows[0][0], 0);  // 0006, TEMP
  }
  EXPECT_TRUE(slurp(ledger_path_) == before) << "the catalog wrote to an old ledger";
}

TEST_F(CatalogTest, ReadersNeverTakeTheWriterLock) {
  run_started(false);
  crash();
  auto c = catalog();
  c->query("BEGIN");
  c->query("SELECT count(*) FROM checkpoints");
  // A writer opens and appends while the catalog holds a read transaction.
  run_started(true);
  EXPECT_EQ(writer().last_seq(), 2);
  EXPECT_TRUE(c->writer_active());
  // The reader still sees its snapshot.
  EXPECT_EQ(c->query("SELECT count(*) FROM events").rows[0][0], 1);
  c->query("COMMIT");
  EXPECT_EQ(c->query("SELECT count(*) FROM events").rows[0][0], 2);
}

// ---- Catalog queries -------------------------------------------------------------------------

TEST_F(CatalogTest, LatestIsTheNewestRegularFileThatVerifies) {
  Story s = story();
  crash();
  LatestResult r = catalog()->latest();
  EXPECT_EQ(r.checkpoint["path"], file("epoch_5.pth"));
  EXPECT_EQ(r.checkpoint["seq"], s.e5);
  EXPECT_EQ(r.checkpoint["step"], 5);
  EXPECT_EQ(r.checkpoint["epoch"], 5);
  EXPECT_EQ(r.checkpoint["iter"], 50);
  EXPECT_EQ(r.checkpoint["sha256"], Sha256::hex(content(file("epoch_5.pth"), 1)));
  EXPECT_TRUE(r.rejected.empty());
  // Same size, one byte flipped: skipped for epoch_4 (epoch_3 is recorded corrupt: never chosen).
  std::string c5 = slurp(file("epoch_5.pth"));
  c5[0] ^= 1;
  spit(file("epoch_5.pth"), c5);
  r = catalog()->latest();
  EXPECT_EQ(r.checkpoint["path"], file("epoch_4.pth"));
  ASSERT_EQ(r.rejected.size(), 1u);
  EXPECT_EQ(r.rejected[0].path, file("epoch_5.pth"));
  EXPECT_EQ(r.rejected[0].reason, "sha256 differs");
  fs::remove(file("epoch_4.pth"));
  r = catalog()->latest();
  EXPECT_TRUE(r.checkpoint.is_null());
  ASSERT_EQ(r.rejected.size(), 2u);
  EXPECT_EQ(r.rejected[1].reason, "missing");
}

// A writer replacing a committed file records the new bytes (save_prepared), renames, then
// commits. A reader between the rename and the commit sees a file that differs from the commit it
// read: it re-reads the ledger, and a file matching a newer save_prepared (or save_committed) is a
// replacement, not corruption. Without that, `verify` failed and `latest` answered an older file a
// few times in a thousand calls during a healthy run.
TEST_F(CatalogTest, AFileReplacedUnderACommitIsNotReportedCorruptWhileItsCommitIsPending) {
  run_started(false);
  save_regular(1, {1}, {});
  save_regular(2, {1, 2}, {});
  const std::string path = file("epoch_2.pth");
  begun(path, 2, "regular");
  const std::string v2 = content(path, 2) + "and longer";
  Event prepared = make(EventKind::kSavePrepared, path, 2);
  prepared.bytes = static_cast<int64_t>(v2.size());
  prepared.digest = Sha256::hex(v2);
  append(prepared);
  spit(path, v2);  // renamed; the commit is not appended yet
  LatestResult r = catalog()->latest();
  EXPECT_EQ(r.checkpoint["path"], path);
  EXPECT_EQ(r.checkpoint["sha256"], Sha256::hex(v2));
  EXPECT_TRUE(r.rejected.empty());
  VerifyResult v = catalog()->verify();
  EXPECT_TRUE(v.ok());
  for (const FileCheck& f : v.files) EXPECT_EQ(f.problem, "") << f.path;
  // Bytes that are neither the commit's nor the prepared ones are still reported.
  spit(path, content(path, 3));
  EXPECT_FALSE(catalog()->verify().ok());
  r = catalog()->latest();
  EXPECT_EQ(r.checkpoint["path"], file("epoch_1.pth"));
  ASSERT_EQ(r.rejected.size(), 1u);
  EXPECT_EQ(r.rejected[0].path, path);
}

TEST_F(CatalogTest, StateAsOfReplaysTheHookStateToThatPoint) {
  Story s = story();
  auto c = catalog();
  StateResult at = c->state_as_of(Point{Point::Kind::kSeq, s.best2[1]});
  EXPECT_EQ(at.seq, s.best2[1]);
  EXPECT_EQ(at.hub["best_score"], 0.7);
  EXPECT_EQ(at.hub["best_ckpt"], file("best_acc_epoch_2.pth"));
  EXPECT_EQ(at.hub["last_ckpt"], file("epoch_2.pth"));
  EXPECT_EQ(at.hub["keep_ckpt_ids"], ojson::parse("[1,2]"));
  // The end of epoch 3: just before the first event past epoch 3.
  at = c->state_as_of(Point{Point::Kind::kEpoch, 3});
  EXPECT_EQ(at.seq, s.torn_begun - 1);
  EXPECT_EQ(at.hub["last_ckpt"], file("epoch_3.pth"));
  EXPECT_EQ(at.state.runs, 1);
  // A time: every event at or before it.
  const int64_t ts =
      c->query("SELECT ts_us FROM events WHERE seq = ?", {s.b_start}).rows[0][0].get<int64_t>();
  at = c->state_as_of(Point{Point::Kind::kTime, ts});
  EXPECT_EQ(at.seq, c->query("SELECT max(seq) FROM events WHERE ts_us <= ?", {ts}).rows[0][0]);
  EXPECT_EQ(at.state.runs, 2);
  // Now: process C started afresh, its best only.
  at = c->state_as_of(std::nullopt);
  EXPECT_EQ(at.seq, c->ledger().last_seq());
  EXPECT_EQ(at.hub["best_score"], 0.2);
  EXPECT_EQ(at.state.runs, 3);
  EXPECT_EQ(c->state_as_of(Point{Point::Kind::kSeq, 0}).hub, ojson::object());
}

TEST_F(CatalogTest, VerifyChecksTheChainAndEveryLiveFile) {
  story();
  crash();
  {
    VerifyResult r = catalog()->verify();
    // epoch_3 is recorded corrupt (not live): not checked. 5 live files.
    EXPECT_TRUE(r.ok());
    EXPECT_EQ(r.files.size(), 5u);
  }
  spit(file("epoch_4.pth"), "short");
  fs::remove(file("best_acc_epoch_2.pth"));
  std::vector<std::pair<int64_t, int64_t>> progress;
  VerifyResult r =
      catalog()->verify([&](int64_t d, int64_t t, size_t, size_t) { progress.emplace_back(d, t); });
  EXPECT_FALSE(r.ok());
  std::map<std::string, std::string> problems;
  for (const auto& f : r.files) {
    if (!f.problem.empty()) problems[f.path] = f.problem;
  }
  EXPECT_EQ(problems, (std::map<std::string, std::string>{{file("best_acc_epoch_2.pth"), "missing"},
                                                          {file("epoch_4.pth"), "size differs"}}));
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back().first, progress.back().second);
}

// ---- checkpoints of several ranks (SavePayload v2 parts) ------------------------------------

TEST_F(CatalogTest, PartsViewListsEachPartOfEveryMultiRankSave) {
  run_started(false);
  save_regular(1, {1}, {});  // one process (v1): no parts
  PartsSave e2 = parts_save(2, 3, "spread", 1, {1, 2});
  PartsSave e3 = parts_save(3, 2, "main", 2, {2, 3}, {file("epoch_1.pth")});
  PartsSave e4 = parts_save(4, 2, "sharded", 3, {3, 4}, {e2.path}, {e2.parts[1], e2.parts[2]});
  crash();
  auto c = catalog();
  EXPECT_THAT(
      column_names(*c, "checkpoint_parts"),
      ElementsAre("seq", "checkpoint", "kind", "step", "epoch", "iter", "status", "layout",
                  "world_size", "rank", "part_path", "bytes", "sha256", "stall_us", "run_id"));
  ResultSet rs = c->query(
      "SELECT seq, checkpoint, kind, step, status, layout, world_size, rank, part_path, bytes, "
      "sha256, stall_us FROM checkpoint_parts ORDER BY seq, rank");
  std::vector<ojson> got;
  for (size_t i = 0; i < rs.rows.size(); ++i) got.push_back(rs.row_object(i));
  auto row = [&](const PartsSave& ps, int rank, const char* status) {
    return ojson{{"seq", ps.seq},
                 {"checkpoint", ps.path},
                 {"kind", "regular"},
                 {"step", ps.commit.step.value()},
                 {"status", status},
                 {"layout", ps.payload.layout},
                 {"world_size", ps.payload.world_size},
                 {"rank", rank},
                 {"part_path", ps.parts[rank]},
                 {"bytes", ps.payload.part_bytes[rank]},
                 {"sha256", ps.payload.part_sha256[rank]},
                 {"stall_us", 100 + rank}};
  };
  // epoch_2 (3 parts) pruned by epoch_4; "main" lists its one file; epoch_1 (v1) has no row.
  EXPECT_THAT(got, ElementsAre(row(e2, 0, "pruned"), row(e2, 1, "pruned"), row(e2, 2, "pruned"),
                               row(e3, 0, "live"), row(e4, 0, "live"), row(e4, 1, "live")));
  EXPECT_EQ(e2.parts[1], file("epoch_2.part1-r1s1.pth"));
  // The live parts are the files every rank's part should still be on disk.
  EXPECT_EQ(c->query("SELECT count(*) FROM checkpoint_parts WHERE status = 'live' AND rank > 0")
                .rows[0][0],
            1);
}

TEST_F(CatalogTest, ShowAndLatestListTheParts) {
  run_started(false);
  PartsSave e1 = parts_save(1, 2, "spread", 1, {1});
  PartsSave e2 = parts_save(2, 3, "sharded", 2, {1, 2});
  crash();
  auto parts_of = [](const PartsSave& ps) {
    ojson a = ojson::array();
    for (size_t r = 0; r < ps.parts.size(); ++r) {
      a.push_back({{"rank", r},
                   {"path", ps.parts[r]},
                   {"bytes", ps.payload.part_bytes[r]},
                   {"sha256", ps.payload.part_sha256[r]}});
    }
    return a;
  };
  LatestResult l = catalog()->latest();
  EXPECT_EQ(l.checkpoint["path"], e2.path);
  EXPECT_EQ(l.checkpoint["parts"], parts_of(e2));
  EXPECT_FALSE(l.checkpoint.contains("detail"));

  Cli r = cli("latest --json " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.json()["parts"], parts_of(e2));
  EXPECT_EQ(r.json()["sha256"], e2.payload.part_sha256[0]);
  r = cli("latest " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(fmt::format("part 2       {} ({} bytes, sha256 {})", e2.parts[2],
                                           e2.payload.part_bytes[2],
                                           e2.payload.part_sha256[2].substr(0, 12))));

  r = cli("show epoch_1.pth --json " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  ojson show = r.json();
  ASSERT_EQ(show["parts"].size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    ojson p = show["parts"][i];
    EXPECT_EQ(p["on_disk"]["matches_ledger"], true) << p;
    p.erase("on_disk");
    EXPECT_EQ(p, parts_of(e1)[i]);
  }
  flip_first_byte(e1.parts[1]);
  fs::remove(e2.parts[2]);
  r = cli("show epoch_1.pth --json " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.json()["parts"][1]["on_disk"]["matches_ledger"], false);
  r = cli("show epoch_2.pth " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(fmt::format("rank 1: epoch_2.part1-r1s2.pth, {} bytes, sha256 {}, "
                                           "on disk: matches the ledger",
                                           e2.payload.part_bytes[1],
                                           e2.payload.part_sha256[1].substr(0, 12))));
  EXPECT_THAT(r.out, HasSubstr("rank 2: epoch_2.part2-r1s2.pth"));
  EXPECT_THAT(r.out, HasSubstr("on disk: MISSING"));

  r = cli("export --format csv --view checkpoint_parts " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out.substr(0, r.out.find('\r')),
            "seq,checkpoint,kind,step,epoch,iter,status,layout,world_size,rank,part_path,bytes,"
            "sha256,stall_us,run_id");
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 6);  // header + 2 + 3 parts
}

TEST_F(CatalogTest, SingleFileCheckpointsHaveNoPartsKey) {
  run_started(false);
  save_regular(1, {1}, {});
  parts_save(2, 2, "main", 1, {1, 2});  // a job's "main" save: one file
  crash();
  for (const char* name : {"epoch_1.pth", "epoch_2.pth"}) {
    Cli r = cli(fmt::format("show {} --json {}", name, work_));
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_FALSE(r.json().contains("parts")) << name;
  }
  Cli r = cli("latest --json " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.json()["path"], file("epoch_2.pth"));
  EXPECT_FALSE(r.json().contains("parts"));
  EXPECT_EQ(r.json()["rejected"], ojson::array());
}

TEST_F(CatalogTest, VerifyChecksEveryPartOfEveryLiveCheckpoint) {
  run_started(false);
  PartsSave e1 = parts_save(1, 3, "spread", 1, {1});
  PartsSave e2 = parts_save(2, 3, "spread", 2, {1, 2});
  PartsSave e3 = parts_save(3, 3, "spread", 3, {2, 3}, {e1.path}, {e1.parts[1], e1.parts[2]});
  crash();
  {
    VerifyResult v = catalog()->verify();
    EXPECT_TRUE(v.ok());
    EXPECT_EQ(v.files.size(), 6u);  // epoch_2, epoch_3 and their parts 1 and 2 (epoch_1 pruned)
    Cli r = cli("verify " + work_);
    EXPECT_EQ(r.rc, 0) << r.out;
    EXPECT_THAT(r.out, HasSubstr("6 live files checked"));
  }
  flip_first_byte(e2.parts[1]);  // same size, one byte changed
  fs::remove(e3.parts[2]);
  std::vector<std::pair<int64_t, int64_t>> progress;
  VerifyResult v =
      catalog()->verify([&](int64_t d, int64_t t, size_t, size_t) { progress.emplace_back(d, t); });
  EXPECT_FALSE(v.ok());
  std::vector<std::string> problems;
  for (const FileCheck& f : v.files) {
    if (!f.problem.empty()) {
      problems.push_back(fmt::format("{} part {} of {}: {}", fs::path(f.path).filename().string(),
                                     f.rank, fs::path(f.checkpoint).filename().string(),
                                     f.problem));
    }
  }
  EXPECT_THAT(problems, ElementsAre("epoch_2.part1-r1s2.pth part 1 of epoch_2.pth: sha256 differs",
                                    "epoch_3.part2-r1s3.pth part 2 of epoch_3.pth: missing"));
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back().first, progress.back().second);

  Cli r = cli("verify " + work_);
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out,
              HasSubstr(fmt::format("regular {} part 1 {}: sha256 differs", e2.path, e2.parts[1])));
  EXPECT_THAT(r.out, HasSubstr(fmt::format("regular {} part 2 {}: missing", e3.path, e3.parts[2])));
  r = cli("verify --json " + work_);
  EXPECT_EQ(r.rc, 1);
  ojson fp = r.json()["file_problems"];
  ASSERT_EQ(fp.size(), 2u);
  EXPECT_EQ(fp[0]["path"], e2.parts[1]);
  EXPECT_EQ(fp[0]["checkpoint"], e2.path);
  EXPECT_EQ(fp[0]["rank"], 1);
  EXPECT_EQ(fp[0]["expected_sha256"], e2.payload.part_sha256[1]);
  EXPECT_EQ(fp[1]["path"], e3.parts[2]);
  EXPECT_EQ(fp[1]["problem"], "missing");
  EXPECT_EQ(r.json()["live_files_checked"], 6);
}

// A training process prunes or saves again while verify runs (here: from its progress callback,
// after a checkpoint's file was checked and before its parts are): parts that no live checkpoint
// lists any more are not problems.
TEST_F(CatalogTest, VerifyIgnoresPartsThatTheirCheckpointStoppedListingWhileItRan) {
  run_started(false);
  PartsSave e1 = parts_save(1, 3, "spread", 1, {1});
  PartsSave e2 = parts_save(2, 3, "spread", 2, {1, 2});
  auto verify_while = [&](const std::function<void()>& writer_step) {
    bool done = false;
    VerifyResult v = catalog()->verify([&](int64_t, int64_t, size_t index, size_t) {
      if (index != 1 || done) return;  // the first checkpoint's file is checked, its parts not
      done = true;
      writer_step();
    });
    EXPECT_TRUE(done);
    return v;
  };
  // epoch_3's save prunes epoch_1 and its parts.
  VerifyResult v = verify_while([&] {
    parts_save(3, 3, "spread", 3, {2, 3}, {e1.path}, {e1.parts[1], e1.parts[2]});
  });
  EXPECT_TRUE(v.ok());
  std::vector<std::string> checked;
  for (const FileCheck& f : v.files) checked.push_back(fs::path(f.path).filename().string());
  EXPECT_THAT(checked, ElementsAre("epoch_1.pth", "epoch_2.pth", "epoch_2.part1-r1s2.pth",
                                   "epoch_2.part2-r1s2.pth"));
  // epoch_2 saved again under its name: new parts, the old ones removed after the commit.
  v = verify_while([&] {
    parts_save(2, 3, "spread", 4, {2, 3});
    fs::remove(e2.parts[1]);
    fs::remove(e2.parts[2]);
  });
  EXPECT_TRUE(v.ok());
  for (const FileCheck& f : v.files) EXPECT_EQ(f.problem, "") << f.path;
  // A part that a live checkpoint still lists is reported.
  fs::remove(file("epoch_3.part1-r1s3.pth"));
  v = catalog()->verify();
  ASSERT_FALSE(v.ok());
}

TEST_F(CatalogTest, LatestSkipsACheckpointWhosePartDoesNotVerify) {
  run_started(false);
  PartsSave e1 = parts_save(1, 2, "spread", 1, {1});
  PartsSave e2 = parts_save(2, 2, "spread", 2, {1, 2});
  crash();
  flip_first_byte(e2.parts[1]);  // its file verifies; its part 1 does not
  LatestResult l = catalog()->latest();
  EXPECT_EQ(l.checkpoint["path"], e1.path);
  EXPECT_EQ(l.checkpoint["parts"][1]["path"], e1.parts[1]);
  ASSERT_EQ(l.rejected.size(), 1u);
  EXPECT_EQ(l.rejected[0].path, e2.path);
  EXPECT_EQ(l.rejected[0].reason, fmt::format("part 1 {}: sha256 differs", e2.parts[1]));
  Cli r = cli("latest --json " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.json()["path"], e1.path);
  EXPECT_EQ(r.json()["rejected"][0]["reason"], l.rejected[0].reason);
  EXPECT_THAT(r.err, HasSubstr("skipped " + e2.path + ": part 1"));
  // No checkpoint whose every part verifies: none.
  fs::remove(e1.parts[1]);
  r = cli("latest --json " + work_);
  EXPECT_EQ(r.rc, 8);
  EXPECT_EQ(r.json(), ojson(nullptr));
  EXPECT_THAT(r.err,
              HasSubstr(fmt::format("skipped {}: part 1 {}: missing", e1.path, e1.parts[1])));
}

// A save over an existing name (the re-save after a best) records its new parts in save_prepared
// before the rename: a reader between the rename and the commit checks those parts, not the old.
TEST_F(CatalogTest, AReplacedCheckpointIsCheckedWithTheNewerRecordsParts) {
  run_started(false);
  parts_save(1, 2, "spread", 1, {1});
  PartsSave old2 = parts_save(2, 2, "spread", 2, {1, 2});
  PartsSave new2 = parts_save(2, 2, "spread", 3, {1, 2}, {}, {}, /*commit=*/false);
  Event prepared = make(EventKind::kSavePrepared, new2.path, 2);
  prepared.bytes = new2.commit.bytes;
  prepared.digest = new2.commit.digest;
  PreparedPayload pp;
  pp.commit = new2.commit.detail;
  prepared.detail = to_detail(pp);
  append(prepared);
  fs::remove(old2.parts[1]);  // not listed by the newer record
  LatestResult l = catalog()->latest();
  EXPECT_EQ(l.checkpoint["path"], new2.path);
  EXPECT_EQ(l.checkpoint["sha256"], new2.payload.part_sha256[0]);
  EXPECT_EQ(l.checkpoint["parts"][1]["path"], new2.parts[1]);
  EXPECT_TRUE(l.rejected.empty());
  EXPECT_TRUE(catalog()->verify().ok());
  flip_first_byte(new2.parts[1]);
  l = catalog()->latest();
  EXPECT_EQ(l.checkpoint["path"], file("epoch_1.pth"));
  ASSERT_EQ(l.rejected.size(), 1u);
  EXPECT_EQ(l.rejected[0].reason, fmt::format("part 1 {}: sha256 differs", new2.parts[1]));
  VerifyResult v = catalog()->verify();
  EXPECT_FALSE(v.ok());
  for (const FileCheck& f : v.files) {
    EXPECT_EQ(f.problem, f.path == new2.parts[1] ? "sha256 differs" : "") << f.path;
  }
}

// The part paths are in the payload: a moved work_dir's parts are read where they are now.
TEST_F(CatalogTest, PartsOfAMovedWorkDirAreReadWhereTheyAreNow) {
  run_started(false);
  parts_save(1, 2, "spread", 1, {1});
  PartsSave e2 = parts_save(2, 3, "sharded", 2, {1, 2});
  crash();
  const std::string moved = (dir_ / "moved").string();
  fs::rename(work_, moved);
  const std::string part2 = moved + "/" + fs::path(e2.parts[2]).filename().string();
  auto c = Catalog::open(moved);
  ASSERT_FALSE(c->ledger().moved_roots().empty());
  EXPECT_EQ(c->query("SELECT part_path FROM checkpoint_parts WHERE seq = ? AND rank = 2", {e2.seq})
                .rows.at(0)
                .at(0),
            part2);
  LatestResult l = c->latest();
  EXPECT_EQ(l.checkpoint["path"], moved + "/epoch_2.pth");
  EXPECT_EQ(l.checkpoint["parts"][2]["path"], part2);
  EXPECT_TRUE(c->verify().ok());
  Cli r = cli(fmt::format("show epoch_2.pth --json {}", moved));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.json()["parts"][2]["path"], part2);
  EXPECT_EQ(r.json()["parts"][2]["on_disk"]["matches_ledger"], true);
  flip_first_byte(part2);
  r = cli("verify --json " + moved);
  EXPECT_EQ(r.rc, 1);
  ASSERT_EQ(r.json()["file_problems"].size(), 1u);
  EXPECT_EQ(r.json()["file_problems"][0]["path"], part2);
  EXPECT_EQ(r.json()["file_problems"][0]["checkpoint"], moved + "/epoch_2.pth");
  EXPECT_EQ(c->latest().rejected.at(0).reason, fmt::format("part 2 {}: sha256 differs", part2));
}

std::vector<std::string> findings_of(const ckptledger::ReconcilePlan& plan) {
  std::vector<std::string> got;
  for (const auto& f : plan.findings) {
    got.push_back(f.finding + " " + fs::path(f.path).filename().string() +
                  (f.remove.empty() ? "" : " -" + fs::path(f.remove).filename().string()));
  }
  return got;
}

TEST_F(CatalogTest, GcPlansWhatReconciliationWouldDo) {
  story();
  crash();
  // last_checkpoint lags (never written by this fixture): rewritten to the ledger's last.
  EXPECT_THAT(findings_of(catalog()->gc_plan()),
              ::testing::ElementsAre("stale_last_checkpoint last_checkpoint"));
  spit(file("last_checkpoint"), catalog()->state_as_of(std::nullopt).state.last_ckpt);
  EXPECT_TRUE(catalog()->gc_plan().empty());
  // (The temp file of a published copy: a temp file of a regular name that the ledger never began
  // would be evidence of a ledger behind its work_dir, below.)
  spit(file(".epoch_6-00ff00ff.pth.ckptledger-tmp"), "partial");
  spit(file("epoch_2.pth"), "pruned but back");
  fs::remove(file("epoch_5.pth"));
  spit(file("epoch_4.pth"), "x");
  spit(file("foreign.pth"), "not ours");
  EXPECT_THAT(
      findings_of(catalog()->gc_plan()),
      ::testing::UnorderedElementsAre(
          "prune_completed epoch_2.pth -epoch_2.pth", "corrupt epoch_4.pth", "lost epoch_5.pth",
          "stray_temp .epoch_6-00ff00ff.pth.ckptledger-tmp -.epoch_6-00ff00ff.pth.ckptledger-tmp",
          "unknown_file foreign.pth"));
  // A save begun and never finished (its process is gone), with its temp file.
  fs::remove(file(".epoch_6-00ff00ff.pth.ckptledger-tmp"));
  begun(file("epoch_6.pth"), 6, "regular");
  spit(file(".epoch_6.pth.ckptledger-tmp"), "partial");
  crash();
  std::vector<std::string> got = findings_of(catalog()->gc_plan());
  EXPECT_THAT(got, ::testing::Contains("torn_save epoch_6.pth -.epoch_6.pth.ckptledger-tmp"));
  EXPECT_THAT(got, ::testing::Not(::testing::Contains(::testing::StartsWith("stray_temp"))));
  // While a writer holds the ledger, a begun save may be in flight: left alone.
  writer();
  got = findings_of(catalog()->gc_plan());
  EXPECT_THAT(got, ::testing::Contains("in_flight epoch_6.pth"));
  EXPECT_THAT(got, ::testing::Not(::testing::Contains(::testing::StartsWith("torn_save"))));
  crash();
  // Nothing was changed.
  EXPECT_TRUE(fs::exists(file(".epoch_6.pth.ckptledger-tmp")));
  EXPECT_TRUE(fs::exists(file("epoch_2.pth")));
}

TEST_F(CatalogTest, GcApplyRepairsAsATrainingStartWouldAndRecordsIt) {
  story();
  crash();
  spit(file("last_checkpoint"), catalog()->state_as_of(std::nullopt).state.last_ckpt);
  spit(file(".epoch_6-00ff00ff.pth.ckptledger-tmp"), "partial");
  spit(file("epoch_2.pth"), "pruned but back");
  fs::remove(file("epoch_5.pth"));
  spit(file("foreign.pth"), "not ours");
  const int64_t before = catalog()->ledger().last_seq();
  // Refused while a training process holds the ledger: exit 7, nothing changed.
  writer();
  Cli r = cli("gc --apply " + work_);
  EXPECT_EQ(r.rc, 7) << r.err;
  EXPECT_TRUE(fs::exists(file("epoch_2.pth")));
  crash();
  EXPECT_EQ(catalog()->ledger().last_seq(), before);
  // The dry run says what --apply does, exit 1.
  r = cli("gc " + work_);
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_THAT(r.out, HasSubstr("dry run"));
  r = cli("gc --apply --json " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["dry_run"], false);
  EXPECT_EQ(j["findings"].size(), 4u) << r.out;
  // Done: temp file and unfinished prune removed, the foreign file left alone, the lost file
  // recorded; each finding is a `recovered` event of gc's own run, appended after `before`.
  EXPECT_FALSE(fs::exists(file(".epoch_6-00ff00ff.pth.ckptledger-tmp")));
  EXPECT_FALSE(fs::exists(file("epoch_2.pth")));
  EXPECT_TRUE(fs::exists(file("foreign.pth")));
  ResultSet rec = catalog()->query(
      "SELECT json_extract(detail, '$.finding') FROM events WHERE kind = 'recovered' AND seq > ? "
      "ORDER BY seq",
      {before});
  std::vector<std::string> kinds;
  for (const auto& row : rec.rows) kinds.push_back(row[0].get<std::string>());
  EXPECT_THAT(kinds, ::testing::UnorderedElementsAre("prune_completed", "lost", "stray_temp",
                                                     "unknown_file"));
  EXPECT_TRUE(catalog()->ledger().verify().ok());
  // The lost file is out of the state (never resumed from); a second gc finds nothing to do and
  // does not report the foreign file again.
  EXPECT_EQ(catalog()->state_as_of(std::nullopt).state.live.count(file("epoch_5.pth")), 0u);
  EXPECT_TRUE(catalog()->gc_plan().empty());
  r = cli("gc " + work_);
  EXPECT_EQ(r.rc, 0) << r.out;
}

TEST_F(CatalogTest, GcShowsALedgerBehindItsWorkDirAndApplyRefusesIt) {
  story();
  crash();
  spit(file("last_checkpoint"), catalog()->state_as_of(std::nullopt).state.last_ckpt);
  // A checkpoint this ledger never began: what a restored copy or a deleted -wal leaves.
  spit(file("epoch_9.pth"), "written by events the ledger lost");
  const int64_t before = catalog()->ledger().last_seq();
  Cli r = cli("gc " + work_);
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_THAT(r.out, HasSubstr("ledger behind its work_dir"));
  EXPECT_THAT(r.out, HasSubstr("epoch_9.pth"));
  r = cli("gc --apply " + work_);
  EXPECT_EQ(r.rc, 4) << r.out;
  EXPECT_THAT(r.err, HasSubstr("epoch_9.pth"));
  // Refused before anything was written or removed.
  EXPECT_EQ(catalog()->ledger().last_seq(), before);
  EXPECT_TRUE(fs::exists(file("epoch_9.pth")));
  // A foreign name is only an unknown file: gc --apply records it.
  fs::rename(file("epoch_9.pth"), file("foreign.pth"));
  r = cli("gc --apply " + work_);
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("unknown_file"));
}

// ---- LedgerFollower (watch, the server's event stream) ----------------------------------------

std::vector<int64_t> seqs_of(const ojson& rows) {
  std::vector<int64_t> out;
  for (const auto& r : rows) out.push_back(r["seq"].get<int64_t>());
  return out;
}

TEST_F(CatalogTest, FollowerWaitsForALedgerThatDoesNotExistYet) {
  LedgerFollower f(work_);
  EXPECT_FALSE(f.ready());
  EXPECT_EQ(f.last_seq(), 0);
  EXPECT_TRUE(f.events_after(0, {}).empty());
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    run_started(false);
  });
  const auto t0 = std::chrono::steady_clock::now();
  bool woke = false;
  while (!woke && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10)) {
    woke = f.wait(std::chrono::milliseconds(5000)) && f.last_seq() > 0;
  }
  writer.join();
  EXPECT_TRUE(woke);
  EXPECT_EQ(seqs_of(f.events_after(0, {})), std::vector<int64_t>{1});
}

TEST_F(CatalogTest, FollowerReturnsEachEventPastTheCursorOnceInOrder) {
  run_started(false);
  save_regular(1, {1}, {});
  LedgerFollower f(ledger_path_);
  ASSERT_TRUE(f.ready());
  const int64_t last = f.last_seq();
  ASSERT_EQ(last, 3);
  EXPECT_EQ(seqs_of(f.events_after(0, {})), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(seqs_of(f.events_after(1, {})), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(seqs_of(f.events_after(3, {})), std::vector<int64_t>{});
  EXPECT_EQ(seqs_of(f.events_after(0, {}, /*batch=*/2)), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(seqs_of(f.events_after(0, {"save_committed"})), std::vector<int64_t>{3});
  // The rows are `history --json`'s.
  HistoryFilter all;
  auto cat = Catalog::open(work_);
  EXPECT_EQ(f.events_after(0, {}), report::history(*cat, all));
  EXPECT_THROW(f.events_after(0, {"nope"}), UsageError);
}

TEST_F(CatalogTest, FollowerWakesOnACommitFromAnotherProcessAndNotWithoutOne) {
  run_started(false);
  LedgerFollower f(work_);
  ASSERT_TRUE(f.ready());
  f.changed();                                           // the first look counts as a change
  EXPECT_FALSE(f.wait(std::chrono::milliseconds(200)));  // nothing committed
  crash();  // close this process's writer: the next append comes from a child process
  const pid_t child = ::fork();
  if (child == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    auto l = Ledger::open(ledger_path_);
    Event e;
    e.kind = EventKind::kRunFinished;
    l->append(e);
    ::_exit(0);
  }
  const auto t0 = std::chrono::steady_clock::now();
  const bool woke = f.wait(std::chrono::milliseconds(5000));
  const auto waited = std::chrono::steady_clock::now() - t0;
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_TRUE(woke);
  // Woken by the commit (inotify), not by the 5 s timeout.
  EXPECT_LT(waited, std::chrono::milliseconds(4000));
  EXPECT_EQ(f.last_seq(), 2);
}

// A process with several connections to one ledger (the HTTP server: one per thread) must keep
// every connection's locks when one Catalog closes: closing any descriptor of the file drops all of
// the process's POSIX locks on it, and a writer that then exits believes it is the last connection
// and deletes the -wal and -shm the others still use.
TEST_F(CatalogTest, ClosingOneCatalogLeavesTheOthersWorkingAcrossAWriterRestart) {
  run_started(false);
  crash();
  auto a = Catalog::open(work_);
  ASSERT_EQ(a->query("SELECT max(seq) FROM events").rows[0][0], 1);
  for (int i = 0; i < 3; ++i) {
    auto b = Catalog::open(work_);  // opened and closed while `a` stays open
    EXPECT_EQ(b->query("SELECT max(seq) FROM events").rows[0][0], 1);
  }
  const pid_t child = ::fork();
  if (child == 0) {
    auto l = Ledger::open(ledger_path_);
    Event e;
    e.kind = EventKind::kRunFinished;
    l->append(e);
    l.reset();  // the writer exits: it must see `a` and keep the -wal
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(a->query("SELECT max(seq) FROM events").rows[0][0], 2);
  EXPECT_EQ(a->history({}).rows.size(), 2u);
  EXPECT_TRUE(a->verify().chain.ok());
}

TEST_F(CatalogTest, FollowerReadsANewLedgerPutInPlaceOfTheOldOne) {
  run_started(false);
  save_regular(1, {1}, {});
  crash();
  LedgerFollower f(work_);
  ASSERT_EQ(f.last_seq(), 3);
  f.changed();
  // Replaced: deleted and written anew (one event), the old inode still open by the follower.
  for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(ledger_path_ + suffix);
  run_started(false);
  crash();
  EXPECT_TRUE(f.changed());
  EXPECT_EQ(f.last_seq(), 1);
  EXPECT_EQ(seqs_of(f.events_after(0, {})), std::vector<int64_t>{1});
}

TEST(CatalogFollower, RefusesADirectoryThatDoesNotExist) {
  try {
    LedgerFollower f("/nonexistent/ckptledger-follower/work");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/ckptledger-follower/work"));
  }
}

TEST(CatalogTime, Iso8601RoundTripsAndRejectsGarbage) {
  EXPECT_EQ(format_iso8601_us(0), "1970-01-01T00:00:00.000000Z");
  EXPECT_EQ(format_iso8601_us(1795933574057446), "2026-11-29T06:26:14.057446Z");
  EXPECT_EQ(parse_iso8601_us("2026-11-29T06:26:14.057446Z"), 1795933574057446);
  EXPECT_EQ(parse_iso8601_us("2026-11-29 06:26:14.057446"), 1795933574057446);
  EXPECT_EQ(parse_iso8601_us("2026-11-29T08:26:14.057446+02:00"), 1795933574057446);
  EXPECT_EQ(parse_iso8601_us("2026-11-29T06:26Z"), 1795933560000000);
  EXPECT_EQ(parse_iso8601_us("2026-11-29"), 1795910400000000);
  for (const char* bad : {"", "yesterday", "2026-13-01", "2026-02-30", "2026-11-29T25:00",
                          "2026-11-29T06:26:14.Z", "2026-11-29X"}) {
    EXPECT_EQ(parse_iso8601_us(bad), std::nullopt) << bad;
  }
  EXPECT_EQ(parse_point("42", "--as-of").kind, Point::Kind::kSeq);
  EXPECT_EQ(parse_point("epoch:30", "--as-of").value, 30);
  EXPECT_EQ(parse_point("iter:7", "--as-of").kind, Point::Kind::kIter);
  EXPECT_EQ(parse_point("2026-11-29", "--as-of").kind, Point::Kind::kTime);
  EXPECT_THROW(parse_point("epoch:x", "--as-of"), UsageError);
  EXPECT_THROW(parse_point("epoch:3", "--since", /*counters=*/false), UsageError);
  EXPECT_THROW(parse_point("99999999999999999999999", "--as-of"), UsageError);
}

TEST(CatalogTable, AlignsNumbersRight) {
  TextTable t({"name", "n"});
  t.add({"a", "1"});
  t.add({"bbb", "100"});
  EXPECT_EQ(t.render(), "name    n\n----  ---\na       1\nbbb   100\n");
  EXPECT_EQ(cell_text(nullptr), "");
  EXPECT_EQ(cell_text(0.1 + 0.2), "0.3");
  EXPECT_EQ(cell_text(7), "7");
}

// ---- the CLI ---------------------------------------------------------------------------------

TEST_F(CatalogTest, CliVerbsPrintTablesAndJson) {
  Story s = story();
  crash();
  // best --json: one object per metric with at least metric, rule, score, path, step.
  Cli r = cli("best --json " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  ojson best = r.json();
  ASSERT_EQ(best.size(), 1u);
  for (const char* k : {"metric", "rule", "score", "path", "step"})
    EXPECT_TRUE(best[0].contains(k));
  EXPECT_EQ(best[0]["path"], file("best_acc_epoch_5.pth"));
  r = cli("best " + ledger_path_);  // the ledger file works as well as the work_dir
  EXPECT_EQ(r.rc, 0);
  EXPECT_THAT(r.out, HasSubstr("best_acc_epoch_5.pth"));
  EXPECT_THAT(r.out, HasSubstr("metric"));
  EXPECT_EQ(cli("best --metric loss " + work_).rc, 8);

  // latest --json: one object with at least path, step, epoch, iter, sha256.
  r = cli("latest --json " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  ojson latest = r.json();
  EXPECT_EQ(latest["path"], file("epoch_5.pth"));
  for (const char* k : {"step", "epoch", "iter", "sha256"}) EXPECT_TRUE(latest.contains(k)) << k;

  r = cli("runs --json " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  ojson runs = r.json();
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[1]["ended"], "finished");
  EXPECT_EQ(runs[1]["config"]["max_keep_ckpts"], 2);  // config as JSON, not text
  EXPECT_EQ(runs[2]["ended"], "crashed");

  r = cli(fmt::format("history --json --kind pruned,best_updated --since {} {}", s.b_start, work_));
  ASSERT_EQ(r.rc, 0) << r.err;
  ojson h = r.json();
  ASSERT_EQ(h.size(), 2u);  // B's rotation of epoch_2, C's best
  EXPECT_EQ(h[0]["seq"], s.prune2);
  EXPECT_EQ(h[0]["detail"]["reason"], "rotation");
  EXPECT_EQ(h[1]["seq"], s.best5);
  r = cli(fmt::format("history --json --kind validated --kind run_started {}", work_));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.json().size(), 6u);
  r = cli(fmt::format("history --json --path {} {}", file("epoch_4.pth"), work_));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.json().size(), 5u);  // torn begun, begun, failed, begun, committed
  r = cli(fmt::format("history --limit 2 {}", work_));
  EXPECT_EQ(r.rc, 0);
  EXPECT_THAT(r.out, HasSubstr("acc = 0.2 (greater; previous none)"));

  r = cli("show epoch_4.pth --json " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  ojson show = r.json();
  EXPECT_EQ(show["path"], file("epoch_4.pth"));
  ASSERT_EQ(show["checkpoints"].size(), 3u);
  EXPECT_EQ(show["checkpoints"][2]["status"], "live");
  EXPECT_EQ(show["on_disk"]["matches_ledger"], true);
  EXPECT_EQ(show["events"].back()["kind"], "published");  // its copy names it as source
  EXPECT_EQ(cli("show nothing.pth " + work_).rc, 8);

  r = cli("state --as-of epoch:3 --json " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.json()["hub"]["last_ckpt"], file("epoch_3.pth"));
  EXPECT_EQ(r.json()["hub"]["best_score"], 0.7);

  r = cli("export --format csv --view checkpoints " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out.substr(0, r.out.find('\r')),
            "path,kind,step,epoch,iter,status,bytes,sha256,committed_at,removed_at,removed_reason,"
            "removed_by_seq,seq,run_id");
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 14);  // header + 13 rows
  r = cli("export --json " + work_);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(static_cast<int64_t>(r.json().size()), s.best5);

  EXPECT_EQ(cli("verify " + work_).rc, 0);
  EXPECT_EQ(cli("gc " + work_).rc, 1);  // last_checkpoint: never written by this fixture
  spit(file("last_checkpoint"), catalog()->state_as_of(std::nullopt).state.last_ckpt);
  EXPECT_EQ(cli("gc " + work_).rc, 0);
  spit(file("epoch_5.pth"), "tampered");
  r = cli("verify --json " + work_);
  EXPECT_EQ(r.rc, 1);
  EXPECT_EQ(r.json()["file_problems"][0]["path"], file("epoch_5.pth"));
  EXPECT_TRUE(r.err.empty()) << "no progress bar when stderr is not a terminal: " << r.err;
  r = cli("gc --json " + work_);
  EXPECT_EQ(r.rc, 1);
  EXPECT_EQ(r.json()["findings"][0]["finding"], "corrupt");
}

TEST_F(CatalogTest, CliVerifyFindsAHandEditedChain) {
  story();
  crash();
  raw_sql(ledger_path_,
          "DROP TRIGGER events_append_only_update; UPDATE events SET score = 0.99 WHERE "
          "kind = 'best_updated' AND step = 2");
  Cli r = cli("verify " + work_);
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("hash chain BROKEN"));
}

TEST_F(CatalogTest, CliBestAndLatestOverARootOfWorkDirs) {
  story();
  crash();
  const std::string other = (dir_ / "more" / "exp2").string();
  fs::create_directories(other);
  {
    auto l = Ledger::open(other + "/" + kDefaultLedgerName);
    Event e = make(EventKind::kBestUpdated, other + "/best_acc_epoch_9.pth", 9);
    e.metric = "acc";
    e.score = 0.99;
    e.detail = R"({"v":1,"rule":"greater"})";
    l->append(e);
  }
  Cli r = cli("best --json --root " + dir_.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  ojson all = r.json();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0]["work_dir"], other);
  EXPECT_EQ(all[0]["score"], 0.99);
  EXPECT_EQ(all[1]["work_dir"], work_);
  r = cli("latest --json --root " + dir_.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  ASSERT_EQ(r.json().size(), 1u);  // exp2 has no regular checkpoint
  EXPECT_EQ(r.json()[0]["path"], file("epoch_5.pth"));
  r = cli("best --root " + dir_.string());
  EXPECT_THAT(r.out, HasSubstr("more/exp2"));
  EXPECT_EQ(cli("best --root " + (dir_ / "more" / "exp2").string() + "/nothing").rc, 3);
}

// Usage errors say so, name the culprit and suggest the verb or option meant; an --as-of beyond
// int64 is a usage error, not an I/O error; a path the system refuses to look at is not "no such
// file".
TEST_F(CatalogTest, CliUsageErrorsNameTheCulpritAndSuggestWhatWasMeant) {
  story();
  crash();
  Cli r = cli("bset " + work_);
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("ckptledger: usage error:"));
  EXPECT_THAT(r.err, HasSubstr("did you mean `best`?"));
  r = cli("best --jsno " + work_);
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("did you mean `--json`?"));
  r = cli("history --limit abc " + work_);
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("ckptledger: usage error:"));
  EXPECT_THAT(r.err, HasSubstr("--limit"));
  for (const char* point : {"iter:99999999999999999999", "epoch:99999999999999999999"}) {
    r = cli(std::string("state --as-of ") + point + " " + work_);
    EXPECT_EQ(r.rc, 2) << point << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(point));
  }
  // ENAMETOOLONG: the system refuses the path; exit 6 (I/O), not 3 (no such file).
  r = cli("best " + work_ + "/" + std::string(300, 'x') + "/ckptledger.sqlite");
  EXPECT_EQ(r.rc, 6) << r.err;
  EXPECT_THAT(r.err, HasSubstr("File name too long"));
}

// A finished run is read without creating anything beside its ledger (no -wal, no -shm): it can be
// read on read-only storage. While a writer runs, readers use the WAL as before.
TEST_F(CatalogTest, ReadingAFinishedLedgerCreatesNothingBesideIt) {
  story();
  crash();  // the writer closes: SQLite folds the WAL into the file and removes it
  ASSERT_FALSE(fs::exists(ledger_path_ + "-wal"));
  for (const char* verb :
       {"best", "latest", "history", "runs", "state", "verify", "show epoch_3.pth"}) {
    Cli r = cli(std::string(verb) + " " + work_ + " --json");
    EXPECT_NE(r.rc, 2) << verb << ": " << r.err;
    EXPECT_NE(r.rc, 6) << verb << ": " << r.err;
    EXPECT_FALSE(fs::exists(ledger_path_ + "-wal")) << verb;
    EXPECT_FALSE(fs::exists(ledger_path_ + "-shm")) << verb;
  }
  auto cat = Catalog::open(work_, /*one_look=*/true);
  EXPECT_EQ(cat->best(std::nullopt).rows.size(), 1u);
  EXPECT_FALSE(fs::exists(ledger_path_ + "-shm"));
  cat.reset();
  // A Catalog kept open (the default) sees a writer's later commits through the WAL.
  auto live = Catalog::open(work_);
  run_started(true);
  const int64_t before = live->query("SELECT max(seq) FROM events").rows[0][0].get<int64_t>();
  append(make(EventKind::kRunFinished, "", 0));
  EXPECT_EQ(live->query("SELECT max(seq) FROM events").rows[0][0].get<int64_t>(), before + 1);
}

// `dir` bind-mounted read-only at `at` while this object lives; `mounted` is false where this
// process cannot mount (not root, or no mount namespace rights).
struct ReadOnlyMount {
  ReadOnlyMount(const std::string& dir, std::string at_) : at(std::move(at_)) {
    fs::create_directories(at);
    const std::string mount = "mount --bind " + dir + " " + at + " 2>/dev/null && mount -o " +
                              "remount,ro,bind " + at + " 2>/dev/null";
    mounted = std::system(mount.c_str()) == 0;
    if (!mounted) (void)!std::system(("umount " + at + " 2>/dev/null").c_str());
  }
  ~ReadOnlyMount() {
    if (mounted) (void)!std::system(("umount " + at + " || umount -l " + at).c_str());
  }
  ReadOnlyMount(const ReadOnlyMount&) = delete;
  ReadOnlyMount& operator=(const ReadOnlyMount&) = delete;
  std::string at;
  bool mounted = false;
};

// Read-only storage: the work_dir of a finished run bind-mounted read-only. Every verb that only
// reads works there (it used to fail with "unable to open database file"). Skipped where this
// process cannot mount (not root, or no mount namespace rights).
TEST_F(CatalogTest, CliVerbsReadAFinishedRunOnAReadOnlyMount) {
  story();
  crash();
  const std::string mnt = (dir_ / "ro").string();
  ReadOnlyMount ro(work_, mnt);
  if (!ro.mounted) GTEST_SKIP() << "cannot bind-mount read-only here";
  ASSERT_NE(::access((mnt + "/ckptledger.sqlite").c_str(), W_OK), 0) << "the mount is writable";
  for (const char* verb : {"best", "latest", "history", "runs", "state", "verify", "gc"}) {
    Cli r = cli(std::string(verb) + " " + mnt + " --json");
    // gc's dry run exits 1 when it has something to propose: still an answer.
    EXPECT_TRUE(r.rc == 0 || (r.rc == 1 && std::string(verb) == "gc"))
        << verb << ": " << r.rc << " " << r.err;
    EXPECT_NO_THROW(ojson::parse(r.out)) << verb << ": " << r.out;
    EXPECT_THAT(r.err, ::testing::Not(HasSubstr("unable to open"))) << verb;
  }
}

// simulate with a --root it cannot write: an I/O error (exit 6) that says so, not "not a
// directory" (it was exit 4 with that message). Skipped where this process cannot mount.
TEST_F(CatalogTest, SimulateOnAReadOnlyRootSaysItCannotWriteThere) {
  const std::string mnt = (dir_ / "ro").string();
  fs::create_directories(dir_ / "empty");
  ReadOnlyMount ro((dir_ / "empty").string(), mnt);
  if (!ro.mounted) GTEST_SKIP() << "cannot bind-mount read-only here";
  const std::string scenario = (dir_ / "scenario.json").string();
  spit(scenario, R"({"hook": {"interval": 1}, "loop": "epoch", "max_epochs": 1})");
  for (const std::string& root : {mnt, mnt + "/sub"}) {
    Cli r = cli("simulate " + scenario + " --root " + root);
    EXPECT_EQ(r.rc, 6) << root << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(root)) << root;
    EXPECT_THAT(r.err, HasSubstr("Read-only file system")) << root << ": " << r.err;
    EXPECT_THAT(r.err, ::testing::Not(HasSubstr("not a directory"))) << root;
  }
  spit((dir_ / "a_file").string(), "x");
  Cli r = cli("simulate " + scenario + " --root " + (dir_ / "a_file").string());
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("is not a directory"));
}

// A FIFO named like the ledger: every verb refuses it at once, naming it (an open without
// O_NONBLOCK waits forever for a writer that never comes); no verb at all is a usage error.
TEST_F(CatalogTest, CliRefusesAFifoNamedLikeTheLedgerAtOnceAndWantsAVerb) {
  const std::string odd = (dir_ / "fifo").string();
  fs::create_directories(odd);
  ASSERT_EQ(::mkfifo((odd + "/ckptledger.sqlite").c_str(), 0644), 0);
  for (const char* verb :
       {"best", "latest", "history", "runs", "state", "verify", "gc", "export"}) {
    const auto t0 = std::chrono::steady_clock::now();
    const char* bin = std::getenv("CKPT_BIN");
    ASSERT_NE(bin, nullptr);
    Cli r = cli("20 " + std::string(bin) + " " + verb + " " + odd, "timeout");
    EXPECT_EQ(r.rc, 2) << verb << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr("not a regular file")) << verb;
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10)) << verb;
  }
  Cli none = cli("");
  EXPECT_EQ(none.rc, 2) << none.out << none.err;
}

TEST_F(CatalogTest, CliErrorsHaveDistinctExitCodes) {
  story();
  crash();
  // 2: malformed arguments.
  for (const std::string& args :
       {"best --bogus " + work_, "history --since yesterday " + work_,
        "history --kind nonsense " + work_, "export --format xml " + work_,
        "state --as-of epoch:x " + work_, std::string("show"), "history --limit -1 " + work_}) {
    Cli r = cli(args);
    EXPECT_EQ(r.rc, 2) << args << ": " << r.err;
    EXPECT_FALSE(r.err.empty()) << args;
  }
  // 3: no ledger.
  Cli r = cli("best " + (dir_ / "nowhere").string());
  EXPECT_EQ(r.rc, 3);
  EXPECT_THAT(r.err, HasSubstr("no such file"));
  fs::create_directories(dir_ / "empty");
  EXPECT_EQ(cli("latest " + (dir_ / "empty").string()).rc, 3);
  // 5: a ledger of a newer version.
  const std::string newer = (dir_ / "newer.sqlite").string();
  fs::copy_file(ledger_path_, newer);
  raw_sql(newer, "PRAGMA user_version = 999");
  r = cli("runs " + newer);
  EXPECT_EQ(r.rc, 5);
  EXPECT_THAT(r.err, HasSubstr("newer"));
  // 4: not a ledger, truncated, damaged pages.
  const std::string junk = (dir_ / "junk.sqlite").string();
  spit(junk, std::string(4096, 'x'));
  r = cli("best " + junk);
  EXPECT_EQ(r.rc, 4);
  EXPECT_THAT(r.err, HasSubstr("not an SQLite database"));
  const std::string cut = (dir_ / "cut.sqlite").string();
  spit(cut, slurp(ledger_path_).substr(0, 3000));
  r = cli("latest " + cut);
  EXPECT_EQ(r.rc, 4);
  EXPECT_THAT(r.err, HasSubstr("truncated"));
  const std::string damaged = (dir_ / "damaged.sqlite").string();
  std::string bytes = slurp(ledger_path_);
  ASSERT_GT(bytes.size(), 8192u);
  for (size_t i = 2048; i < bytes.size() - 1024; ++i) bytes[i] = static_cast<char>(0xA5);
  spit(damaged, bytes);
  r = cli("export " + damaged);
  EXPECT_EQ(r.rc, 4) << r.err;
  EXPECT_THAT(r.err, ::testing::AnyOf(HasSubstr("malformed"), HasSubstr("corrupt"),
                                      HasSubstr("hash chain")));
}

TEST_F(CatalogTest, CliHandsSimulateAndDemoToCkptledgerTrainBesideIt) {
  // Next to its sibling (the build tree, an install): the sibling answers, same arguments.
  Cli r = cli("simulate --help");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("ckptledger-train simulate"));
  EXPECT_THAT(r.out, HasSubstr("--root"));
  r = cli("demo --size huge");
  EXPECT_EQ(r.rc, 2) << r.err;
  // Alone: a clear error that names the missing binary; the catalog verbs still work.
  const fs::path alone = dir_ / "alone";
  fs::create_directories(alone);
  fs::copy_file(std::getenv("CKPT_BIN"), alone / "ckptledger");
  const std::string bin = (alone / "ckptledger").string();
  r = cli("demo --size small", bin.c_str());
  EXPECT_EQ(r.rc, 6);
  EXPECT_THAT(r.err, HasSubstr((alone / "ckptledger-train").string()));
  EXPECT_THAT(r.err, HasSubstr("`demo`"));
  story();
  EXPECT_EQ(cli("best " + work_, bin.c_str()).rc, 0);
}

// ---- a writer for tests/catalog_interop_test.py ------------------------------------------------

TEST(CatalogWriter, Run) {
  const char* ledger = std::getenv("CKPT_WRITER_LEDGER");
  if (!ledger) GTEST_SKIP() << "a helper for catalog_interop_test.py";
  const int n =
      std::atoi(std::getenv("CKPT_WRITER_APPENDS") ? std::getenv("CKPT_WRITER_APPENDS") : "200");
  const std::string stats =
      std::getenv("CKPT_WRITER_STATS") ? std::getenv("CKPT_WRITER_STATS") : "";
  auto l = Ledger::open(ledger);
  std::vector<double> us;
  for (int i = 0; i < n; ++i) {
    Event e;
    e.kind = EventKind::kValidated;
    e.step = e.epoch = i;
    e.detail = R"({"v":1,"metrics":{"acc":0.5},"auto_key":""})";
    auto t0 = std::chrono::steady_clock::now();
    l->append(e);
    us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(us.begin(), us.end());
  ojson j = {{"appends", n},
             {"p50_us", us[us.size() / 2]},
             {"p99_us", us[us.size() * 99 / 100]},
             {"max_us", us.back()}};
  if (!stats.empty()) spit(stats, j.dump());
}

}  // namespace
}  // namespace ckptledger
