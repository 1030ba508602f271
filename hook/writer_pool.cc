#include "hook/writer_pool.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <optional>
#include <stdexcept>

#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>

namespace ckptledger {

struct WriterPool::Impl {
  std::optional<boost::asio::thread_pool> pool;
  std::optional<boost::asio::strand<boost::asio::thread_pool::executor_type>> strand;
  std::mutex mu;  // guards pending, error, failed
  std::condition_variable idle;
  size_t pending = 0;
  std::exception_ptr error;  // sticky until taken
  bool failed = false;       // later jobs are skipped until the error is taken
  int nice = 0;              // the pool threads' nice value (absolute)

  // Lowers the calling pool thread's priority to `nice`, once per thread. A hint: where the
  // system refuses, the thread keeps its priority.
  void lower_priority() const {
    thread_local int applied = -100;
    if (applied == nice) return;
    applied = nice;
    const auto tid = static_cast<id_t>(::syscall(SYS_gettid));
    (void)::setpriority(PRIO_PROCESS, tid, nice);
  }

  // Runs one job with the sticky-error rules; on any thread. A collective job runs after a
  // failure too, with it as its argument.
  void run(const std::function<void(std::exception_ptr)>& job,
           const std::function<void(std::exception_ptr)>& on_error, bool collective) {
    std::exception_ptr earlier;
    bool skip;
    {
      std::lock_guard<std::mutex> lock(mu);
      skip = failed && !collective;
      if (failed) earlier = error;
    }
    if (skip) {
      // An earlier job failed and the training thread has not seen it yet: this job's decision
      // was made on a state that no longer holds, so it is not carried out (but reported).
      if (on_error) {
        on_error(std::make_exception_ptr(
            std::runtime_error("skipped: an earlier checkpoint write failed before this one ran")));
      }
      return;
    }
    try {
      job(earlier);
    } catch (...) {
      std::exception_ptr e = std::current_exception();
      if (on_error) on_error(e);
      std::lock_guard<std::mutex> lock(mu);
      if (!error) error = e;
      failed = true;
    }
  }

  void post(WriterPool& owner, std::function<void(std::exception_ptr)> job,
            std::function<void(std::exception_ptr)> on_error, bool collective) {
    if (owner.synchronous()) {
      run(job, on_error, collective);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      ++pending;
    }
    boost::asio::post(*strand,
                      [this, job = std::move(job), on_error = std::move(on_error), collective] {
                        lower_priority();
                        run(job, on_error, collective);
                        std::lock_guard<std::mutex> lock(mu);
                        if (--pending == 0) idle.notify_all();
                      });
  }
};

WriterPool::WriterPool(size_t threads, int nice)
    : impl_(std::make_unique<Impl>()), sync_(threads == 0) {
  if (!sync_) {
    errno = 0;
    const int base = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)));
    impl_->nice = std::clamp((errno == 0 ? base : 0) + std::max(0, nice), -20, 19);
    impl_->pool.emplace(threads);
    impl_->strand.emplace(boost::asio::make_strand(*impl_->pool));
  }
}

WriterPool::~WriterPool() {
  if (!sync_) {
    drain();
    impl_->pool->join();
  }
}

void WriterPool::post(std::function<void()> job, std::function<void(std::exception_ptr)> on_error) {
  impl_->post(
      *this, [job = std::move(job)](std::exception_ptr) { job(); }, std::move(on_error),
      /*collective=*/false);
}

void WriterPool::post_collective(std::function<void(std::exception_ptr)> job,
                                 std::function<void(std::exception_ptr)> on_error) {
  impl_->post(*this, std::move(job), std::move(on_error), /*collective=*/true);
}

void WriterPool::drain() {
  if (sync_) return;
  std::unique_lock<std::mutex> lock(impl_->mu);
  impl_->idle.wait(lock, [&] { return impl_->pending == 0; });
}

std::exception_ptr WriterPool::take_error() {
  std::unique_lock<std::mutex> lock(impl_->mu);
  if (!impl_->error) return nullptr;
  // Jobs posted behind the failed one were decided on a state that no longer holds: they must
  // all have been skipped before `failed` is cleared, or one still queued would run after it.
  impl_->idle.wait(lock, [&] { return impl_->pending == 0; });
  std::exception_ptr e = impl_->error;
  impl_->error = nullptr;
  impl_->failed = false;
  return e;
}

}  // namespace ckptledger
