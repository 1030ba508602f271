// `ckptledger watch`: every committed event once, in seq order, as it commits (docs/serve.md).
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include <fmt/format.h>

#include "catalog/follow.h"
#include "tools/ckptledger/verbs.h"
#include "tools/cli.h"

namespace ckptledger::cli {
namespace {

using ojson = nlohmann::ordered_json;

volatile sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

// SIGINT / SIGTERM end the watch (exit 0); installed without SA_RESTART so a wait returns at once.
void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
}

void print_row(const ojson& row, bool json, const std::string& work_dir) {
  if (json) {
    std::fputs((row.dump() + "\n").c_str(), stdout);
  } else {
    std::fputs(fmt::format("{:>6}  {}  {:<14}  {:>5} {:>4} {:>6}  {}  {}\n", cell_text(row["seq"]),
                           cell_text(row["time"]), cell_text(row["kind"]), cell_text(row["step"]),
                           cell_text(row["epoch"]), cell_text(row["iter"]),
                           relative_to(cell_text(row["path"]), work_dir), cell_text(row["summary"]))
                   .c_str(),
               stdout);
  }
  std::fflush(stdout);
}

// The newest run has ended normally (its run_finished is the newest run event) and no process
// holds the writer's lock.
bool finished(LedgerFollower& f) {
  ResultSet rs = f.catalog().query(
      "SELECT kind FROM events WHERE kind IN ('run_started', 'run_finished') ORDER BY seq DESC "
      "LIMIT 1");
  return !rs.rows.empty() && rs.rows[0][0] == "run_finished" && !f.catalog().writer_active();
}

}  // namespace

int run_watch(const WatchOptions& o) {
  if (o.since < 0) throw UsageError("--since: must be a seq >= 0");
  for (const std::string& k : o.kinds) {
    if (!event_kind_from_name(k))
      throw UsageError(fmt::format("--kind: '{}' is not an event kind", k));
  }
  install_stop_handlers();
  LedgerFollower follower(o.ledger);
  int64_t cursor = o.since;
  constexpr int64_t kBatch = 1000;
  // Prints every matching event past the cursor, and moves the cursor past the others too.
  auto print_new = [&] {
    const std::string work_dir = follower.catalog().work_dir();
    // Read before the rows: every matching event up to it is among the rows that follow.
    const int64_t committed = o.kinds.empty() ? 0 : follower.last_seq();
    for (;;) {
      ojson rows = follower.events_after(cursor, o.kinds, kBatch);
      for (const ojson& row : rows) {
        print_row(row, o.json, work_dir);
        cursor = row["seq"].get<int64_t>();
      }
      if (static_cast<int64_t>(rows.size()) < kBatch || g_stop) break;
    }
    cursor = std::max(cursor, committed);
  };
  while (!g_stop) {
    if (follower.ready()) {
      print_new();
      if (o.until_finished && finished(follower)) {
        // The writer may have committed its last events (run_finished among them) and exited
        // after the read above: read once more, now that nothing can be appended.
        print_new();
        return kExitOk;
      }
    }
    follower.wait(std::chrono::milliseconds(1000));
  }
  return kExitOk;
}

}  // namespace ckptledger::cli
