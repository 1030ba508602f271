// The ledger: append, hash chain, replay, one writer, migrations, and every bad input (refused
// with a clear error, the file left untouched: docs/crash-safety.md, nothing lost on bad input).
#include <signal.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "ckptledger/ledger.h"
#include "ledger/migrations.h"
#include "ledger/sqlite.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class LedgerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("ckptledger_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    path_ = (dir_ / kDefaultLedgerName).string();
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::all, ec);
    fs::remove_all(dir_, ec);
  }

  static Event committed(int64_t step, const std::string& path, double score = 0.0) {
    Event e;
    e.kind = EventKind::kSaveCommitted;
    e.step = step;
    e.epoch = step;
    e.iter = step * 10;
    e.path = path;
    e.bytes = 1000 + step;
    e.digest = std::string(64, 'a');
    e.score = score;
    e.detail = R"({"role":"regular","v":1})";
    return e;
  }

  void write_events(int n) {
    auto l = Ledger::open(path_);
    for (int i = 1; i <= n; ++i) {
      Event e = committed(i, "/ckpt/epoch_" + std::to_string(i) + ".pth", i * 0.1);
      l->append(e);
    }
  }

  static std::string slurp(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  static void raw_sql(const std::string& p, const std::string& sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(p.c_str(), &db), SQLITE_OK);
    char* err = nullptr;
    int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
    std::string msg = err ? err : "";
    sqlite3_free(err);
    sqlite3_close(db);
    ASSERT_EQ(rc, SQLITE_OK) << msg;
  }

  // Opens `p` expecting `code`; checks the file's bytes and the directory listing did not change.
  void expect_refused_untouched(const std::string& p, ErrorCode code, const std::string& msg_part,
                                OpenMode mode = OpenMode::kReadWrite) {
    std::string before = slurp(p);
    size_t entries_before = std::distance(fs::directory_iterator(dir_), fs::directory_iterator());
    LedgerOptions o;
    o.mode = mode;
    try {
      Ledger::open(p, o);
      FAIL() << "open of " << p << " succeeded";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_THAT(e.what(), HasSubstr(p));
      EXPECT_THAT(e.what(), HasSubstr(msg_part));
    }
    EXPECT_TRUE(slurp(p) == before) << "bytes of " << p << " changed";
    EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()),
              static_cast<std::ptrdiff_t>(entries_before))
        << "files were created next to " << p;
  }

  fs::path dir_;
  std::string path_;
};

TEST_F(LedgerTest, AppendAssignsSeqTimestampRunIdAndChainsHashes) {
  auto l = Ledger::open(path_);
  Event a = committed(1, "/c/epoch_1.pth");
  Event b = committed(2, "/c/epoch_2.pth");
  EXPECT_EQ(l->append(a), 1);
  EXPECT_EQ(l->append(b), 2);
  EXPECT_EQ(a.prev_hash, kGenesisHash);
  EXPECT_EQ(b.prev_hash, a.hash);
  EXPECT_EQ(a.hash, chain_hash(kGenesisHash, a));
  EXPECT_EQ(a.run_id, l->run_id());
  EXPECT_GT(a.ts_us, 1'600'000'000'000'000);
  EXPECT_EQ(l->last_seq(), 2);
  EXPECT_TRUE(l->verify().ok());
}

TEST_F(LedgerTest, EventsSurviveReopenWithEveryColumn) {
  {
    auto l = Ledger::open(path_);
    Event e = committed(7, "/c/epoch_7.pth", 0.25);
    e.metric = "acc";
    l->append(e);
    Event f;
    f.kind = EventKind::kValidated;  // every optional column NULL
    l->append(f);
  }
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  auto l = Ledger::open(path_, ro);
  std::vector<Event> got;
  l->for_each([&](const Event& e) {
    got.push_back(e);
    return true;
  });
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].kind, EventKind::kSaveCommitted);
  EXPECT_EQ(got[0].step, 7);
  EXPECT_EQ(got[0].iter, 70);
  EXPECT_EQ(got[0].path, "/c/epoch_7.pth");
  EXPECT_EQ(got[0].metric, "acc");
  EXPECT_DOUBLE_EQ(*got[0].score, 0.25);
  EXPECT_EQ(got[0].bytes, 1007);
  EXPECT_EQ(got[0].detail, R"({"role":"regular","v":1})");
  EXPECT_EQ(got[1].kind, EventKind::kValidated);
  EXPECT_FALSE(got[1].step.has_value());
  EXPECT_FALSE(got[1].score.has_value());
  EXPECT_TRUE(got[1].path.empty());
}

TEST_F(LedgerTest, DetailIsReadableWithJsonExtract) {
  write_events(3);
  auto l = Ledger::open(path_);
  sqlite3_stmt* s = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(l->database().handle(),
                               "SELECT count(*) FROM events WHERE json_extract(detail, '$.role') = "
                               "'regular'",
                               -1, &s, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(s), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(s, 0), 3);
  sqlite3_finalize(s);
}

TEST_F(LedgerTest, UpdateAndDeleteAreRefusedByTriggers) {
  write_events(2);
  auto l = Ledger::open(path_);
  char* err = nullptr;
  EXPECT_NE(sqlite3_exec(l->database().handle(), "UPDATE events SET score = 1 WHERE seq = 1",
                         nullptr, nullptr, &err),
            SQLITE_OK);
  EXPECT_THAT(std::string(err ? err : ""), HasSubstr("append-only (UPDATE refused)"));
  sqlite3_free(err);
  err = nullptr;
  EXPECT_NE(sqlite3_exec(l->database().handle(), "DELETE FROM events", nullptr, nullptr, &err),
            SQLITE_OK);
  EXPECT_THAT(std::string(err ? err : ""), HasSubstr("append-only (DELETE refused)"));
  sqlite3_free(err);
  EXPECT_EQ(l->last_seq(), 2);
  EXPECT_TRUE(l->verify().ok());
}

struct CountingFold : EventHandler {
  std::vector<std::string> order;
  std::vector<std::string> live;  // committed minus pruned paths
  void on_save_committed(const Event& e) override {
    order.push_back("commit:" + std::to_string(*e.step));
    live.push_back(e.path);
  }
  void on_pruned(const Event& e) override {
    order.push_back("prune:" + e.path);
    live.erase(std::remove(live.begin(), live.end(), e.path), live.end());
  }
  void on_best_updated(const Event& e) override { order.push_back("best:" + e.metric); }
};

TEST_F(LedgerTest, ReplayFoldsEventsInOrderThroughOneHandlerPerKind) {
  auto l = Ledger::open(path_);
  for (int i = 1; i <= 3; ++i) {
    std::vector<Event> batch;
    batch.push_back(committed(i, "/c/e" + std::to_string(i)));
    if (i == 3) {
      Event p;
      p.kind = EventKind::kPruned;
      p.path = "/c/e1";
      p.detail = R"({"reason":"rotation"})";
      batch.push_back(p);
    }
    l->append_batch(batch);
  }
  Event b;
  b.kind = EventKind::kBestUpdated;
  b.metric = "acc";
  b.score = 0.9;
  l->append(b);

  CountingFold fold;
  EXPECT_EQ(l->replay(fold), 5);
  EXPECT_THAT(fold.order, ::testing::ElementsAre("commit:1", "commit:2", "commit:3", "prune:/c/e1",
                                                 "best:acc"));
  EXPECT_THAT(fold.live, ::testing::ElementsAre("/c/e2", "/c/e3"));

  CountingFold as_of;  // replay up to a point: the state as it was then
  EXPECT_EQ(l->replay(as_of, 2), 2);
  EXPECT_THAT(as_of.live, ::testing::ElementsAre("/c/e1", "/c/e2"));
}

TEST_F(LedgerTest, BatchIsAllOrNothing) {
  auto l = Ledger::open(path_);
  Event first = committed(1, "/c/e1");
  l->append(first);
  std::vector<Event> batch = {committed(2, "/c/e2"), committed(3, "/c/e3")};
  batch[1].detail = "{not json";  // the CHECK(json_valid) constraint refuses the second row
  EXPECT_THROW(l->append_batch(batch), Error);
  EXPECT_EQ(l->last_seq(), 1);
  Event next = committed(2, "/c/e2");
  EXPECT_EQ(l->append(next), 2);
  EXPECT_EQ(next.prev_hash, first.hash);
  l.reset();

  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  auto r = Ledger::open(path_, ro);
  EXPECT_EQ(r->last_seq(), 2);
  EXPECT_TRUE(r->verify().ok());
}

TEST_F(LedgerTest, SecondWriterInSameProcessIsRefusedNamingTheHolder) {
  auto w = Ledger::open(path_);
  try {
    Ledger::open(path_);
    FAIL() << "second writer accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kBusy);
    EXPECT_THAT(e.what(), HasSubstr("pid " + std::to_string(::getpid())));
    EXPECT_THAT(e.what(), HasSubstr("since"));
  }
}

TEST_F(LedgerTest, WriterLockNamesOtherProcessAndDiesWithIt) {
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto l = Ledger::open(path_);
    char c = 'x';
    (void)!::write(ready[1], &c, 1);
    ::pause();
    ::_exit(0);
  }
  char c;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  try {
    Ledger::open(path_);
    ADD_FAILURE() << "second writer accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kBusy);
    EXPECT_THAT(e.what(), HasSubstr("pid " + std::to_string(child)));
  }
  // Readers never need the lock.
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  EXPECT_NO_THROW(Ledger::open(path_, ro));
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_NO_THROW(Ledger::open(path_));  // the lock died with its holder
  ::close(ready[0]);
  ::close(ready[1]);
}

TEST_F(LedgerTest, ReaderSeesCommittedEventsWhileWriterIsOpen) {
  auto w = Ledger::open(path_);
  Event e = committed(1, "/c/e1");
  w->append(e);
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  auto r = Ledger::open(path_, ro);
  EXPECT_EQ(r->last_seq(), 1);
  Event f = committed(2, "/c/e2");
  w->append(f);  // a reader is open: the writer is not blocked
  int n = 0;
  r->for_each([&](const Event&) {
    ++n;
    return true;
  });
  EXPECT_EQ(n, 2);
  EXPECT_THROW(r->append(e), Error);
  // A replay reads what was appended after the reader opened, too.
  struct Count : EventHandler {
    int n = 0;
    void on_save_committed(const Event&) override { ++n; }
  } count;
  EXPECT_EQ(r->replay(count), 2);
  EXPECT_EQ(count.n, 2);
}

// Snapshots are opaque blobs tied to the hash of their event: the newest whose hash still matches
// is returned, only the newest few are kept, and a ledger older than the table has none.
TEST_F(LedgerTest, SnapshotIsReturnedOnlyWhileItsHashMatchesItsEvent) {
  write_events(10);
  auto l = Ledger::open(path_);
  EXPECT_FALSE(l->latest_snapshot("f").has_value());
  for (int64_t seq : {2, 4, 6, 8}) l->put_snapshot(seq, "f", "state@" + std::to_string(seq));
  l->put_snapshot(9, "g", "other format");
  auto s = l->latest_snapshot("f");
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->seq, 8);
  EXPECT_EQ(s->blob, "state@8");
  EXPECT_EQ(l->latest_snapshot("f", 7)->seq, 6);
  EXPECT_FALSE(l->latest_snapshot("f", 3).has_value());  // seq 2 was trimmed (3 kept)
  EXPECT_EQ(l->latest_snapshot("g")->blob, "other format");
  EXPECT_THROW(l->put_snapshot(11, "f", "x"), Error);  // no such event
  l.reset();
  // Seq 8's recorded hash no longer matches (another chain's snapshot): the next one back is
  // used.
  raw_sql(path_, "UPDATE snapshots SET hash = '" + std::string(64, '0') + "' WHERE seq = 8");
  l = Ledger::open(path_);
  EXPECT_EQ(l->latest_snapshot("f")->seq, 6);
  // The table is a cache: emptied, nothing is lost and the chain still verifies.
  l.reset();
  raw_sql(path_, "DELETE FROM snapshots");
  l = Ledger::open(path_);
  EXPECT_FALSE(l->latest_snapshot("f").has_value());
  EXPECT_TRUE(l->verify().ok());
  EXPECT_EQ(l->last_seq(), 10);
}

TEST_F(LedgerTest, LedgerOlderThanTheSnapshotsTableHasNone) {
  LedgerOptions o;
  o.migrate_to = 3;
  {
    auto l = Ledger::open(path_, o);
    EXPECT_EQ(l->schema_version(), 3);
    Event e = committed(1, "/c/e1");
    l->append(e);
    l->put_snapshot(1, "f", "ignored");  // no table: records nothing
    EXPECT_FALSE(l->latest_snapshot("f").has_value());
    CountingFold count;
    EXPECT_EQ(l->replay_range(count, 0), 1);
  }
  auto l = Ledger::open(path_);
  EXPECT_EQ(l->schema_version(), latest_schema_version());
  EXPECT_FALSE(l->latest_snapshot("f").has_value());
  l->put_snapshot(1, "f", "now kept");
  EXPECT_EQ(l->latest_snapshot("f")->blob, "now kept");
}

TEST_F(LedgerTest, LedgerFromMigrationOneIsUpgradedWithEventsIntact) {
  ASSERT_GE(latest_schema_version(), 2);
  std::vector<std::string> hashes;
  {
    LedgerOptions o;
    o.migrate_to = 1;
    auto l = Ledger::open(path_, o);
    EXPECT_EQ(l->schema_version(), 1);
    EXPECT_FALSE(l->writer_info().has_value());
    for (int i = 1; i <= 5; ++i) {
      Event e = committed(i, "/c/e" + std::to_string(i));
      l->append(e);
      hashes.push_back(e.hash);
    }
  }
  auto l = Ledger::open(path_);
  EXPECT_EQ(l->schema_version(), latest_schema_version());
  ASSERT_TRUE(l->writer_info().has_value());
  EXPECT_EQ(l->writer_info()->pid, ::getpid());
  std::vector<std::string> after;
  l->for_each([&](const Event& e) {
    after.push_back(e.hash);
    return true;
  });
  EXPECT_EQ(after, hashes);
  EXPECT_TRUE(l->verify().ok());
  Event e = committed(6, "/c/e6");
  EXPECT_EQ(l->append(e), 6);
}

TEST_F(LedgerTest, NewerLedgerIsRefusedAndNotDowngraded) {
  write_events(2);
  raw_sql(path_, "PRAGMA user_version = 999; PRAGMA wal_checkpoint(TRUNCATE);");
  fs::remove(path_ + "-wal");
  fs::remove(path_ + "-shm");
  expect_refused_untouched(path_, ErrorCode::kVersion, "schema version 999");
  expect_refused_untouched(path_, ErrorCode::kVersion, "newer", OpenMode::kReadOnly);
}

TEST_F(LedgerTest, FileThatIsNotSqliteIsRefusedUntouched) {
  {
    std::ofstream out(path_, std::ios::binary);
    std::mt19937 rng(7);
    for (int i = 0; i < 4096; ++i) out.put(static_cast<char>(rng()));
  }
  expect_refused_untouched(path_, ErrorCode::kForeign, "not an SQLite database");
}

TEST_F(LedgerTest, TruncatedLedgerIsRefusedUntouched) {
  write_events(400);
  raw_sql(path_, "PRAGMA wal_checkpoint(TRUNCATE);");
  fs::remove(path_ + "-wal");
  fs::remove(path_ + "-shm");
  auto size = fs::file_size(path_);
  ASSERT_GT(size, 8192u);
  fs::resize_file(path_, size / 2);
  expect_refused_untouched(path_, ErrorCode::kCorruption, "truncated");
  fs::resize_file(path_, 50);
  expect_refused_untouched(path_, ErrorCode::kCorruption, "truncated");
}

TEST_F(LedgerTest, ZeroLengthFileIsInitialised) {
  { std::ofstream out(path_); }
  ASSERT_EQ(fs::file_size(path_), 0u);
  auto l = Ledger::open(path_);
  EXPECT_EQ(l->schema_version(), latest_schema_version());
  Event e = committed(1, "/c/e1");
  EXPECT_EQ(l->append(e), 1);
}

TEST_F(LedgerTest, ZeroLengthFileIsNotAReadableLedger) {
  { std::ofstream out(path_); }
  expect_refused_untouched(path_, ErrorCode::kNotFound, "not yet initialised", OpenMode::kReadOnly);
}

TEST_F(LedgerTest, DatabaseOfAnotherApplicationIsRefusedUntouched) {
  raw_sql(path_,
          "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);"
          "INSERT INTO customers VALUES (1, 'ada');");
  expect_refused_untouched(path_, ErrorCode::kForeign, "another application");
  expect_refused_untouched(path_, ErrorCode::kForeign, "another application", OpenMode::kReadOnly);
}

TEST_F(LedgerTest, HandEditedChainIsDetectedByVerifyAtTheEditedSeq) {
  write_events(10);
  raw_sql(path_,
          "DROP TRIGGER events_append_only_update;"
          "UPDATE events SET score = 0.99 WHERE seq = 4;");
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  std::string before = slurp(path_);
  auto l = Ledger::open(path_, ro);
  VerifyReport r = l->verify();
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.first_bad_seq, 4);
  EXPECT_THAT(r.problem, HasSubstr("does not match its hash"));
  l.reset();
  EXPECT_TRUE(slurp(path_) == before);
}

TEST_F(LedgerTest, EditedLastEventIsRefusedAtOpen) {
  write_events(3);
  raw_sql(path_,
          "DROP TRIGGER events_append_only_update;"
          "UPDATE events SET path = '/evil' WHERE seq = 3;"
          "PRAGMA wal_checkpoint(TRUNCATE);");
  fs::remove(path_ + "-wal");
  fs::remove(path_ + "-shm");
  expect_refused_untouched(path_, ErrorCode::kCorruption, "hash chain broken at seq 3");
}

TEST_F(LedgerTest, DeletedMiddleEventIsDetectedAsAGap) {
  write_events(5);
  raw_sql(path_, "DROP TRIGGER events_append_only_delete; DELETE FROM events WHERE seq = 2;");
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  VerifyReport r = Ledger::open(path_, ro)->verify();
  EXPECT_EQ(r.first_bad_seq, 3);
  EXPECT_THAT(r.problem, HasSubstr("missing"));
}

// A fold over a gap is a state the writer never had (a copy of a live ledger can have gaps that
// SQLite does not see): replay refuses it, and a tail that the scan never reaches.
TEST_F(LedgerTest, ReplayRefusesMissingEvents) {
  write_events(5);
  raw_sql(path_, "DROP TRIGGER events_append_only_delete; DELETE FROM events WHERE seq = 2;");
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  EventHandler ignore;
  try {
    Ledger::open(path_, ro)->replay(ignore);
    FAIL() << "replayed over a gap";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorruption);
    EXPECT_THAT(e.what(), HasSubstr("seq 3 follows seq 1"));
    EXPECT_THAT(e.what(), HasSubstr(path_));
  }
  EXPECT_EQ(Ledger::open(path_, ro)->replay(ignore, 1), 1);  // the prefix before the gap is fine
}

// A real ledger whose creating process was SIGKILLed by the torture test: page 1 is still zeros
// and a hot rollback journal holds the way back. SQLite's recovery must run, not the header
// probe.
TEST_F(LedgerTest, LedgerKilledWhileBeingCreatedIsRecoveredAndInitialised) {
  const fs::path data = fs::path(std::getenv("CKPT_TEST_DATA")) / "killed_during_creation";
  fs::copy_file(data / "ckptledger.sqlite", path_);
  fs::copy_file(data / "ckptledger.sqlite-journal", path_ + "-journal");
  auto l = Ledger::open(path_);
  EXPECT_EQ(l->schema_version(), latest_schema_version());
  Event e = committed(1, "/c/e1");
  EXPECT_EQ(l->append(e), 1);
  EXPECT_TRUE(l->verify().ok());
}

TEST_F(LedgerTest, PathThatIsADirectoryIsRefused) {
  fs::create_directories(path_);
  try {
    Ledger::open(path_);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_THAT(e.what(), HasSubstr("is a directory"));
  }
  EXPECT_TRUE(fs::is_empty(path_));
  EXPECT_EQ(resolve_ledger_path(dir_.string()), (dir_ / kDefaultLedgerName).string());
}

TEST_F(LedgerTest, MissingLedgerIsNotFoundForReaders) {
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  try {
    Ledger::open(path_, ro);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_THAT(e.what(), HasSubstr(path_));
  }
  EXPECT_FALSE(fs::exists(path_));
}

// Root ignores permission bits, so the child drops to an unprivileged user first.
TEST_F(LedgerTest, ReadOnlyDirectoryGivesIOErrorNamingThePath) {
  write_events(2);
  std::string before = slurp(path_);
  fs::permissions(dir_, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                            fs::perms::group_exec | fs::perms::others_read |
                            fs::perms::others_exec);
  std::string fresh = (dir_ / "new.sqlite").string();
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (::getuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(90);
    std::string report;
    for (const std::string& p : {fresh, path_}) {
      try {
        Ledger::open(p);
        report += "opened;";
      } catch (const Error& e) {
        report += std::string(error_code_name(e.code())) + ":" + e.what() + ";";
      }
    }
    (void)!::write(out[1], report.data(), report.size());
    ::_exit(0);
  }
  ::close(out[1]);
  std::string report;
  char buf[4096];
  for (ssize_t n; (n = ::read(out[0], buf, sizeof(buf))) > 0;) report.append(buf, n);
  ::close(out[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0) << "could not drop privileges";
  EXPECT_THAT(report, HasSubstr("IOError:ledger " + fresh));
  EXPECT_THAT(report, HasSubstr("IOError:ledger " + path_));
  EXPECT_THAT(report, ::testing::Not(HasSubstr("opened")));
  EXPECT_FALSE(fs::exists(fresh));
  EXPECT_TRUE(slurp(path_) == before);
}

}  // namespace
}  // namespace ckptledger
