// The `ckptledger` verbs that live in their own files (main.cc holds the short ones): `watch`
// (watch.cc) and `serve` (serve.cc), both read-only followers of a ledger (docs/serve.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ckptledger::cli {

struct WatchOptions {
  std::string ledger = ".";        // ledger file or work_dir
  int64_t since = 0;               // cursor: print events with seq > since
  std::vector<std::string> kinds;  // empty: all
  bool json = false;               // NDJSON, one history row per line
  bool until_finished = false;     // exit once the newest run finished and no writer is active
};
int run_watch(const WatchOptions& o);

struct ServeOptions {
  std::string target = ".";  // work_dir or ledger (ignored with root)
  std::string root;          // serve every work_dir below it
  std::string bind = "127.0.0.1";
  int port = 8470;
  std::string token_file;
  int max_connections = 512;
  int threads = 2;
  int nice = 10;  // niceness increment of every server thread: a training process on the same cores
                  // keeps its CPU (as the hook's writer pool does: writer_nice)
  std::string dashboard_dir;  // serve the dashboard's files from here instead of the embedded copy
};
int run_serve(const ServeOptions& o);

}  // namespace ckptledger::cli
