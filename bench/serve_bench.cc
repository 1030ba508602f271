// serve_bench: what `ckptledger serve` costs a training run that it follows, and how fast it
// answers while the training runs (docs/serve.md).
//
// Each pair of runs trains the same job (`ckptledger-train train`, the demo's model through the
// hook) twice in fresh work_dirs: once alone (the baseline), once while `ckptledger serve` follows
// it with `--clients` keep-alive clients polling `/best` every `--poll-ms` and `--sse` clients on
// `/events`. The clients run in this process on one Asio thread (a C++ client: a Python one would
// cost the shared cores more than the server). The order alternates between pairs; the figure is
// the median loaded time ÷ the median baseline time, and the p50 / p99 of `/best` over every
// request of the loaded runs.
//
//   serve_bench --bin build/bin [--iters 40000] [--interval 200] [--pairs 5] [--clients 200]
//               [--sse 50] [--poll-ms 1000] [--json FILE]
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "bench/figures.h"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace fs = std::filesystem;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string bin = "build/bin";
  int iters = 40000;
  int interval = 200;  // validate and save every N iterations
  int pairs = 5;
  int clients = 200;
  int sse = 50;
  int poll_ms = 1000;
  std::string json;
};

// Starts `argv` with stdout/stderr to /dev/null (or to a pipe for stdout); returns its pid.
pid_t spawn(const std::vector<std::string>& argv, int* stdout_pipe = nullptr) {
  int fds[2] = {-1, -1};
  if (stdout_pipe && ::pipe(fds) != 0) throw std::runtime_error("pipe");
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    ::setpgid(0, 0);
    int null = ::open("/dev/null", O_WRONLY);
    ::dup2(stdout_pipe ? fds[1] : null, 1);
    ::dup2(null, 2);
    if (stdout_pipe) {
      ::close(fds[0]);
      ::close(fds[1]);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  if (stdout_pipe) {
    ::close(fds[1]);
    *stdout_pipe = fds[0];
  }
  return pid;
}

int wait_for(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

double train(const Options& o, const std::string& work_dir) {
  const auto t0 = Clock::now();
  const std::string config = work_dir + ".json";
  {
    std::FILE* f = std::fopen(config.c_str(), "w");
    if (!f) throw std::runtime_error("cannot write " + config);
    std::fprintf(f,
                 "{\"interval\": %d, \"by_epoch\": false, \"max_keep_ckpts\": 3, "
                 "\"save_best\": \"acc\"}\n",
                 o.interval);
    std::fclose(f);
  }
  pid_t pid = spawn({o.bin + "/ckptledger-train", "train", "--work-dir", work_dir, "--iters",
                     std::to_string(o.iters), "--seed", "0", "--config", config});
  if (int rc = wait_for(pid); rc != 0) {
    throw std::runtime_error(fmt::format("training in {} exited {}", work_dir, rc));
  }
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The load: `clients` pollers of /best and `sse` followers of /events, on one io_context.
class Load {
 public:
  Load(const Options& o, uint16_t port) : o_(o), ep_(asio::ip::make_address("127.0.0.1"), port) {}

  void start() {
    for (int i = 0; i < o_.clients; ++i) {
      // Spread the first polls over one period, as independent clients would be.
      std::make_shared<Poller>(*this,
                               std::chrono::milliseconds(o_.poll_ms * i / std::max(1, o_.clients)))
          ->start();
    }
    for (int i = 0; i < o_.sse; ++i) std::make_shared<Follower>(*this)->start();
    thread_ = std::thread([this] { ioc_.run(); });
  }
  void stop() {
    stopping_ = true;
    ioc_.stop();
    if (thread_.joinable()) thread_.join();
  }
  std::vector<double> latencies_ms;  // io thread only until stop()
  int64_t errors = 0;
  std::atomic<int64_t> sse_bytes{0};
  std::atomic<bool> recording{false};  // latencies count only while the training runs

 private:
  struct Poller : std::enable_shared_from_this<Poller> {
    Poller(Load& l, std::chrono::milliseconds delay)
        : load(l), stream(l.ioc_), timer(l.ioc_), first(delay) {}
    void start() {
      timer.expires_after(first);
      timer.async_wait([self = shared_from_this()](beast::error_code) { self->connect(); });
    }
    void connect() {
      stream.async_connect(load.ep_, [self = shared_from_this()](beast::error_code ec) {
        if (ec) return self->retry();
        self->poll();
      });
    }
    void retry() {
      ++load.errors;
      if (load.stopping_) return;
      stream.close();
      timer.expires_after(std::chrono::milliseconds(load.o_.poll_ms));
      timer.async_wait([self = shared_from_this()](beast::error_code) { self->connect(); });
    }
    void poll() {
      req = {http::verb::get, "/best", 11};
      req.set(http::field::host, "127.0.0.1");
      sent = Clock::now();
      http::async_write(stream, req, [self = shared_from_this()](beast::error_code ec, size_t) {
        if (ec) return self->retry();
        self->res = {};
        http::async_read(self->stream, self->buf, self->res, [self](beast::error_code ec2, size_t) {
          if (ec2) return self->retry();
          if (self->load.recording) {
            self->load.latencies_ms.push_back(
                std::chrono::duration<double, std::milli>(Clock::now() - self->sent).count());
          }
          self->timer.expires_at(self->sent + std::chrono::milliseconds(self->load.o_.poll_ms));
          self->timer.async_wait([self](beast::error_code) { self->poll(); });
        });
      });
    }
    Load& load;
    beast::tcp_stream stream;
    asio::steady_timer timer;
    std::chrono::milliseconds first;
    beast::flat_buffer buf;
    http::request<http::empty_body> req;
    http::response<http::string_body> res;
    Clock::time_point sent;
  };

  struct Follower : std::enable_shared_from_this<Follower> {
    explicit Follower(Load& l) : load(l), socket(l.ioc_) {}
    void start() {
      socket.async_connect(load.ep_, [self = shared_from_this()](beast::error_code ec) {
        if (ec) return;
        auto req = std::make_shared<std::string>(
            "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n");
        asio::async_write(self->socket, asio::buffer(*req),
                          [self, req](beast::error_code ec2, size_t) {
                            if (!ec2) self->read();
                          });
      });
    }
    void read() {
      socket.async_read_some(asio::buffer(chunk),
                             [self = shared_from_this()](beast::error_code ec, size_t n) {
                               if (ec) return;
                               self->load.sse_bytes += static_cast<int64_t>(n);
                               self->read();
                             });
    }
    Load& load;
    tcp::socket socket;
    std::array<char, 16384> chunk{};
  };

  const Options& o_;
  tcp::endpoint ep_;
  asio::io_context ioc_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
};

// CPU seconds (user + system) a process has used so far, from /proc.
double cpu_seconds(pid_t pid) {
  std::FILE* f = std::fopen(fmt::format("/proc/{}/stat", pid).c_str(), "r");
  if (!f) return 0;
  char buf[2048] = {};
  size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  const char* p = std::strrchr(buf, ')');  // fields after the command name
  if (!p || n == 0) return 0;
  unsigned long utime = 0, stime = 0;
  // state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime
  std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime);
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

double self_cpu_seconds() {
  struct rusage ru {};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  return v[i];
}

double median(std::vector<double> v) { return percentile(std::move(v), 0.5); }

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + ": needs a value");
      return argv[++i];
    };
    if (a == "--bin")
      o.bin = next();
    else if (a == "--iters")
      o.iters = std::stoi(next());
    else if (a == "--interval")
      o.interval = std::stoi(next());
    else if (a == "--pairs")
      o.pairs = std::stoi(next());
    else if (a == "--clients")
      o.clients = std::stoi(next());
    else if (a == "--sse")
      o.sse = std::stoi(next());
    else if (a == "--poll-ms")
      o.poll_ms = std::stoi(next());
    else if (a == "--json")
      o.json = next();
    else {
      std::fprintf(stderr, "serve_bench: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  ::signal(SIGPIPE, SIG_IGN);
  const fs::path tmp = fs::temp_directory_path() / fmt::format("serve_bench.{}", ::getpid());
  fs::create_directories(tmp);
  std::vector<double> alone, served, latencies, server_cpu, client_cpu;
  int64_t errors = 0, sse_bytes = 0;
  fmt::print(
      "serve_bench: {} iterations per run, {} pairs, {} clients polling /best every {} ms, "
      "{} SSE followers\n",
      o.iters, o.pairs, o.clients, o.poll_ms, o.sse);
  for (int p = 0; p < o.pairs; ++p) {
    for (int k = 0; k < 2; ++k) {
      const bool loaded = (k == 0) == (p % 2 == 1);
      const std::string dir = (tmp / fmt::format("run{}{}", p, loaded ? "s" : "a")).string();
      fs::create_directories(dir);
      if (!loaded) {
        alone.push_back(train(o, dir));
        fmt::print("  pair {}: alone  {:.3f} s\n", p, alone.back());
        continue;
      }
      int out = -1;
      pid_t server = spawn({o.bin + "/ckptledger", "serve", dir, "--port", "0"}, &out);
      char line[256] = {};
      ssize_t n = ::read(out, line, sizeof(line) - 1);
      const char* colon = n > 0 ? std::strrchr(line, ':') : nullptr;
      if (!colon) throw std::runtime_error("serve printed no address");
      const uint16_t port = static_cast<uint16_t>(std::atoi(colon + 1));
      Load load(o, port);
      load.start();
      std::this_thread::sleep_for(std::chrono::seconds(2));  // every client connected
      load.recording = true;
      const double server0 = cpu_seconds(server), client0 = self_cpu_seconds();
      served.push_back(train(o, dir));
      server_cpu.push_back(cpu_seconds(server) - server0);
      client_cpu.push_back(self_cpu_seconds() - client0);
      load.recording = false;
      load.stop();
      ::kill(server, SIGTERM);
      wait_for(server);
      ::close(out);
      latencies.insert(latencies.end(), load.latencies_ms.begin(), load.latencies_ms.end());
      errors += load.errors;
      sse_bytes += load.sse_bytes;
      fmt::print(
          "  pair {}: served {:.3f} s ({} /best answers, {} SSE bytes; CPU: server {:.2f} s, "
          "clients {:.2f} s)\n",
          p, served.back(), load.latencies_ms.size(), load.sse_bytes.load(), server_cpu.back(),
          client_cpu.back());
    }
  }
  fs::remove_all(tmp);
  // Each pair's two runs are adjacent in time: their ratio cancels the machine's slow drift; the
  // figure is the median of the pairs' ratios.
  std::vector<double> ratios;
  for (size_t i = 0; i < served.size() && i < alone.size(); ++i)
    ratios.push_back(served[i] / alone[i]);
  const double ratio = median(ratios);
  const double p50 = percentile(latencies, 0.5), p99 = percentile(latencies, 0.99);
  const double cpu_share = median(server_cpu) / median(served);
  fmt::print(
      "training time served / alone: {:.3f} (goal <= 1.02; median of {} pairs, each "
      "{:.3f}..{:.3f}; "
      "medians {:.3f} s / {:.3f} s)\n",
      ratio, ratios.size(), *std::min_element(ratios.begin(), ratios.end()),
      *std::max_element(ratios.begin(), ratios.end()), median(served), median(alone));
  fmt::print(
      "server CPU while training: {:.2f} s per run = {:.1f}% of one core; clients {:.2f} s\n",
      median(server_cpu), 100 * cpu_share, median(client_cpu));
  fmt::print(
      "/best latency: p50 {:.2f} ms, p99 {:.2f} ms (goal p99 < 20 ms) over {} requests, {} "
      "connection errors\n",
      p50, p99, latencies.size(), errors);
  ckptledger::bench::FigureLog log("serve_bench");
  log.add(
      fmt::format("serve: training run while `serve` answers {} /best pollers (every {} ms) and "
                  "{} SSE followers ÷ the run alone (median of pair ratios)",
                  o.clients, o.poll_ms, o.sse),
      ratio, "≤ 1.02", ratio <= 1.02,
      fmt::format("{:.2f} s / {:.2f} s, {} pairs", median(served), median(alone), ratios.size()));
  log.add("serve: /best p99 latency while training ÷ 20 ms", p99 / 20.0, "< 1 (20 ms)", p99 < 20.0,
          fmt::format("p50 {:.2f} ms, p99 {:.2f} ms, {} requests", p50, p99, latencies.size()));
  log.add("serve: server CPU time ÷ training wall time (1 = one core)", cpu_share,
          fmt::format("{:.2f} CPU-s per {:.2f} s run", median(server_cpu), median(served)));
  log.write(o.json);
  return 0;
}
