// A job of several ranks (docs/distributed.md), run as threads of one process on loopback Gloo:
// identical decisions on every rank, a mismatch reported, a failed part never committed, resume at
// another world size, parts pruned only after the successor's commit, and the runner's job
// (TorchRunner::set_job and allreduce_gradients; the loops join the hook to it).
//
// Each rank is a thread with its own job group (ProcessGroupGloo over one HashStore), its own
// CheckpointHook joined to that group and its own Runner; they share one work_dir. A rank that
// throws makes the others' exchanges fail within the join timeout (kTimeout), and a watchdog ends
// the process if a run still hangs.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "ckptledger/checkpoint_hook.h"
#include "ckptledger/distributed.h"
#include "ckptledger/error.h"
#include "ckptledger/hook_state.h"
#include "ckptledger/ledger.h"
#include "ckptledger/loops.h"
#include "ckptledger/torch_runner.h"
#include "hook/checkpoint_format.h"
#include "ledger/sha256.h"
#include "policy/hook_events.h"
#include "policy/parts.h"
#include "storage/durable_file.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// How long an exchange or a rendezvous waits for a rank that neither answers nor dies.
constexpr std::chrono::milliseconds kTimeout{20000};
// A run of ranks that takes longer than this hangs: the process ends, naming the test.
constexpr std::chrono::seconds kWatchdog{90};

// The replicated state of data parallelism (equal on every rank); with `own_shard`, a tensor of
// the rank's own ("sharded": each rank saves its own state).
class DistRunner : public LoopRunner {
 public:
  DistRunner(std::string work_dir, int rank, bool own_shard)
      : work_dir_(std::move(work_dir)), own_shard_(own_shard) {
    // Sizes that differ, so that "spread" gives each rank a share.
    weights_["conv.weight"] = torch::arange(0, 4096, torch::kFloat).reshape({64, 64}) * 0.001;
    weights_["conv.bias"] = torch::arange(0, 64, torch::kFloat);
    weights_["fc.weight"] = torch::arange(0, 2048, torch::kFloat).reshape({32, 64}) * 0.01;
    weights_["fc.bias"] = torch::zeros({32});
    momentum_ = torch::ones({4096});
    shard_ = torch::full({16}, static_cast<float>(rank));
  }
  std::string work_dir() const override { return work_dir_; }
  Dict checkpoint_state(bool with_optimizer, bool) override {
    Dict d = make_dict();
    Dict sd = make_dict();
    for (const auto& [name, t] : weights_) sd.insert(name, t);
    d.insert("state_dict", sd);
    if (with_optimizer) {
      Dict opt = make_dict();
      opt.insert("momentum", momentum_);
      opt.insert("lr", 0.1);
      d.insert("optimizer", opt);
    }
    if (own_shard_) d.insert("shard", shard_);
    return d;
  }
  bool has_param_schedulers() const override { return false; }
  void load_checkpoint(const Dict& ckpt, bool resume) override {
    const Dict sd = ckpt.at("state_dict").toGenericDict();
    for (auto& [name, t] : weights_) t = sd.at(name).toTensor().clone();
    if (resume && ckpt.contains("optimizer")) {
      momentum_ = ckpt.at("optimizer").toGenericDict().at("momentum").toTensor().clone();
    }
    if (ckpt.contains("shard")) shard_ = ckpt.at("shard").toTensor().clone();
    if (resume) restore_counters(ckpt);
  }
  // One optimizer step: the same on every rank.
  void step() {
    for (auto& [name, t] : weights_) t.add_(1);
    momentum_.mul_(0.5);
    shard_.add_(10);
  }

  std::map<std::string, torch::Tensor> weights_;
  torch::Tensor momentum_;
  torch::Tensor shard_;

 private:
  std::string work_dir_;
  bool own_shard_;
};

bool equal_weights(const DistRunner& a, const DistRunner& b) {
  for (const auto& [name, t] : a.weights_) {
    if (!torch::equal(t, b.weights_.at(name))) return false;
  }
  return torch::equal(a.momentum_, b.momentum_);
}

// Records what one rank writes, renames and removes through the hook's FileSystem seam,
// and injects ENOSPC into the `enospc_at`-th file opened for writing whose path contains
// `enospc_target` (0: none).
class RecordingFileSystem : public FileSystem {
 public:
  std::string enospc_target;
  int enospc_at = 0;
  // Called before each unlink, with the path.
  std::function<void(const std::string&)> on_unlink;
  // An unlink of a path that contains `fail_unlink` fails with EIO ("": none).
  std::string fail_unlink;
  // The first file opened for writing whose path contains `slow_target` takes `slow` to open.
  std::string slow_target;
  std::chrono::milliseconds slow{0};
  bool slowed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return slowed_;
  }

  int open(const char* path, int flags, mode_t mode) override {
    const bool writes = (flags & (O_WRONLY | O_RDWR | O_CREAT)) != 0;
    if (writes && !slow_target.empty() &&
        std::string(path).find(slow_target) != std::string::npos) {
      bool first = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        first = !slowed_;
        slowed_ = true;
      }
      if (first) std::this_thread::sleep_for(slow);
    }
    const int fd = FileSystem::open(path, flags, mode);
    std::lock_guard<std::mutex> lock(mu_);
    if (fd >= 0 && writes) {
      written_.push_back(path);
      if (enospc_at > 0 && std::string(path).find(enospc_target) != std::string::npos &&
          ++target_opens_ == enospc_at) {
        faulty_.insert(fd);
      }
    }
    return fd;
  }
  ssize_t write(int fd, const void* data, size_t size) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (faulty_.count(fd)) {
        errno = ENOSPC;
        return -1;
      }
    }
    return FileSystem::write(fd, data, size);
  }
  int close(int fd) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      faulty_.erase(fd);
    }
    return FileSystem::close(fd);
  }
  int rename(const char* from, const char* to) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      renamed_.push_back(to);
    }
    return FileSystem::rename(from, to);
  }
  int unlink(const char* path) override {
    if (on_unlink) on_unlink(path);
    if (!fail_unlink.empty() && std::string(path).find(fail_unlink) != std::string::npos) {
      errno = EIO;
      return -1;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      unlinked_.push_back(path);
    }
    return FileSystem::unlink(path);
  }

  std::vector<std::string> written() const {
    std::lock_guard<std::mutex> lock(mu_);
    return written_;
  }
  std::vector<std::string> renamed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return renamed_;
  }
  std::vector<std::string> unlinked() const {
    std::lock_guard<std::mutex> lock(mu_);
    return unlinked_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> written_, renamed_, unlinked_;
  std::set<int> faulty_;
  int target_opens_ = 0;
  bool slowed_ = false;
};

// Ends the process when a run of ranks hangs (a thread that never returns cannot be joined).
class Watchdog {
 public:
  explicit Watchdog(std::string what) : what_(std::move(what)) {
    thread_ = std::thread([this] {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, kWatchdog, [this] { return done_; })) {
        std::fprintf(stderr, "dist_test: %s hung for %lld s\n", what_.c_str(),
                     static_cast<long long>(kWatchdog.count()));
        std::_Exit(3);
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::string what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

struct RankJob {
  int rank = 0;
  int world = 1;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> group;
};

// What each rank's function threw (null: it returned).
struct Outcome {
  std::vector<std::exception_ptr> errors;
  bool ok() const {
    return std::all_of(errors.begin(), errors.end(), [](const auto& e) { return !e; });
  }
  std::string message(int rank) const {
    if (!errors.at(rank)) return "";
    try {
      std::rethrow_exception(errors[rank]);
    } catch (const std::exception& ex) {
      return ex.what();
    }
    return "(not a std::exception)";
  }
  std::optional<ErrorCode> code(int rank) const {
    if (!errors.at(rank)) return std::nullopt;
    try {
      std::rethrow_exception(errors[rank]);
    } catch (const Error& ex) {
      return ex.code();
    } catch (...) {
    }
    return std::nullopt;
  }
  std::string all() const {
    std::string out;
    for (size_t r = 0; r < errors.size(); ++r) {
      if (errors[r])
        out += "rank " + std::to_string(r) + ": " + message(static_cast<int>(r)) + "\n";
    }
    return out;
  }
};

// Runs `fn` on `world` threads, one per rank, each with its own job group: one HashStore, a
// ProcessGroupGloo per rank on 127.0.0.1 (built concurrently: the constructors rendezvous).
Outcome run_ranks(int world, const std::function<void(RankJob&)>& fn) {
  Watchdog watchdog(::testing::UnitTest::GetInstance()->current_test_info()->name());
  auto store = c10::make_intrusive<c10d::HashStore>();
  store->setTimeout(kTimeout);
  Outcome out;
  out.errors.resize(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        RankJob job;
        job.rank = r;
        job.world = world;
        job.store = store;
        auto opts = c10d::ProcessGroupGloo::Options::create(kTimeout);
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
        job.group = c10::make_intrusive<c10d::ProcessGroupGloo>(
            c10::make_intrusive<c10d::PrefixStore>("job/", store), r, world, opts);
        fn(job);
      } catch (...) {
        out.errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  return out;
}

HookConfig config(const std::string& layout, const std::string& extra = "") {
  nlohmann::json j = nlohmann::json::parse(
      R"({"interval": 2, "by_epoch": false, "save_best": "acc", "max_keep_ckpts": 2})");
  if (!extra.empty()) j.update(nlohmann::json::parse(extra));
  j["save_layout"] = layout;
  return HookConfig::from_json(j);
}

// Validation scores: a new best at 2 and 6, none at 4 and 8.
Metrics metrics_at(int64_t step) {
  const std::map<int64_t, double> acc{{2, 0.5}, {4, 0.3}, {6, 0.7}, {8, 0.6}};
  auto it = acc.find(step);
  return Metrics{{"acc", it == acc.end() ? 0.1 : it->second}};
}

LoopOptions validate_every_2(std::function<Metrics(int64_t)> validate = metrics_at) {
  LoopOptions o;
  o.validate = std::move(validate);
  o.val_interval = 2;
  return o;
}

std::vector<Event> events_of(const std::string& ledger_path) {
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  auto ledger = Ledger::open(ledger_path, ro);
  std::vector<Event> out;
  ledger->for_each([&](const Event& e) {
    out.push_back(e);
    return true;
  });
  return out;
}

std::vector<Event> of_kind(const std::vector<Event>& events, EventKind kind) {
  std::vector<Event> out;
  for (const Event& e : events) {
    if (e.kind == kind) out.push_back(e);
  }
  return out;
}

HookState replayed(const std::string& ledger_path) {
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  auto ledger = Ledger::open(ledger_path, ro);
  HookState s;
  HookStateFold fold(s);
  ledger->replay(fold);
  return s;
}

// Every part of a committed save is on disk with the committed size and SHA-256 ("" when so).
std::string check_parts(const std::vector<std::string>& paths, const std::vector<int64_t>& bytes,
                        const std::vector<std::string>& sha256) {
  if (paths.size() != bytes.size() || paths.size() != sha256.size()) return "part lists differ";
  for (size_t r = 0; r < paths.size(); ++r) {
    std::error_code ec;
    const auto size = fs::file_size(paths[r], ec);
    if (ec) return paths[r] + ": " + ec.message();
    if (static_cast<int64_t>(size) != bytes[r]) {
      return paths[r] + ": " + std::to_string(size) + " bytes, committed " +
             std::to_string(bytes[r]);
    }
    if (Sha256::file_hex(paths[r]) != sha256[r]) return paths[r] + ": SHA-256 differs";
  }
  return "";
}

// The part files (policy/parts.h) in `dir`.
std::set<std::string> part_files(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (is_part_name(entry.path().filename().string())) out.insert(entry.path().string());
  }
  return out;
}

class DistTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::replace(name.begin(), name.end(), '/', '_');
    dir_ = fs::temp_directory_path() / ("ckpt_dist_" + std::to_string(::getpid()) + "_" + name);
    fs::remove_all(dir_);
    work_ = (dir_ / "exp").string();
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string p(const std::string& name) const { return work_ + "/" + name; }
  std::string ledger() const { return p("ckptledger.sqlite"); }

  // A run of `world` ranks to `iters` iterations (validation every 2). Each rank's runner, hub and
  // state after the run are kept.
  // A job of 2 ranks, 4 iterations (a save every 2), a 1.5 s exchange timeout; rank `slow_rank`
  // writes through `slow` (the filesystem seam).
  Outcome run_with_slow_rank(const HookConfig& cfg, int slow_rank, RecordingFileSystem& slow) {
    runners_.clear();
    return run_ranks(2, [&](RankJob& job) {
      CheckpointHook hook(cfg, {}, job.rank == slow_rank ? &slow : nullptr);
      hook.join(job.group, job.store, std::chrono::milliseconds(1500));
      DistRunner runner(work_, job.rank, false);
      IterLoop(runner, hook, 4, 100, [&](int64_t) { runner.step(); }).run();
    });
  }

  Outcome train(int world, const HookConfig& cfg, int64_t iters, bool resume = false,
                std::vector<RecordingFileSystem*> seams = {}, bool own_shard = false) {
    runners_.clear();
    hubs_.assign(static_cast<size_t>(world), nlohmann::json());
    states_.assign(static_cast<size_t>(world), HookState());
    for (int r = 0; r < world; ++r) {
      runners_.push_back(std::make_unique<DistRunner>(work_, r, own_shard));
    }
    return run_ranks(world, [&](RankJob& job) {
      const auto r = static_cast<size_t>(job.rank);
      CheckpointHook hook(cfg, {}, r < seams.size() ? seams[r] : nullptr);
      hook.join(job.group, job.store, kTimeout);
      DistRunner& runner = *runners_[r];
      LoopOptions o = validate_every_2();
      o.resume = resume;
      IterLoop loop(
          runner, hook, iters, 100, [&](int64_t) { runner.step(); }, o);
      loop.run();
      hook.wait_idle();
      hubs_[r] = hook.hub_info();
      states_[r] = hook.state();
    });
  }

  fs::path dir_;
  std::string work_;
  std::vector<std::unique_ptr<DistRunner>> runners_;
  std::vector<nlohmann::json> hubs_;
  std::vector<HookState> states_;
};

// ---- 1. identical decisions ------------------------------------------------------------------

class DistLayoutTest : public DistTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(DistLayoutTest, EveryRankMakesTheSameDecisionsAndRankZeroCommitsEveryPart) {
  const std::string layout = GetParam();
  RecordingFileSystem seam1;
  const Outcome out = train(2, config(layout, R"({"published_keys": ["meta", "state_dict"]})"), 8,
                            false, {nullptr, &seam1}, layout == "sharded");
  ASSERT_TRUE(out.ok()) << out.all();

  // The same hub and the same state on every rank, what rank 0 published included.
  EXPECT_EQ(hubs_[0], hubs_[1]);
  EXPECT_TRUE(states_[0] == states_[1]) << "rank 1's state differs from rank 0's";
  size_t published = 0;
  for (const auto& [path, lf] : states_[1].live) published += lf.role == "published" ? 1 : 0;
  EXPECT_EQ(published, 2u) << "rank 1 knows of what rank 0 published (last and best)";
  EXPECT_EQ(hubs_[0]["best_ckpt"], p("best_acc_iter_6.pth"));
  EXPECT_EQ(hubs_[0]["last_ckpt"], p("iter_8.pth"));
  EXPECT_TRUE(states_[0] == replayed(ledger())) << "the state is not the ledger's fold";

  // One writer: one run in the ledger; every commit lists its parts (v2).
  const std::vector<Event> events = events_of(ledger());
  EXPECT_EQ(of_kind(events, EventKind::kRunStarted).size(), 1u);
  const std::vector<Event> commits = of_kind(events, EventKind::kSaveCommitted);
  ASSERT_GE(commits.size(), 6u);  // iter_2..8, best at 2 and 6 (and the re-saves)
  std::set<std::string> rank1_parts;
  for (const Event& e : commits) {
    const SavePayload sp = from_detail<SavePayload>(e.detail, e.seq);
    SCOPED_TRACE(e.path);
    EXPECT_EQ(sp.v, 2u);
    EXPECT_EQ(sp.layout, layout);
    EXPECT_EQ(sp.world_size, 2);
    ASSERT_EQ(sp.part_paths.size(), layout == "main" ? 1u : 2u);
    ASSERT_EQ(sp.part_bytes.size(), sp.part_paths.size());
    ASSERT_EQ(sp.part_sha256.size(), sp.part_paths.size());
    EXPECT_EQ(sp.part_paths[0], e.path);
    EXPECT_EQ(sp.part_bytes[0], e.bytes.value_or(-1));
    EXPECT_EQ(sp.part_sha256[0], e.digest);
    if (sp.part_paths.size() > 1) {
      EXPECT_TRUE(is_part_name(fs::path(sp.part_paths[1]).filename().string())) << sp.part_paths[1];
      EXPECT_GT(sp.part_bytes[1], 0);
      rank1_parts.insert(sp.part_paths[1]);
    }
  }

  // The live checkpoints' parts are on disk as committed; no other part is.
  const HookState s = replayed(ledger());
  std::set<std::string> live_parts;
  ASSERT_FALSE(s.live.empty());
  for (const auto& [path, lf] : s.live) {
    SCOPED_TRACE(path);
    if (lf.role == "published") continue;  // one file, written by rank 0 from the parts
    EXPECT_EQ(lf.layout, layout);
    ASSERT_EQ(lf.part_paths.size(), layout == "main" ? 1u : 2u);
    EXPECT_EQ(check_parts(lf.part_paths, lf.part_bytes, lf.part_sha256), "");
    for (size_t r = 1; r < lf.part_paths.size(); ++r) live_parts.insert(lf.part_paths[r]);
    if (layout == "sharded") {
      // Each part is its rank's own state.
      for (size_t r = 0; r < lf.part_paths.size(); ++r) {
        const Dict part = read_checkpoint(lf.part_paths[r]).toGenericDict();
        EXPECT_EQ(part.at("shard").toTensor()[0].item<float>(),
                  static_cast<float>(r) + 10.0f * static_cast<float>(lf.iter))
            << lf.part_paths[r];
      }
    }
    if (layout == "spread") {
      const Dict part1 = read_checkpoint(lf.part_paths[1]).toGenericDict();
      EXPECT_TRUE(part1.contains("ckptledger_part"));
      EXPECT_GT(part1.at("tensors").toGenericDict().size(), 0u) << "rank 1 holds no tensor";
    }
  }
  EXPECT_EQ(part_files(work_), live_parts);
  if (layout == "main") {
    EXPECT_TRUE(part_files(work_).empty());
  }

  // Rank 1 wrote nothing but its own parts: no ledger, no lock, no checkpoint, no last_checkpoint.
  for (const std::string& w : seam1.written()) {
    const std::string name = fs::path(w).filename().string();
    const std::string temp_of =
        name.size() > 1 && name[0] == '.' ? name.substr(1, name.find(kTempSuffix) - 1) : "";
    EXPECT_TRUE(layout != "main" &&
                rank1_parts.count((fs::path(w).parent_path() / temp_of).string()))
        << "rank 1 wrote " << w;
  }
  for (const std::string& w : seam1.renamed()) {
    EXPECT_TRUE(rank1_parts.count(w)) << "rank 1 renamed onto " << w;
  }
  EXPECT_TRUE(seam1.unlinked().empty()) << "rank 1 removed " << seam1.unlinked().front();
}

INSTANTIATE_TEST_SUITE_P(Layouts, DistLayoutTest, ::testing::Values("main", "spread", "sharded"),
                         [](const auto& param) { return param.param; });

// ---- 2. a forced mismatch ----------------------------------------------------------------------

TEST_F(DistTest, DecisionsThatDifferAreAnErrorOnEveryRankNamingBothAndNothingIsCommitted) {
  // Rank 1 sees another score at the validation of step 4: both ranks save a best, with different
  // scores (rank 0's 0.9, rank 1's 0.8).
  std::vector<int64_t> threw_at(2, -1);
  std::vector<std::string> threw_in(2);
  const Outcome out = run_ranks(2, [&](RankJob& job) {
    CheckpointHook hook(config("main"));
    hook.join(job.group, job.store, kTimeout);
    DistRunner runner(work_, job.rank, false);
    LoopOptions o = validate_every_2([&](int64_t step) {
      if (step == 4) return Metrics{{"acc", job.rank == 0 ? 0.9 : 0.8}};
      return metrics_at(step);
    });
    // The exchange runs on the writer pool: once it is over, the very next hook call raises.
    o.on_stage = [&](Stage stage) {
      if (stage == Stage::kAfterValEpoch && runner.iter() == 4) hook.wait_idle();
    };
    IterLoop loop(
        runner, hook, 8, 100, [&](int64_t) { runner.step(); }, o);
    try {
      loop.run();
    } catch (...) {
      threw_at[static_cast<size_t>(job.rank)] = runner.iter();
      threw_in[static_cast<size_t>(job.rank)] = loop.current_call();
      throw;
    }
  });
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    ASSERT_TRUE(out.errors[static_cast<size_t>(r)]) << "rank " << r << " did not raise";
    const std::string m = out.message(r);
    EXPECT_THAT(m, HasSubstr("step 4"));
    EXPECT_THAT(m, HasSubstr("rank 0 decided"));
    EXPECT_THAT(m, HasSubstr("rank 1 decided"));
    EXPECT_THAT(m, HasSubstr("acc=0.9"));
    EXPECT_THAT(m, HasSubstr("acc=0.8"));
    EXPECT_EQ(out.code(r), ErrorCode::kInvalidArgument);
    // At the validation of step 4 or the hook call right after it, never later.
    EXPECT_EQ(threw_at[static_cast<size_t>(r)], 4)
        << "raised in " << threw_in[static_cast<size_t>(r)];
  }
  // The best save of step 4 was not committed, nor anything after it.
  const std::vector<Event> events = events_of(ledger());
  std::vector<std::string> at_4;
  for (const Event& e : of_kind(events, EventKind::kSaveCommitted)) {
    if (e.step.value_or(0) >= 4) at_4.push_back(e.path);
  }
  EXPECT_THAT(at_4, ::testing::ElementsAre(p("iter_4.pth")));
  for (const Event& e : of_kind(events, EventKind::kBestUpdated)) {
    EXPECT_NE(e.path, p("best_acc_iter_4.pth"));
  }
  EXPECT_FALSE(fs::exists(p("best_acc_iter_4.pth")));
  const std::vector<Event> failed = of_kind(events, EventKind::kSaveFailed);
  // The mismatch fails the best save; the exchanges queued behind it (the regular re-save) still
  // run on every rank and fail, carrying the earlier failure.
  ASSERT_GE(failed.size(), 1u);
  EXPECT_EQ(failed[0].path, p("best_acc_iter_4.pth"));
  EXPECT_THAT(from_detail<SavePayload>(failed[0].detail, failed[0].seq).error,
              HasSubstr("decided differently"));
  for (size_t i = 1; i < failed.size(); ++i) {
    EXPECT_THAT(from_detail<SavePayload>(failed[i].detail, failed[i].seq).error,
                HasSubstr("an earlier checkpoint job of this rank failed"));
  }
}

// ---- 3. a rank's write fails -----------------------------------------------------------------

TEST_F(DistTest, EnospcOnRankOneIsRaisedEverywhereCommitsNothingAndItsOrphanIsReconciled) {
  // Three ranks, so that rank 2's part of the failed save is durable and becomes the orphan.
  RecordingFileSystem seam1;
  seam1.enospc_target = ".part1-";
  seam1.enospc_at = 2;  // the second save's part
  const HookConfig cfg = config("spread", R"({"save_best": null, "max_keep_ckpts": -1})");
  const Outcome out = train(3, cfg, 8, false, {nullptr, &seam1, nullptr});
  for (int r = 0; r < 3; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    ASSERT_TRUE(out.errors[static_cast<size_t>(r)]) << "rank " << r << " did not raise";
    EXPECT_THAT(out.message(r), HasSubstr("step 4"));
    EXPECT_THAT(out.message(r), HasSubstr("rank 1"));
    EXPECT_THAT(out.message(r), HasSubstr(std::strerror(ENOSPC)));
    EXPECT_EQ(out.code(r), ErrorCode::kIOError);
  }
  const std::vector<Event> events = events_of(ledger());
  std::vector<std::string> committed;
  for (const Event& e : of_kind(events, EventKind::kSaveCommitted)) committed.push_back(e.path);
  EXPECT_THAT(committed, ::testing::ElementsAre(p("iter_2.pth")));
  EXPECT_FALSE(fs::exists(p("iter_4.pth")));

  // The earlier checkpoint is whole: every part as committed.
  const HookState s = replayed(ledger());
  ASSERT_EQ(s.live.size(), 1u);
  const LiveFile& lf = s.live.at(p("iter_2.pth"));
  EXPECT_EQ(lf.part_paths.size(), 3u);
  EXPECT_EQ(check_parts(lf.part_paths, lf.part_bytes, lf.part_sha256), "");

  // Rank 2's part of the failed save is on disk, listed by no checkpoint.
  std::set<std::string> orphans;
  for (const std::string& part : part_files(work_)) {
    if (std::find(lf.part_paths.begin(), lf.part_paths.end(), part) == lf.part_paths.end()) {
      orphans.insert(part);
    }
  }
  ASSERT_EQ(orphans.size(), 1u);
  EXPECT_THAT(*orphans.begin(), HasSubstr("iter_4.part2-"));

  // A fresh start of two ranks removes and records it, resumes from iter_2 and finishes.
  const Outcome again = train(2, cfg, 8, /*resume=*/true);
  ASSERT_TRUE(again.ok()) << again.all();
  EXPECT_FALSE(fs::exists(*orphans.begin()));
  bool recorded = false;
  for (const Event& e : of_kind(events_of(ledger()), EventKind::kRecovered)) {
    if (e.path == *orphans.begin() &&
        from_detail<RecoveredPayload>(e.detail, e.seq).finding == "orphan_part") {
      recorded = true;
    }
  }
  EXPECT_TRUE(recorded) << "no recovered/orphan_part event for " << *orphans.begin();
  const std::vector<Event> resumed = of_kind(events_of(ledger()), EventKind::kResumed);
  ASSERT_EQ(resumed.size(), 1u);
  EXPECT_EQ(resumed[0].path, p("iter_2.pth"));
  EXPECT_EQ(hubs_[0], hubs_[1]);
  EXPECT_EQ(hubs_[0]["last_ckpt"], p("iter_8.pth"));
}

// ---- 4. resume at another world size ---------------------------------------------------------

class DistResumeTest : public DistTest, public ::testing::WithParamInterface<std::string> {
 protected:
  // Each rank of a job of `world` (0: one process alone, no join) resumes; returns what it threw.
  Outcome resume_with(int world, const HookConfig& cfg,
                      std::vector<std::unique_ptr<DistRunner>>& rs,
                      std::vector<nlohmann::json>& hubs, std::vector<HookState>& states,
                      bool own_shard = false,
                      const std::optional<std::string>& load_from = std::nullopt) {
    const int n = std::max(world, 1);
    rs.clear();
    for (int r = 0; r < n; ++r) rs.push_back(std::make_unique<DistRunner>(work_, r, own_shard));
    hubs.assign(static_cast<size_t>(n), nlohmann::json());
    states.assign(static_cast<size_t>(n), HookState());
    auto body = [&](CheckpointHook& hook, int r) {
      DistRunner& runner = *rs[static_cast<size_t>(r)];
      hook.resume(runner, true, load_from);
      hubs[static_cast<size_t>(r)] = hook.hub_info();
      states[static_cast<size_t>(r)] = hook.state();
      hook.before_train(runner);
      hook.after_run(runner);
    };
    if (world == 0) {
      Outcome out;
      out.errors.resize(1);
      try {
        CheckpointHook hook(cfg);
        body(hook, 0);
      } catch (...) {
        out.errors[0] = std::current_exception();
      }
      return out;
    }
    return run_ranks(world, [&](RankJob& job) {
      CheckpointHook hook(cfg);
      hook.join(job.group, job.store, kTimeout);
      body(hook, job.rank);
    });
  }
};

TEST_P(DistResumeTest, WrittenByTwoRanksResumesWithThreeRanksAndAlone) {
  const std::string layout = GetParam();
  const HookConfig cfg = config(layout);
  ASSERT_TRUE(train(2, cfg, 6).ok());
  const DistRunner saved = *runners_[0];  // the weights at iter 6, the last checkpoint
  const nlohmann::json saved_hub = hubs_[0];
  ASSERT_EQ(saved_hub["last_ckpt"], p("iter_6.pth"));
  ASSERT_EQ(saved_hub["best_ckpt"], p("best_acc_iter_6.pth"));

  for (int world : {3, 0}) {
    SCOPED_TRACE(world == 0 ? "alone" : std::to_string(world) + " ranks");
    std::vector<std::unique_ptr<DistRunner>> rs;
    std::vector<nlohmann::json> hubs;
    std::vector<HookState> states;
    const Outcome out = resume_with(world, cfg, rs, hubs, states);
    ASSERT_TRUE(out.ok()) << out.all();
    for (size_t r = 0; r < rs.size(); ++r) {
      SCOPED_TRACE("rank " + std::to_string(r));
      EXPECT_TRUE(equal_weights(*rs[r], saved)) << "resumed weights differ from the saved ones";
      EXPECT_EQ(rs[r]->iter(), 6);
      EXPECT_EQ(rs[r]->epoch(), 0);
      EXPECT_EQ(hubs[r], saved_hub);
      EXPECT_TRUE(states[r] == states[0]);
    }
  }
  const std::vector<Event> resumed = of_kind(events_of(ledger()), EventKind::kResumed);
  ASSERT_EQ(resumed.size(), 2u);
  for (const Event& e : resumed) EXPECT_EQ(e.path, p("iter_6.pth"));
}

TEST_P(DistResumeTest, ResumingFromANamedCheckpointReadsItsParts) {
  // resume(load_from): a checkpoint of this ledger is read with its parts, alone as in a job.
  const std::string layout = GetParam();
  const HookConfig cfg = config(layout);
  ASSERT_TRUE(train(2, cfg, 6).ok());
  const DistRunner saved = *runners_[0];
  for (int world : {0, 3}) {
    SCOPED_TRACE(world == 0 ? "alone" : std::to_string(world) + " ranks");
    std::vector<std::unique_ptr<DistRunner>> rs;
    std::vector<nlohmann::json> hubs;
    std::vector<HookState> states;
    const Outcome out = resume_with(world, cfg, rs, hubs, states, false, p("iter_6.pth"));
    ASSERT_TRUE(out.ok()) << out.all();
    for (const auto& r : rs) {
      EXPECT_TRUE(equal_weights(*r, saved)) << "loaded weights differ from the saved ones";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, DistResumeTest, ::testing::Values("main", "spread"),
                         [](const auto& param) { return param.param; });

TEST_F(DistTest, ShardedResumesOnlyAtTheWorldSizeThatWroteIt) {
  const HookConfig cfg = config("sharded");
  ASSERT_TRUE(train(2, cfg, 6, false, {}, /*own_shard=*/true).ok());
  const nlohmann::json saved_hub = hubs_[0];
  std::vector<torch::Tensor> saved_shards{runners_[0]->shard_, runners_[1]->shard_};

  for (int world : {3, 0}) {
    const int n = std::max(world, 1);
    SCOPED_TRACE(world == 0 ? "alone" : std::to_string(world) + " ranks");
    std::vector<std::unique_ptr<DistRunner>> rs;
    for (int r = 0; r < n; ++r) rs.push_back(std::make_unique<DistRunner>(work_, r, true));
    auto body = [&](CheckpointHook& hook, int r) { hook.resume(*rs[static_cast<size_t>(r)]); };
    Outcome out;
    if (world == 0) {
      out.errors.resize(1);
      try {
        CheckpointHook hook(cfg);
        body(hook, 0);
      } catch (...) {
        out.errors[0] = std::current_exception();
      }
    } else {
      out = run_ranks(world, [&](RankJob& job) {
        CheckpointHook hook(cfg);
        hook.join(job.group, job.store, kTimeout);
        body(hook, job.rank);
      });
    }
    const std::string now = std::to_string(n);
    for (int r = 0; r < n; ++r) {
      SCOPED_TRACE("rank " + std::to_string(r));
      ASSERT_TRUE(out.errors[static_cast<size_t>(r)]) << "resumed a sharded checkpoint of 2 ranks";
      EXPECT_EQ(out.code(r), ErrorCode::kInvalidArgument);
      EXPECT_THAT(out.message(r), HasSubstr("by 2 ranks"));
      EXPECT_THAT(out.message(r), HasSubstr("this job has " + now));
    }
  }

  // At the size that wrote it, each rank gets its own part back.
  std::vector<std::unique_ptr<DistRunner>> rs;
  for (int r = 0; r < 2; ++r) rs.push_back(std::make_unique<DistRunner>(work_, r, true));
  std::vector<nlohmann::json> hubs(2);
  const Outcome out = run_ranks(2, [&](RankJob& job) {
    CheckpointHook hook(cfg);
    hook.join(job.group, job.store, kTimeout);
    DistRunner& runner = *rs[static_cast<size_t>(job.rank)];
    hook.resume(runner);
    hubs[static_cast<size_t>(job.rank)] = hook.hub_info();
    hook.before_train(runner);
    hook.after_run(runner);
  });
  ASSERT_TRUE(out.ok()) << out.all();
  for (size_t r = 0; r < 2; ++r) {
    EXPECT_TRUE(torch::equal(rs[r]->shard_, saved_shards[r])) << "rank " << r;
    EXPECT_TRUE(equal_weights(*rs[r], *runners_[0])) << "rank " << r;
    EXPECT_EQ(rs[r]->iter(), 6);
    EXPECT_EQ(hubs[r], saved_hub);
  }
}

// ---- 5. prune after the successor's commit ---------------------------------------------------

TEST_F(DistTest, PartsArePrunedOnlyAfterTheSuccessorsCommit) {
  // Rank 0 removes every part; when it does, the ledger already records the checkpoint pruned
  // (appended with the successor's save_committed, in one transaction).
  RecordingFileSystem seam0, seam1;
  std::mutex mu;
  std::vector<std::string> early;
  const std::string ledger_path = ledger();
  seam0.on_unlink = [&](const std::string& path) {
    const std::string name = fs::path(path).filename().string();
    if (!is_part_name(name)) return;
    const std::string checkpoint =
        (fs::path(path).parent_path() / (name.substr(0, name.rfind(".part")) + ".pth")).string();
    bool pruned = false;
    for (const Event& e : of_kind(events_of(ledger_path), EventKind::kPruned)) {
      pruned = pruned || e.path == checkpoint;
    }
    if (!pruned) {
      std::lock_guard<std::mutex> lock(mu);
      early.push_back(path);
    }
  };
  const HookConfig cfg = config("spread", R"({"save_best": null, "max_keep_ckpts": 1})");
  const Outcome out = train(2, cfg, 8, false, {&seam0, &seam1});
  ASSERT_TRUE(out.ok()) << out.all();
  EXPECT_TRUE(early.empty()) << "part removed before its checkpoint was pruned: " << early.front();

  const HookState s = replayed(ledger());
  ASSERT_EQ(s.live.size(), 1u);
  const LiveFile& last = s.live.at(p("iter_8.pth"));
  ASSERT_EQ(last.part_paths.size(), 2u);
  EXPECT_EQ(part_files(work_), std::set<std::string>{last.part_paths[1]});
  int removed = 0;
  for (const std::string& u : seam0.unlinked())
    removed += is_part_name(fs::path(u).filename().string());
  EXPECT_EQ(removed, 3);  // the parts of iter_2, iter_4, iter_6
  EXPECT_TRUE(seam1.unlinked().empty());
}

TEST_F(DistTest, AGroupOfOneRankIsExactlyAProcessAlone) {
  // join with a one-rank group builds nothing and refuses nothing (on_error "warn" is a process
  // alone's option): the saves are one file each, recorded as a process alone records them.
  const Outcome out = train(1, config("spread", R"({"on_error": "warn"})"), 4);
  ASSERT_TRUE(out.ok()) << out.all();
  const std::vector<Event> committed = of_kind(events_of(ledger()), EventKind::kSaveCommitted);
  ASSERT_FALSE(committed.empty());
  for (const Event& e : committed) {
    EXPECT_EQ(from_detail<SavePayload>(e.detail, e.seq).v, 1u) << e.path;
  }
  for (const auto& entry : fs::directory_iterator(work_)) {
    EXPECT_FALSE(is_part_name(entry.path().filename().string())) << entry.path();
  }
}

// ---- 6. the runner's job (TorchRunner::set_job, allreduce_gradients, the loops' join) ---------

JobGroup job_group(const RankJob& job) {
  JobGroup g;
  g.store = job.store;
  g.group = job.group;
  g.rank = job.rank;
  g.world_size = job.world;
  return g;
}

// A model with parameters and buffers (BatchNorm: float running statistics, an int64 count).
torch::nn::Sequential small_model() {
  return torch::nn::Sequential(torch::nn::Linear(3, 4), torch::nn::BatchNorm1d(4),
                               torch::nn::Linear(4, 2));
}

// Every parameter and buffer of `model`, in order.
std::vector<torch::Tensor> model_tensors(torch::nn::Module& model) {
  std::vector<torch::Tensor> out;
  for (const torch::Tensor& t : model.parameters()) out.push_back(t.detach().clone());
  for (const torch::Tensor& t : model.buffers()) out.push_back(t.clone());
  return out;
}

TEST_F(DistTest, SetJobGivesEveryRankRankZerosParametersAndBuffers) {
  constexpr int kWorld = 3;
  std::vector<std::vector<torch::Tensor>> before(kWorld), after(kWorld);
  std::vector<int> job_size(kWorld, 0);
  const Outcome out = run_ranks(kWorld, [&](RankJob& job) {
    const auto r = static_cast<size_t>(job.rank);
    torch::nn::Sequential model = small_model();
    {
      // Each rank its own values (the ranks are threads of one generator: no seeds).
      torch::NoGradGuard no_grad;
      for (torch::Tensor& t : model->parameters()) {
        t.copy_(torch::arange(t.numel(), torch::kFloat).reshape(t.sizes()) + 100.0 * job.rank);
      }
      for (torch::Tensor& t : model->buffers()) t.fill_(7 + job.rank);
    }
    before[r] = model_tensors(*model);
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
    TorchRunner runner(work_, *model, optimizer);
    runner.set_job(job_group(job));
    after[r] = model_tensors(*model);
    job_size[r] = runner.job() ? runner.job()->world_size : 0;
  });
  ASSERT_TRUE(out.ok()) << out.all();
  ASSERT_EQ(before[0].size(), 9u);  // 2 + 2 (BatchNorm) + 2 parameters, 3 buffers
  for (int r = 0; r < kWorld; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    EXPECT_EQ(job_size[static_cast<size_t>(r)], kWorld);
    for (size_t i = 0; i < before[0].size(); ++i) {
      EXPECT_TRUE(torch::equal(after[static_cast<size_t>(r)][i], before[0][i])) << "tensor " << i;
      if (r > 0) {
        EXPECT_FALSE(torch::equal(before[static_cast<size_t>(r)][i], before[0][i]));
      }
    }
  }
  EXPECT_EQ(after[2].back().scalar_type(), torch::kInt64);  // num_batches_tracked, as it was
}

TEST_F(DistTest, AllreduceGradientsSumsOrAveragesAndAGradientARankLacksCountsAsZeros) {
  constexpr int kWorld = 3;
  // Per rank r (value r + 1): lin1's weight and bias on every rank, lin2's weight on ranks 0 and 2
  // only, lin2's bias on none; a frozen lin3 is left out.
  struct Grads {
    std::vector<torch::Tensor> sum, mean;
  };
  std::vector<Grads> got(kWorld);
  const Outcome out = run_ranks(kWorld, [&](RankJob& job) {
    torch::nn::Sequential model(torch::nn::Linear(2, 3), torch::nn::Linear(3, 2),
                                torch::nn::Linear(2, 2));
    const std::vector<torch::Tensor> params = model->parameters();
    params[4].requires_grad_(false);
    params[5].requires_grad_(false);
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
    TorchRunner runner(work_, *model, optimizer);
    runner.set_job(job_group(job));
    auto set_grads = [&] {
      const float v = static_cast<float>(job.rank + 1);
      for (const torch::Tensor& p : params) p.mutable_grad() = torch::Tensor();
      params[0].mutable_grad() = torch::full_like(params[0], v);
      params[1].mutable_grad() = torch::arange(3, torch::kFloat) * v;
      if (job.rank != 1) params[2].mutable_grad() = torch::full_like(params[2], v);
    };
    auto grads = [&] {
      std::vector<torch::Tensor> g;
      for (const torch::Tensor& p : params) {
        g.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
      }
      return g;
    };
    set_grads();
    runner.allreduce_gradients(/*average=*/false);
    got[static_cast<size_t>(job.rank)].sum = grads();
    set_grads();
    runner.allreduce_gradients();
    got[static_cast<size_t>(job.rank)].mean = grads();
  });
  ASSERT_TRUE(out.ok()) << out.all();
  for (int r = 0; r < kWorld; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    const Grads& g = got[static_cast<size_t>(r)];
    ASSERT_EQ(g.sum.size(), 6u);
    // Sums: 1 + 2 + 3 = 6; lin2's weight 1 + 3 = 4, on rank 1 too.
    EXPECT_TRUE(torch::equal(g.sum[0], torch::full({3, 2}, 6.0f))) << g.sum[0];
    EXPECT_TRUE(torch::equal(g.sum[1], torch::arange(3, torch::kFloat) * 6)) << g.sum[1];
    ASSERT_TRUE(g.sum[2].defined()) << "rank 1 got no gradient for lin2.weight";
    EXPECT_TRUE(torch::equal(g.sum[2], torch::full({2, 3}, 4.0f))) << g.sum[2];
    EXPECT_FALSE(g.sum[3].defined()) << "a gradient no rank had";
    EXPECT_FALSE(g.sum[4].defined() || g.sum[5].defined()) << "a frozen parameter";
    // Means: the sums divided by the world size.
    EXPECT_TRUE(torch::equal(g.mean[0], torch::full({3, 2}, 2.0f))) << g.mean[0];
    EXPECT_TRUE(torch::equal(g.mean[1], torch::arange(3, torch::kFloat) * 2)) << g.mean[1];
    ASSERT_TRUE(g.mean[2].defined());
    EXPECT_TRUE(torch::equal(g.mean[2], torch::full({2, 3}, 4.0f).div_(kWorld))) << g.mean[2];
    EXPECT_FALSE(g.mean[3].defined());
  }

  // A JobGroup of one rank is no job: nothing exchanged, the gradients as they were.
  torch::nn::Linear lin(2, 2);
  torch::optim::SGD optimizer(lin->parameters(), torch::optim::SGDOptions(0.1));
  TorchRunner alone(work_, *lin, optimizer);
  alone.set_job(JobGroup());
  EXPECT_EQ(alone.job(), nullptr);
  lin->weight.mutable_grad() = torch::full({2, 2}, 5.0f);
  alone.allreduce_gradients();
  EXPECT_TRUE(torch::equal(lin->weight.grad(), torch::full({2, 2}, 5.0f)));
}

TEST_F(DistTest, AnIterLoopJoinsTheHookToItsRunnersJob) {
  constexpr int kWorld = 2;
  RecordingFileSystem seam1;
  std::vector<int> hook_size(kWorld, 0), size_at_before_train(kWorld, 0);
  std::vector<std::vector<torch::Tensor>> weights(kWorld);
  const Outcome out = run_ranks(kWorld, [&](RankJob& job) {
    const auto r = static_cast<size_t>(job.rank);
    torch::nn::Sequential model(torch::nn::Linear(3, 4), torch::nn::ReLU(),
                                torch::nn::Linear(4, 2));
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
    TorchRunner runner(work_, *model, optimizer);
    runner.set_save_rng(false).set_job(job_group(job));
    // No hook.join here: the loop joins.
    CheckpointHook hook(config("main"), {}, r == 1 ? &seam1 : nullptr);
    const torch::Tensor x = torch::full({4, 3}, static_cast<float>(job.rank + 1));
    LoopOptions o = validate_every_2();
    o.on_stage = [&](Stage stage) {
      if (stage == Stage::kBeforeTrain) size_at_before_train[r] = hook.world_size();
    };
    IterLoop loop(
        runner, hook, 8, 100,
        [&](int64_t) {
          optimizer.zero_grad();
          model->forward(x).sum().backward();
          runner.allreduce_gradients();
          optimizer.step();
        },
        o);
    loop.run();
    hook.wait_idle();
    hook_size[r] = hook.world_size();
    weights[r] = model_tensors(*model);
  });
  ASSERT_TRUE(out.ok()) << out.all();
  EXPECT_EQ(size_at_before_train, std::vector<int>(kWorld, kWorld));
  EXPECT_EQ(hook_size, std::vector<int>(kWorld, kWorld));
  // Rank 0 alone kept the ledger and wrote the checkpoints ("main").
  EXPECT_TRUE(seam1.written().empty()) << "rank 1 wrote " << seam1.written().front();
  const std::vector<Event> events = events_of(ledger());
  EXPECT_EQ(of_kind(events, EventKind::kRunStarted).size(), 1u);
  const std::vector<Event> commits = of_kind(events, EventKind::kSaveCommitted);
  ASSERT_GE(commits.size(), 4u);  // iter_2..8 (and the bests)
  for (const Event& e : commits) {
    const SavePayload sp = from_detail<SavePayload>(e.detail, e.seq);
    EXPECT_EQ(sp.v, 2u) << e.path;
    EXPECT_EQ(sp.world_size, kWorld) << e.path;
  }
  EXPECT_TRUE(fs::exists(p("iter_8.pth")));
  // The replicas stayed equal (the same start, the averaged gradients).
  for (size_t i = 0; i < weights[0].size(); ++i) {
    EXPECT_TRUE(torch::equal(weights[0][i], weights[1][i])) << "tensor " << i;
  }
}

TEST_F(DistTest, AHookJoinedToAnotherWorldSizeThanTheRunnersJobIsAnErrorNamingBoth) {
  // The runner's job has 3 ranks; ranks 0 and 1 joined their hooks to a group of 2 of their own.
  std::vector<int> trained(3, 0);
  const Outcome out = run_ranks(3, [&](RankJob& job) {
    torch::nn::Linear lin(2, 2);
    torch::optim::SGD optimizer(lin->parameters(), torch::optim::SGDOptions(0.1));
    TorchRunner runner(work_, *lin, optimizer);
    runner.set_job(job_group(job));
    if (job.rank == 2) return;
    auto pair_store = c10::make_intrusive<c10d::PrefixStore>("pair/", job.store);
    auto opts = c10d::ProcessGroupGloo::Options::create(kTimeout);
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    auto pair = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("job/", pair_store), job.rank, 2, opts);
    CheckpointHook hook(config("main"));
    hook.join(pair, pair_store, kTimeout);
    IterLoop loop(
        runner, hook, 4, 100, [&](int64_t) { trained[static_cast<size_t>(job.rank)] = 1; },
        validate_every_2());
    loop.run();
  });
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    EXPECT_EQ(out.code(r), ErrorCode::kInvalidArgument) << out.all();
    EXPECT_THAT(out.message(r), HasSubstr("the hook joined a group of 2 ranks"));
    EXPECT_THAT(out.message(r), HasSubstr("the runner's job has 3 ranks"));
    EXPECT_EQ(trained[static_cast<size_t>(r)], 0) << "trained before the check";
  }
  EXPECT_EQ(out.message(2), "");
  EXPECT_FALSE(fs::exists(ledger())) << "the loop resumed or trained";
}

// ---- a rank that fails alone -------------------------------------------------------------------

// Rank 0's removal of the checkpoint a save superseded fails after that save's commit, and rank 0
// raises it at its next hook call, before it decides the next save: it leaves the job, and rank 1,
// waiting in that save's exchange, learns of it at once, with rank 0's own reason, instead of
// waiting for the timeout. (A failure that is still in flight when rank 0 decides its next save
// travels in that save's exchange instead:
// DecisionsThatDifferAreAnErrorOnEveryRankNamingBothAndNothingIsCommitted shows those exchanges.)
TEST_F(DistTest, ARankZeroFailureAfterACommitReachesEveryRankWithItsReason) {
  RecordingFileSystem zero;
  zero.fail_unlink = "iter_2.pth";
  const Outcome out = run_ranks(2, [&](RankJob& job) {
    CheckpointHook hook(config("main", R"({"max_keep_ckpts": 1})"), {},
                        job.rank == 0 ? &zero : nullptr);
    hook.join(job.group, job.store, kTimeout);
    DistRunner runner(work_, job.rank, false);
    LoopOptions o = validate_every_2();
    o.on_stage = [&](Stage stage) {
      if (job.rank == 0 && stage == Stage::kAfterTrainIter && runner.iter() == 3) hook.wait_idle();
    };
    IterLoop(
        runner, hook, 8, 100, [&](int64_t) { runner.step(); }, o)
        .run();
  });
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    ASSERT_TRUE(out.errors[static_cast<size_t>(r)]) << "rank " << r << " did not raise";
    EXPECT_THAT(out.message(r), HasSubstr("cannot remove " + p("iter_2.pth")));
    EXPECT_EQ(out.code(r), ErrorCode::kIOError);
  }
  EXPECT_THAT(out.message(1), HasSubstr("rank 0"));
  EXPECT_THAT(out.message(1), ::testing::Not(HasSubstr("Timed out")));
  // What was committed before the failure stays committed and verifiable.
  const HookState s = replayed(ledger());
  ASSERT_TRUE(s.live.count(p("iter_4.pth")));
  EXPECT_EQ(Sha256::file_hex(p("iter_4.pth")), s.live.at(p("iter_4.pth")).digest);
}

// A rank whose Runner cannot build its share of a save: that rank raises the Runner's error at
// once, the exchange of that save still goes out carrying it, nothing is committed, and every
// other rank raises it naming the rank.
TEST_F(DistTest, ARunnerThatFailsOnOneRankFailsTheSaveOnEveryRankNamingTheRank) {
  class FailingRunner : public DistRunner {
   public:
    using DistRunner::DistRunner;
    int64_t fail_at = -1;
    Dict checkpoint_state(bool with_optimizer, bool with_schedulers) override {
      if (iter() + 1 == fail_at) throw std::runtime_error("shard 7 is not on this host");
      return DistRunner::checkpoint_state(with_optimizer, with_schedulers);
    }
  };
  std::vector<int64_t> threw_at(2, -1);
  const Outcome out = run_ranks(2, [&](RankJob& job) {
    CheckpointHook hook(config("sharded", R"({"save_best": null})"));
    hook.join(job.group, job.store, kTimeout);
    FailingRunner runner(work_, job.rank, true);
    if (job.rank == 1) runner.fail_at = 4;
    IterLoop loop(runner, hook, 8, 100, [&](int64_t) { runner.step(); });
    try {
      loop.run();
    } catch (...) {
      threw_at[static_cast<size_t>(job.rank)] = runner.iter();
      throw;
    }
  });
  ASSERT_TRUE(out.errors[1]);
  EXPECT_THAT(out.message(1), HasSubstr("shard 7 is not on this host"));
  EXPECT_EQ(threw_at[1], 3) << "rank 1 raises in the hook call that saves step 4";
  ASSERT_TRUE(out.errors[0]) << "rank 0 did not raise";
  EXPECT_THAT(out.message(0), HasSubstr("rank 1"));
  EXPECT_THAT(out.message(0), HasSubstr("shard 7 is not on this host"));
  const std::vector<Event> events = events_of(ledger());
  for (const Event& e : of_kind(events, EventKind::kSaveCommitted)) {
    EXPECT_LT(e.step.value_or(0), 4) << e.path << " was committed";
  }
  const std::vector<Event> failed = of_kind(events, EventKind::kSaveFailed);
  ASSERT_FALSE(failed.empty());
  EXPECT_EQ(failed[0].path, p("iter_4.pth"));
  EXPECT_THAT(from_detail<SavePayload>(failed[0].detail, failed[0].seq).error,
              HasSubstr("shard 7 is not on this host"));
}

// In the "main" layout rank 0 writes the whole checkpoint while the other ranks wait: a write
// slower than the exchange timeout is not a dead rank (the ranks meet rank 0 through the store
// first, and the timeout counts the exchange alone).
TEST_F(DistTest, ARankZeroWriteSlowerThanTheExchangeTimeoutStillCommits) {
  RecordingFileSystem zero;
  zero.slow_target = "iter_2.pth";
  zero.slow = std::chrono::milliseconds(4000);
  const Outcome out = run_with_slow_rank(config("main", R"({"save_best": null})"), 0, zero);
  ASSERT_TRUE(out.ok()) << out.all();
  ASSERT_TRUE(zero.slowed()) << "the slow write did not happen";
  const HookState s = replayed(ledger());
  EXPECT_TRUE(s.live.count(p("iter_2.pth")));
  EXPECT_TRUE(s.live.count(p("iter_4.pth")));
}

// The same for a part written by another rank ("spread"): every rank meets the others in the
// store before the exchange, so rank 0 does not time out while rank 1 still writes its part.
TEST_F(DistTest, ARankOneWriteSlowerThanTheExchangeTimeoutStillCommits) {
  RecordingFileSystem one;
  one.slow_target = "iter_2.part1";  // rank 1's part of iter_2.pth
  one.slow = std::chrono::milliseconds(4000);
  const Outcome out = run_with_slow_rank(config("spread", R"({"save_best": null})"), 1, one);
  ASSERT_TRUE(out.ok()) << out.all();
  ASSERT_TRUE(one.slowed()) << "the slow write did not happen";
  const HookState s = replayed(ledger());
  ASSERT_TRUE(s.live.count(p("iter_2.pth")));
  EXPECT_EQ(s.live.at(p("iter_2.pth")).part_paths.size(), 2u);
  EXPECT_TRUE(s.live.count(p("iter_4.pth")));
}

// Rank 0 opens the ledger (replay, reconciliation) while the others wait for its state: that
// wait is a meeting in the store too, so a slow open (here: another connection holds the
// database for 3 s, longer than the exchange timeout) is not a dead rank.
TEST_F(DistTest, ARankZeroLedgerOpenSlowerThanTheExchangeTimeoutStillResumes) {
  ASSERT_TRUE(train(2, config("main"), 4, false).ok());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(ledger().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK);
  std::thread holder([db] {
    std::this_thread::sleep_for(std::chrono::milliseconds(3000));
    sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
    sqlite3_close(db);
  });
  std::vector<std::string> resumed(2);
  const Outcome out = run_ranks(2, [&](RankJob& job) {
    CheckpointHook hook(config("main"));
    hook.join(job.group, job.store, std::chrono::milliseconds(1500));
    DistRunner runner(work_, job.rank, false);
    resumed[static_cast<size_t>(job.rank)] = hook.resume(runner).value_or("");
  });
  holder.join();
  ASSERT_TRUE(out.ok()) << out.all();
  EXPECT_EQ(resumed[0], p("iter_4.pth"));
  EXPECT_EQ(resumed[1], p("iter_4.pth"));
}

// The same at the run's end: rank 0 publishes (here: its write of the published file takes 3 s,
// longer than the exchange timeout) while the others wait for what it recorded.
TEST_F(DistTest, ARankZeroPublishSlowerThanTheExchangeTimeoutStillEndsTheRun) {
  RecordingFileSystem zero;
  zero.slow_target = "iter_4-";  // the published copy of iter_4.pth
  zero.slow = std::chrono::milliseconds(3000);
  const Outcome out = run_with_slow_rank(
      config("main", R"({"save_best": null, "published_keys": ["meta", "state_dict"]})"), 0, zero);
  ASSERT_TRUE(out.ok()) << out.all();
  ASSERT_TRUE(zero.slowed()) << "the slow publish did not happen";
  size_t published = 0;
  for (const auto& [path, lf] : replayed(ledger()).live) published += lf.role == "published";
  EXPECT_EQ(published, 1u);
}

// A TCPStore client runs one operation at a time: while rank 1's hook waits in the store for rank
// 0's slow write, the training's own use of the store it passed to join must not wait behind it
// (the hook talks to the store over a connection of its own, under the same prefixes).
TEST_F(DistTest, TheHooksWaitInATcpStoreDoesNotHoldUpTheTrainingsUseOfIt) {
  c10d::TCPStoreOptions so;
  so.port = 0;  // any free port
  so.isServer = true;
  so.waitWorkers = false;
  so.timeout = kTimeout;
  auto server = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", so);
  RecordingFileSystem zero;
  zero.slow_target = "iter_2.pth";
  zero.slow = std::chrono::milliseconds(3000);
  double set_ms = -1;
  const Outcome out = run_ranks(2, [&](RankJob& job) {
    c10d::TCPStoreOptions co;
    co.port = server->getPort();
    co.waitWorkers = false;
    co.timeout = kTimeout;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::PrefixStore>(
        "attempt_0", c10::make_intrusive<c10d::TCPStore>("127.0.0.1", co));
    CheckpointHook hook(config("main", R"({"save_best": null})"), {},
                        job.rank == 0 ? &zero : nullptr);
    hook.join(job.group, store, kTimeout);
    DistRunner runner(work_, job.rank, false);
    LoopOptions o;
    o.on_stage = [&](Stage stage) {
      // Rank 1 has handed iter_2's exchange to its writer pool, which waits for rank 0.
      if (job.rank != 1 || stage != Stage::kAfterTrainIter || runner.iter() != 3) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      const auto t0 = std::chrono::steady_clock::now();
      store->set("training/heartbeat", std::vector<uint8_t>{1});
      set_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    };
    IterLoop(
        runner, hook, 4, 100, [&](int64_t) { runner.step(); }, o)
        .run();
  });
  ASSERT_TRUE(out.ok()) << out.all();
  ASSERT_TRUE(zero.slowed());
  ASSERT_GE(set_ms, 0) << "rank 1 did not reach iter 3";
  EXPECT_LT(set_ms, 1000) << "the training's store set waited for the hook's wait";
  EXPECT_TRUE(replayed(ledger()).live.count(p("iter_2.pth")));
}

// A rank whose program stops with an error of its own (not a hook call's) destroys its hook
// before the run's end: the hook leaves the job, so the rank waiting for it in the next exchange
// fails at once, naming it, instead of waiting out write_timeout.
TEST_F(DistTest, AHookDestroyedBeforeTheRunsEndReleasesTheRanksWaitingForIt) {
  const auto started = std::chrono::steady_clock::now();
  const Outcome out = run_ranks(2, [&](RankJob& job) {
    CheckpointHook hook(config("main", R"({"save_best": null})"));
    hook.join(job.group, job.store, kTimeout, std::chrono::minutes(10));
    DistRunner runner(work_, job.rank, false);
    LoopOptions o;
    o.on_stage = [&](Stage stage) {
      if (job.rank == 0 && stage == Stage::kAfterTrainIter && runner.iter() == 3)
        throw std::runtime_error("the data loader of rank 0 broke");
    };
    IterLoop(
        runner, hook, 8, 100, [&](int64_t) { runner.step(); }, o)
        .run();
  });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  ASSERT_TRUE(out.errors[0]);
  EXPECT_THAT(out.message(0), HasSubstr("the data loader of rank 0 broke"));
  ASSERT_TRUE(out.errors[1]) << "rank 1 did not raise";
  EXPECT_THAT(out.message(1), HasSubstr("rank 0 stopped"));
  EXPECT_THAT(out.message(1), HasSubstr("destroyed before the run's end"));
  EXPECT_LT(seconds, 60) << "rank 1 waited for rank 0's exchange";
}

// Resuming is one step of the whole job: a rank whose Runner cannot load the checkpoint stops
// every rank at resume(), with its reason, before anyone trains on.
TEST_F(DistTest, ARunnerThatCannotLoadOnOneRankStopsEveryRankAtResumeNamingIt) {
  ASSERT_TRUE(train(2, config("main"), 4, false).ok());
  class Refusing : public DistRunner {
   public:
    using DistRunner::DistRunner;
    bool refuse = false;
    void load_checkpoint(const Dict& ckpt, bool resume) override {
      if (refuse) throw std::runtime_error("conv.weight has another shape on this rank");
      DistRunner::load_checkpoint(ckpt, resume);
    }
  };
  const Outcome out = run_ranks(2, [&](RankJob& job) {
    CheckpointHook hook(config("main"));
    hook.join(job.group, job.store, kTimeout);
    Refusing runner(work_, job.rank, false);
    runner.refuse = job.rank == 1;
    hook.resume(runner);
  });
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    ASSERT_TRUE(out.errors[static_cast<size_t>(r)]) << "resumed although rank 1 cannot load";
    EXPECT_THAT(out.message(r), HasSubstr("rank 1: conv.weight has another shape on this rank"));
  }
}

// Every rank must run the same hook config in the same work_dir: a difference is found at the
// first open, before rank 0 opens the ledger, and the rank that differs names the key.
TEST_F(DistTest, ARankWithAnotherHookConfigIsAnErrorOnEveryRankNamingTheKey) {
  const Outcome out = run_ranks(2, [&](RankJob& job) {
    CheckpointHook hook(
        config("main", job.rank == 1 ? R"({"max_keep_ckpts": 3})" : R"({"max_keep_ckpts": 2})"));
    hook.join(job.group, job.store, kTimeout);
    DistRunner runner(work_, job.rank, false);
    IterLoop(runner, hook, 4, 100, [&](int64_t) { runner.step(); }).run();
  });
  ASSERT_TRUE(out.errors[0] && out.errors[1]) << out.all();
  EXPECT_THAT(out.message(1), HasSubstr("max_keep_ckpts: rank 0 has 2, rank 1 has 3"));
  EXPECT_THAT(out.message(0), HasSubstr("differs from rank 0's"));
  EXPECT_EQ(out.code(0), ErrorCode::kInvalidArgument);
  EXPECT_EQ(out.code(1), ErrorCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(ledger())) << "the ledger was opened";
}

// Two hooks of one job on one store (one after the other, as a program that trains twice): each
// has its own group and keys, and both runs commit.
TEST_F(DistTest, TwoHooksJoinedOnOneStoreEachRunTheirOwnExchanges) {
  const Outcome out = run_ranks(2, [&](RankJob& job) {
    for (const std::string dir : {"first", "second"}) {
      CheckpointHook hook(config("spread", R"({"save_best": null})"));
      hook.join(job.group, job.store, kTimeout);
      DistRunner runner((dir_ / dir).string(), job.rank, false);
      IterLoop(runner, hook, 4, 100, [&](int64_t) { runner.step(); }).run();
    }
  });
  ASSERT_TRUE(out.ok()) << out.all();
  for (const std::string dir : {"first", "second"}) {
    const HookState s = replayed((dir_ / dir / "ckptledger.sqlite").string());
    EXPECT_EQ(s.live.size(), 2u) << dir;
  }
}

// A "spread" checkpoint's part 0 (or another part) read without the ledger that lists its parts
// is refused by name rather than handed to the Runner with placeholders for tensors.
TEST_F(DistTest, LoadingOnePartOfASpreadCheckpointOutsideItsLedgerIsRefused) {
  ASSERT_TRUE(train(2, config("spread", R"({"save_best": null})"), 4).ok());
  const HookState s = replayed(ledger());
  const LiveFile& lf = s.live.at(p("iter_4.pth"));
  ASSERT_EQ(lf.part_paths.size(), 2u);
  for (const std::string& part : {p("iter_4.pth"), lf.part_paths[1]}) {
    SCOPED_TRACE(part);
    CheckpointHook hook(config("main"));
    DistRunner runner((dir_ / "elsewhere").string(), 0, false);
    try {
      hook.resume(runner, false, part);
      ADD_FAILURE() << "loaded";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_THAT(e.what(), HasSubstr(part));
      EXPECT_THAT(e.what(), HasSubstr("\"spread\""));
    }
  }
}

// A checkpoint retired as lost (its part 0 is gone) keeps its other parts, as it keeps its own
// file: they are not taken for orphans at any later start.
TEST_F(DistTest, TheOtherPartsOfALostCheckpointAreKeptWithItAtEveryLaterStart) {
  const HookConfig cfg = config("spread", R"({"save_best": null, "max_keep_ckpts": -1})");
  ASSERT_TRUE(train(2, cfg, 6).ok());
  const LiveFile lf = replayed(ledger()).live.at(p("iter_2.pth"));
  ASSERT_EQ(lf.part_paths.size(), 2u);
  fs::remove(p("iter_2.pth"));
  for (int start = 0; start < 2; ++start) {
    SCOPED_TRACE("start " + std::to_string(start));
    const Outcome out = train(2, cfg, 6, /*resume=*/true);
    ASSERT_TRUE(out.ok()) << out.all();
    EXPECT_TRUE(fs::exists(lf.part_paths[1])) << "the lost checkpoint's part 1 was removed";
  }
  const HookState s = replayed(ledger());
  EXPECT_TRUE(s.retired.count(p("iter_2.pth")));
  EXPECT_EQ(s.retired_parts.at(p("iter_2.pth")), std::vector<std::string>{lf.part_paths[1]});
  for (const Event& e : of_kind(events_of(ledger()), EventKind::kRecovered)) {
    EXPECT_NE(from_detail<RecoveredPayload>(e.detail, e.seq).finding, "orphan_part") << e.path;
  }
}

}  // namespace
}  // namespace ckptledger
