// Asynchronous persistence (docs/persistence.md): snapshot isolation, sticky errors through an
// injected filesystem, back-pressure, bounded staging memory, draining.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string_view>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ckptledger/checkpoint_hook.h"
#include "ckptledger/ledger.h"
#include "hook/checkpoint_format.h"
#include "hook/stager.h"
#include "hook/writer_pool.h"
#include "ledger/sha256.h"
#include "policy/hook_events.h"
#include "storage/durable_file.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// Parameters the test mutates between hook calls, as an optimizer step would.
class MutatingRunner : public Runner {
 public:
  explicit MutatingRunner(std::string work_dir) : work_dir_(std::move(work_dir)) {
    for (int i = 0; i < 4; ++i) params_.push_back(torch::zeros({64, 64 + i}));
  }
  int64_t epoch() const override { return epoch_; }
  int64_t iter() const override { return iter_; }
  int64_t max_epochs() const override { return 1000; }
  int64_t max_iters() const override { return 100000; }
  std::string work_dir() const override { return work_dir_; }
  c10::impl::GenericDict checkpoint_state(bool, bool) override {
    c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
    c10::impl::GenericDict sd(c10::StringType::get(), c10::AnyType::get());
    for (size_t i = 0; i < params_.size(); ++i) sd.insert("p" + std::to_string(i), params_[i]);
    d.insert("state_dict", sd);
    return d;
  }
  bool has_param_schedulers() const override { return false; }
  void load_checkpoint(const c10::impl::GenericDict&, bool) override {}
  void set_all(double v) {
    for (auto& p : params_) p.fill_(v);
  }

  int64_t epoch_ = 0, iter_ = 0;
  std::vector<torch::Tensor> params_;

 private:
  std::string work_dir_;
};

// Injects one fault into writes of files whose name contains `target`.
class FaultyFileSystem : public FileSystem {
 public:
  enum class Fault { kNone, kEnospcAfterBytes, kEioOnFdatasync, kRenameFails };
  Fault fault = Fault::kNone;
  std::string target;
  size_t budget = 0;  // kEnospcAfterBytes: bytes accepted before ENOSPC

  int open(const char* path, int flags, mode_t mode) override {
    int fd = FileSystem::open(path, flags, mode);
    std::lock_guard<std::mutex> lock(mu_);
    if (fd >= 0 && std::string(path).find(target) != std::string::npos) faulty_fds_.insert(fd);
    return fd;
  }
  ssize_t write(int fd, const void* data, size_t size) override {
    if (fault == Fault::kEnospcAfterBytes && is_faulty(fd)) {
      if (written_ + size > budget) {
        errno = ENOSPC;
        return -1;
      }
      written_ += size;
    }
    return FileSystem::write(fd, data, size);
  }
  int fdatasync(int fd) override {
    if (fault == Fault::kEioOnFdatasync && is_faulty(fd)) {
      errno = EIO;
      return -1;
    }
    return FileSystem::fdatasync(fd);
  }
  int close(int fd) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      faulty_fds_.erase(fd);
    }
    return FileSystem::close(fd);
  }
  int rename(const char* from, const char* to) override {
    if (fault == Fault::kRenameFails && std::string(to).find(target) != std::string::npos) {
      errno = EXDEV;
      return -1;
    }
    return FileSystem::rename(from, to);
  }

 private:
  bool is_faulty(int fd) {
    std::lock_guard<std::mutex> lock(mu_);
    return faulty_fds_.count(fd) > 0;
  }
  std::mutex mu_;
  std::set<int> faulty_fds_;
  size_t written_ = 0;
};

// fdatasync blocks until the test opens the gate: a deterministic slow disk.
class GatedFileSystem : public FileSystem {
 public:
  int fdatasync(int fd) override {
    std::unique_lock<std::mutex> lock(mu_);
    ++waiting_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
    return FileSystem::fdatasync(fd);
  }
  void wait_for_writer() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return waiting_ > 0; });
  }
  void open_gate() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int waiting_ = 0;
  bool open_ = false;
};

class AsyncTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("ckpt_async_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    work_ = (dir_ / "exp").string();
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string p(const std::string& name) const { return work_ + "/" + name; }
  std::vector<Event> events(EventKind kind) {
    LedgerOptions ro;
    ro.mode = OpenMode::kReadOnly;
    auto l = Ledger::open(work_ + "/ckptledger.sqlite", ro);
    std::vector<Event> out;
    l->for_each([&](const Event& e) {
      if (e.kind == kind) out.push_back(e);
      return true;
    });
    return out;
  }
  bool temp_files_left() {
    for (const auto& f : fs::recursive_directory_iterator(dir_)) {
      if (f.path().string().find(kTempSuffix) != std::string::npos) return true;
    }
    return false;
  }
  static double first_value(const std::string& path, const std::string& key) {
    auto ckpt = read_checkpoint(path).toGenericDict();
    return ckpt.at("state_dict").toGenericDict().at(key).toTensor().mean().item<double>();
  }
  fs::path dir_;
  std::string work_;
};

HookConfig cfg(const char* json) { return HookConfig::from_json(nlohmann::json::parse(json)); }

TEST_F(AsyncTest, EachCheckpointHoldsTheValuesOfItsStepWhileTrainingMutates) {
  CheckpointHook hook(cfg(R"({"interval": 1, "by_epoch": false})"));
  MutatingRunner r(work_);
  hook.before_train(r);
  for (int i = 0; i < 20; ++i) {
    r.iter_ = i;
    r.set_all(i + 1);
    hook.after_train_iter(r, i);
    r.set_all(-7);  // the next optimizer step overwrites the parameters at once
  }
  hook.wait_idle();
  for (int k = 1; k <= 20; ++k) {
    for (int t = 0; t < 4; ++t) {
      EXPECT_EQ(first_value(p("iter_" + std::to_string(k) + ".pth"), "p" + std::to_string(t)), k)
          << "iter_" << k << " tensor " << t;
    }
  }
  EXPECT_FALSE(temp_files_left());
}

TEST_F(AsyncTest, EnospcLeavesNoFileKeepsEarlierCheckpointsAndRaisesOnNextCall) {
  FaultyFileSystem faulty;
  faulty.fault = FaultyFileSystem::Fault::kEnospcAfterBytes;
  faulty.target = "epoch_3.pth";
  faulty.budget = 4096;
  CheckpointHook hook(cfg(R"({"interval": 1, "max_keep_ckpts": 2})"), {}, &faulty);
  MutatingRunner r(work_);
  hook.before_train(r);
  for (int e = 0; e < 3; ++e) {
    r.epoch_ = e;
    hook.after_train_epoch(r);
  }
  hook.wait_idle();
  EXPECT_FALSE(fs::exists(p("epoch_3.pth")));
  EXPECT_TRUE(fs::exists(p("epoch_1.pth")));  // not pruned on behalf of the failed save
  EXPECT_TRUE(fs::exists(p("epoch_2.pth")));
  EXPECT_FALSE(temp_files_left());
  auto failed = events(EventKind::kSaveFailed);
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].path, p("epoch_3.pth"));
  EXPECT_THAT(failed[0].detail, HasSubstr("No space left on device"));
  EXPECT_EQ(events(EventKind::kPruned).size(), 0u);
  r.epoch_ = 3;
  try {
    hook.after_train_epoch(r);
    FAIL() << "the sticky error was swallowed";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIOError);
    EXPECT_THAT(e.what(), HasSubstr("epoch_3.pth"));
    EXPECT_THAT(e.what(), HasSubstr("No space left on device"));
  }
  // The live state was rolled back to the ledger: epoch_3 never became the last checkpoint.
  EXPECT_EQ(hook.hub_info()["last_ckpt"], p("epoch_2.pth"));
  EXPECT_EQ(hook.hub_info()["keep_ckpt_ids"], nlohmann::json({1, 2}));
}

TEST_F(AsyncTest, EioOnFdatasyncWithOnErrorWarnLogsAndTrainingGoesOn) {
  FaultyFileSystem faulty;
  faulty.fault = FaultyFileSystem::Fault::kEioOnFdatasync;
  faulty.target = "epoch_2.pth";
  std::vector<std::string> warnings;
  CheckpointHook hook(
      cfg(R"({"interval": 1, "on_error": "warn"})"),
      [&](LogLevel level, const std::string& msg) {
        if (level == LogLevel::kWarning && msg.find("write failed") != std::string::npos) {
          warnings.push_back(msg);
        }
      },
      &faulty);
  MutatingRunner r(work_);
  hook.before_train(r);
  for (int e = 0; e < 4; ++e) {
    r.epoch_ = e;
    hook.after_train_epoch(r);
    hook.wait_idle();
  }
  EXPECT_FALSE(fs::exists(p("epoch_2.pth")));
  EXPECT_TRUE(fs::exists(p("epoch_3.pth")));
  EXPECT_TRUE(fs::exists(p("epoch_4.pth")));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_THAT(warnings[0], HasSubstr("Input/output error"));
  EXPECT_THAT(warnings[0], HasSubstr("on_error=warn"));
  EXPECT_EQ(events(EventKind::kSaveFailed).size(), 1u);
  EXPECT_FALSE(temp_files_left());
}

TEST_F(AsyncTest, FailedRenameKeepsThePreviousFileUnderThatName) {
  FaultyFileSystem faulty;
  CheckpointHook hook(cfg(R"({"interval": 1, "save_best": "acc", "sync": true})"), {}, &faulty);
  MutatingRunner r(work_);
  hook.before_train(r);
  r.set_all(1);
  r.epoch_ = 0;
  hook.after_train_epoch(r);  // epoch_1.pth
  const std::string path = p("epoch_1.pth");
  ASSERT_TRUE(fs::exists(path));
  faulty.fault = FaultyFileSystem::Fault::kRenameFails;
  faulty.target = "/epoch_1.pth";  // not best_acc_epoch_1.pth
  r.set_all(2);
  r.epoch_ = 1;
  // The best improvement re-saves the regular epoch_1.pth; its rename fails.
  EXPECT_THROW(hook.after_val_epoch(r, {{"acc", 0.5}}), Error);  // sync: raised at once
  EXPECT_EQ(first_value(path, "p0"), 1);                         // the old bytes are intact
  EXPECT_FALSE(temp_files_left());
  auto failed = events(EventKind::kSaveFailed);
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_THAT(failed[0].detail, HasSubstr("cannot rename onto"));
}

TEST_F(AsyncTest, FullBudgetMakesTheNextSaveWaitAndRecordsTheStall) {
  GatedFileSystem gated;
  std::vector<std::string> infos, warnings;
  CheckpointHook hook(
      cfg(R"({"interval": 1})"),
      [&](LogLevel level, const std::string& msg) {
        if (level == LogLevel::kInfo) infos.push_back(msg);
        if (level == LogLevel::kWarning) warnings.push_back(msg);
      },
      &gated);
  MutatingRunner r(work_);
  hook.before_train(r);
  r.epoch_ = 0;
  hook.after_train_epoch(r);  // staged; the writer blocks in fdatasync
  gated.wait_for_writer();
  std::thread opener([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    gated.open_gate();
  });
  r.epoch_ = 1;
  hook.after_train_epoch(r);  // one checkpoint in flight: waits for the first to finish
  opener.join();
  hook.wait_idle();
  auto committed = events(EventKind::kSaveCommitted);
  ASSERT_EQ(committed.size(), 2u);
  auto second = from_detail<SavePayload>(committed[1].detail, committed[1].seq);
  EXPECT_GE(second.stall_us, 100000) << committed[1].detail;
  // Flow control is logged at INFO, never as a warning.
  EXPECT_THAT(infos, ::testing::Contains(HasSubstr("in-flight budget full")));
  EXPECT_THAT(warnings, ::testing::Not(::testing::Contains(HasSubstr("in-flight budget full"))));
}

// The default budget holds a validation's burst (regular save, best save, re-save): a run whose
// writer keeps up between validations never waits.
TEST_F(AsyncTest, DefaultBudgetHoldsAValidationsBurstWithoutWaiting) {
  GatedFileSystem gated;
  std::vector<std::string> infos;
  CheckpointHook hook(
      cfg(R"({"interval": 1, "save_best": "acc"})"),
      [&](LogLevel level, const std::string& msg) {
        if (level == LogLevel::kInfo) infos.push_back(msg);
      },
      &gated);
  MutatingRunner r(work_);
  hook.before_train(r);
  r.epoch_ = 0;
  hook.after_train_epoch(r);  // the regular save; the writer blocks in fdatasync
  gated.wait_for_writer();
  hook.after_val_epoch(r, Metrics{{"acc", 0.5}});  // the best save and the re-save, still blocked
  gated.open_gate();
  hook.wait_idle();
  for (const std::string& m : infos) EXPECT_THAT(m, ::testing::Not(HasSubstr("waited"))) << m;
  for (const Event& e : events(EventKind::kSaveCommitted)) {
    EXPECT_LT(from_detail<SavePayload>(e.detail, e.seq).stall_us, 1000) << e.detail;
  }
  EXPECT_EQ(events(EventKind::kSaveCommitted).size(), 3u);
}

TEST_F(AsyncTest, StagingReusesItsBuffersAcrossSaves) {
  Stager stager(1);
  c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
  d.insert("w", torch::ones({256, 256}));
  d.insert("b", torch::ones({256}));
  const void* first_ptr = nullptr;
  for (int i = 0; i < 5; ++i) {
    auto staged = stager.stage(c10::IValue(d), nullptr);
    const void* ptr = staged->content().toGenericDict().at("w").toTensor().data_ptr();
    if (i == 0) first_ptr = ptr;
    EXPECT_EQ(ptr, first_ptr) << "save " << i << " allocated a fresh buffer";
    EXPECT_EQ(staged->bytes(), (256 * 256 + 256) * sizeof(float));
  }
  EXPECT_EQ(stager.allocated_bytes(), (256 * 256 + 256) * sizeof(float));
}

// A large save's bytes are shared between the training thread and copy helpers, cut inside
// tensors: with 0, 1 or 3 helpers every staged tensor holds exactly the values at the stage call
// (odd sizes, several dtypes, a non-contiguous view copied apart), round after round, and
// mutating the originals afterwards does not reach the staged copy.
TEST_F(AsyncTest, SharedStagingCopiesEveryByteWithAnyNumberOfHelpers) {
  for (size_t helpers : {size_t{0}, size_t{1}, size_t{3}}) {
    SCOPED_TRACE("helpers " + std::to_string(helpers));
    Stager stager(1, helpers);
    c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
    d.insert("a", torch::randn({1000, 1001}));
    d.insert("b", torch::arange(777777, torch::kInt64));
    d.insert("t", torch::randn({513, 257}).t());  // non-contiguous
    d.insert("c", torch::randn({3}));
    d.insert("e", torch::empty({0}));
    d.insert("h", torch::randn({1 << 20}).to(torch::kHalf));
    for (int round = 0; round < 3; ++round) {
      std::map<std::string, torch::Tensor> before;
      for (const auto& kv : d) {
        kv.value().toTensor().add_(1);
        before[kv.key().toStringRef()] = kv.value().toTensor().clone();
      }
      auto staged = stager.stage(c10::IValue(d), nullptr);
      for (const auto& kv : d) kv.value().toTensor().mul_(-3);  // training moves on
      const auto& out = staged->content().toGenericDict();
      for (const auto& [name, expected] : before) {
        EXPECT_TRUE(torch::equal(out.at(name).toTensor(), expected)) << name << " round " << round;
      }
    }
  }
}

// Large checkpoints go through write_durably's hashing and writing threads while the pool (two
// threads, one strand) serialises them and training mutates the originals: the digest the ledger
// records is the file's. A fault in the middle of a large file stops those threads.
TEST_F(AsyncTest, LargeCheckpointsAreHashedBesideTheWriteAndAFaultStopsTheHasher) {
  FaultyFileSystem faulty;
  faulty.fault = FaultyFileSystem::Fault::kEnospcAfterBytes;
  faulty.target = "iter_5.pth";
  faulty.budget = 3 << 20;  // inside the second 2 MiB tensor
  CheckpointHook hook(cfg(R"({"interval": 1, "by_epoch": false, "writer_threads": 2,
                              "max_inflight_bytes": 33554432})"),
                      {}, &faulty);
  MutatingRunner r(work_);
  r.params_ = {torch::zeros({512, 1024}), torch::zeros({512, 1024}), torch::zeros({1024})};
  hook.before_train(r);
  for (int i = 0; i < 4; ++i) {
    r.iter_ = i;
    r.set_all(i + 1);
    hook.after_train_iter(r, i);
    r.set_all(-7);
  }
  hook.wait_idle();
  auto committed = events(EventKind::kSaveCommitted);
  ASSERT_EQ(committed.size(), 4u);
  for (const Event& e : committed) {
    uint64_t size = 0;
    EXPECT_EQ(Sha256::file_hex(e.path, &size), e.digest) << e.path;
    EXPECT_EQ(static_cast<int64_t>(size), e.bytes.value_or(-1)) << e.path;
  }
  for (int k = 1; k <= 4; ++k) {
    EXPECT_EQ(first_value(p("iter_" + std::to_string(k) + ".pth"), "p1"), k) << "iter_" << k;
  }
  // The failure surfaces at this call or the next one, whichever comes after the write.
  bool raised = false;
  r.iter_ = 4;
  try {
    hook.after_train_iter(r, 4);
    hook.wait_idle();
    r.iter_ = 5;
    hook.after_train_iter(r, 5);
  } catch (const Error& e) {
    raised = true;
    EXPECT_THAT(e.what(), HasSubstr("No space left on device"));
  }
  EXPECT_TRUE(raised);
  hook.wait_idle();
  EXPECT_FALSE(fs::exists(p("iter_5.pth")));
  EXPECT_FALSE(temp_files_left());
  EXPECT_EQ(events(EventKind::kSaveFailed).size(), 1u);
}

// Records how write_durably uses O_DIRECT, and can refuse it (a filesystem without O_DIRECT) or
// reject the first direct write with EINVAL (one that takes the flag but not the writes).
class DirectIoProbe : public FileSystem {
 public:
  bool refuse = false;
  bool reject_first_direct_write = false;
  int set_direct_io(int fd, bool on) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (on) ++requests_;
    if (on && refuse) {
      errno = EINVAL;
      return -1;
    }
    int rc = FileSystem::set_direct_io(fd, on);
    if (rc == 0) direct_ = on;
    return rc;
  }
  ssize_t write(int fd, const void* data, size_t size) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (direct_) ++direct_writes_;
      if (direct_ && reject_first_direct_write && !rejected_) {
        rejected_ = true;
        errno = EINVAL;
        return -1;
      }
    }
    return FileSystem::write(fd, data, size);
  }
  int requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  int direct_writes() {
    std::lock_guard<std::mutex> lock(mu_);
    return direct_writes_;
  }

 private:
  std::mutex mu_;
  bool direct_ = false, rejected_ = false;
  int requests_ = 0, direct_writes_ = 0;
};

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// write_durably copies the stream into 1 MiB blocks that a hashing and a writing thread share:
// whatever the chunking (tiny headers, chunks spanning several blocks, a file ending on or just
// off a block boundary), the file holds the stream and the digest is the file's, with O_DIRECT
// where the filesystem takes it and buffered where it refuses it or rejects a direct write.
TEST_F(AsyncTest, WriteDurablyKeepsTheStreamWhateverTheChunkingAndDirectIoSupport) {
  fs::create_directories(work_);
  const size_t mib = 1 << 20;
  std::vector<char> big(5 * mib + 4099);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 + (i >> 12));
  const std::vector<size_t> chunks = {100, 3, mib, 1000, 2 * mib + 7, 1, 64 << 10};
  for (size_t total : {size_t{0}, size_t{1}, mib - 1, mib, mib + 1, 3 * mib + 1100, big.size()}) {
    for (int mode = 0; mode < 3; ++mode) {
      SCOPED_TRACE("bytes " + std::to_string(total) + ", mode " + std::to_string(mode));
      DirectIoProbe probe;
      probe.refuse = mode == 1;
      probe.reject_first_direct_write = mode == 2;
      const std::string path = p("f_" + std::to_string(total) + "_" + std::to_string(mode));
      WrittenFile w = write_durably(
          path,
          [&](const ByteSink& sink) {
            size_t off = 0;
            for (size_t k = 0; off < total; ++k) {
              const size_t n = std::min(chunks[k % chunks.size()], total - off);
              std::vector<char> scratch(big.begin() + off, big.begin() + off + n);  // call-only
              sink(scratch.data(), n);
              off += n;
            }
          },
          probe);
      const std::string_view expected(big.data(), total);
      EXPECT_EQ(w.bytes, total);
      EXPECT_EQ(w.sha256, Sha256::hex(expected));
      EXPECT_TRUE(read_all(path) == expected) << "file content differs from the stream";
      if (total < mib) {
        EXPECT_EQ(probe.requests(), 0) << "a file under one block is written inline, buffered";
      } else {
        EXPECT_GE(probe.requests(), 1) << "a large file asks for O_DIRECT";
      }
      if (mode == 1) {
        EXPECT_EQ(probe.direct_writes(), 0);
      }
    }
  }
  EXPECT_FALSE(temp_files_left());
}

// A producer that fails after handing over several blocks, and a disk that fills up in the
// middle of a large file: the error comes out of write_durably, no file takes the name, the temp
// file is gone and no thread is left running.
TEST_F(AsyncTest, WriteDurablyFailuresMidFileLeaveNothing) {
  fs::create_directories(work_);
  std::vector<char> big(6 << 20, 'x');
  EXPECT_THROW(write_durably(p("bad.bin"),
                             [&](const ByteSink& sink) {
                               sink(big.data(), 3 << 20);
                               throw std::runtime_error("producer failed");
                             }),
               std::runtime_error);
  EXPECT_FALSE(fs::exists(p("bad.bin")));

  FaultyFileSystem faulty;
  faulty.fault = FaultyFileSystem::Fault::kEnospcAfterBytes;
  faulty.target = "full.bin";
  faulty.budget = (2 << 20) + 12345;
  try {
    write_durably(
        p("full.bin"), [&](const ByteSink& sink) { sink(big.data(), big.size()); }, faulty);
    ADD_FAILURE() << "a full disk went unnoticed";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIOError);
    EXPECT_THAT(e.what(), HasSubstr("No space left on device"));
    EXPECT_THAT(e.what(), HasSubstr("full.bin"));
  }
  EXPECT_FALSE(fs::exists(p("full.bin")));
  EXPECT_FALSE(temp_files_left());
}

int own_nice() {
  errno = 0;
  return ::getpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)));
}

// The writer's threads (and the hashing/writing threads a job starts) run `nice` steps below the
// thread that created the pool, capped at 19; nice 0 leaves them level with it.
TEST_F(AsyncTest, WriterThreadsRunAtTheConfiguredLowerPriority) {
  const int base = own_nice();
  for (int increment : {0, 7, 19}) {
    SCOPED_TRACE("nice " + std::to_string(increment));
    WriterPool pool(1, increment);
    int in_job = -100, in_child = -100;
    pool.post([&] {
      in_job = own_nice();
      std::thread child([&] { in_child = own_nice(); });
      child.join();
    });
    pool.drain();
    EXPECT_EQ(in_job, std::min(19, base + increment));
    EXPECT_EQ(in_child, in_job);
  }
  EXPECT_EQ(own_nice(), base) << "the creating thread keeps its priority";
}

// Records the nice value of the threads that open and write checkpoint files.
class NiceProbe : public FileSystem {
 public:
  int open(const char* path, int flags, mode_t mode) override {
    if (std::string(path).find(".pth") != std::string::npos) note(opens_);
    return FileSystem::open(path, flags, mode);
  }
  ssize_t write(int fd, const void* data, size_t size) override {
    note(writes_);
    return FileSystem::write(fd, data, size);
  }
  std::set<int> opens() {
    std::lock_guard<std::mutex> lock(mu_);
    return opens_;
  }
  std::set<int> writes() {
    std::lock_guard<std::mutex> lock(mu_);
    return writes_;
  }

 private:
  void note(std::set<int>& into) {
    const int n = own_nice();
    std::lock_guard<std::mutex> lock(mu_);
    into.insert(n);
  }
  std::mutex mu_;
  std::set<int> opens_, writes_;
};

// The hook hands `writer_nice` to its writer: checkpoint files are opened by a pool thread and
// written by the block writer it starts, both `writer_nice` below training; a sync hook writes on
// the training thread at training's priority.
TEST_F(AsyncTest, CheckpointsAreWrittenAtWriterNiceBelowTraining) {
  const int base = own_nice();
  for (bool sync : {false, true}) {
    SCOPED_TRACE(sync ? "sync" : "async");
    NiceProbe probe;
    const std::string json =
        std::string(R"({"interval": 1, "by_epoch": false, "writer_nice": 6, "sync": )") +
        (sync ? "true" : "false") + "}";
    CheckpointHook hook(cfg(json.c_str()), {}, &probe);
    MutatingRunner r(work_ + (sync ? "_sync" : "_async"));
    r.params_ = {torch::zeros({512, 1024}), torch::zeros({1024})};  // 2 MiB: the block threads
    hook.before_train(r);
    for (int i = 0; i < 2; ++i) {
      r.iter_ = i;
      hook.after_train_iter(r, i);
    }
    hook.wait_idle();
    const int expected = sync ? base : std::min(19, base + 6);
    EXPECT_EQ(probe.opens(), std::set<int>{expected});
    EXPECT_EQ(probe.writes(), std::set<int>{expected});
    EXPECT_EQ(own_nice(), base);
  }
}

TEST_F(AsyncTest, DestructionDrainsEveryAcceptedSave) {
  {
    CheckpointHook hook(cfg(R"({"interval": 1})"));
    MutatingRunner r(work_);
    hook.before_train(r);
    for (int e = 0; e < 5; ++e) {
      r.epoch_ = e;
      hook.after_train_epoch(r);
    }
  }
  for (int k = 1; k <= 5; ++k) EXPECT_TRUE(fs::exists(p("epoch_" + std::to_string(k) + ".pth")));
  EXPECT_EQ(events(EventKind::kSaveCommitted).size(), 5u);
}

}  // namespace
}  // namespace ckptledger
