// `ckptledger`: the command-line tool. Each verb opens ledgers read-only unless it says otherwise.
//
// Exit codes: 0 ok; 1 problems found (verify); 2 usage error; 3 ledger not found;
// 4 corrupt or foreign ledger; 5 ledger of a newer version; 6 I/O error; 7 busy.
#include <cstdio>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "ledger/ledger.h"

namespace {

int exit_code_for(const ckptledger::Error& e) {
  switch (e.code()) {
    case ckptledger::ErrorCode::kInvalidArgument:
      return 4;
    case ckptledger::ErrorCode::kNotFound:
      return 3;
    case ckptledger::ErrorCode::kCorruption:
      return 4;
    case ckptledger::ErrorCode::kVersion:
      return 5;
    case ckptledger::ErrorCode::kIOError:
      return 6;
    case ckptledger::ErrorCode::kBusy:
      return 7;
  }
  return 6;
}

int run_verify(const std::string& target) {
  ckptledger::LedgerOptions ro;
  ro.mode = ckptledger::OpenMode::kReadOnly;
  auto ledger = ckptledger::Ledger::open(ckptledger::resolve_ledger_path(target), ro);
  ckptledger::VerifyReport r = ledger->verify();
  if (r.ok()) {
    fmt::print("{}: hash chain intact ({} events)\n", ledger->path(), r.events_checked);
    return 0;
  }
  fmt::print("{}: hash chain BROKEN: {}\n", ledger->path(), r.problem);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ckptledger: MMEngine's CheckpointHook on an append-only SQLite ledger"};
  app.set_version_flag("--version", std::string("ckptledger ") + CKPTLEDGER_VERSION);
  app.require_subcommand(0, 1);

  std::string verify_target;
  auto* verify = app.add_subcommand("verify", "Recompute the ledger's hash chain");
  verify->add_option("ledger", verify_target, "ledger file or work_dir")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  try {
    if (*verify) return run_verify(verify_target);
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const ckptledger::Error& e) {
    fmt::print(stderr, "ckptledger: error: {}\n", e.what());
    return exit_code_for(e);
  }
}
