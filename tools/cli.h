// What the two command-line binaries share: exit codes, the error-to-exit-code mapping, and how a
// verb runs. `ckptledger` (catalog verbs, no libtorch: starts in milliseconds) hands the verbs
// that train through the real hook (simulate, demo) to `ckptledger-train`, installed next to it.
#pragma once

#include <unistd.h>

#include <climits>
#include <cstdio>
#include <exception>
#include <string>

#include <fmt/format.h>

#include "catalog/catalog.h"
#include "ckptledger/error.h"

namespace ckptledger::cli {

// Exit codes (docs/cli.md): every verb of both binaries exits with one of these.
constexpr int kExitOk = 0;
constexpr int kExitProblems = 1;  // verify/gc found problems
constexpr int kExitUsage = 2;  // bad command line, or an argument refused later (kInvalidArgument)
constexpr int kExitNotFound = 3;  // no ledger (or checkpoint) at the path given
constexpr int kExitCorrupt = 4;   // a corrupt ledger, or a file that is not a ckptledger ledger
constexpr int kExitVersion = 5;   // a ledger written by a newer ckptledger
constexpr int kExitIO = 6;        // the OS refused (permissions, full disk, I/O error)
constexpr int kExitBusy = 7;      // another process holds the ledger's writer lock
constexpr int kExitNothing = 8;   // the query matched nothing

inline int exit_code_for(const Error& e) {
  switch (e.code()) {
    case ErrorCode::kInvalidArgument:
      return kExitUsage;
    case ErrorCode::kNotFound:
      return kExitNotFound;
    case ErrorCode::kCorruption:
    case ErrorCode::kForeign:
      return kExitCorrupt;
    case ErrorCode::kVersion:
      return kExitVersion;
    case ErrorCode::kIOError:
      return kExitIO;
    case ErrorCode::kBusy:
      return kExitBusy;
  }
  return kExitIO;
}

// Runs one verb; every error becomes a one-line message on stderr and its exit code.
template <typename Fn>
int guarded(Fn&& verb) {
  try {
    return verb();
  } catch (const UsageError& e) {
    fmt::print(stderr, "ckptledger: usage error: {}\n", e.what());
    return kExitUsage;
  } catch (const Error& e) {
    fmt::print(stderr, "ckptledger: error: {}\n", e.what());
    return exit_code_for(e);
  } catch (const std::exception& e) {
    fmt::print(stderr, "ckptledger: error: {}\n", e.what());
    return kExitIO;
  }
}

// The running binary (for verbs that start copies of themselves, and to find the sibling binary).
inline std::string self_exe(const char* argv0) {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return argv0;
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace ckptledger::cli
