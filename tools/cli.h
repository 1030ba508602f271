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

// Exit codes (README "CLI"): 0 ok; 1 problems found; 2 usage error; 3 ledger not found;
// 4 corrupt or foreign ledger; 5 ledger of a newer version; 6 I/O error; 7 busy; 8 nothing matched.
constexpr int kExitProblems = 1;
constexpr int kExitUsage = 2;
constexpr int kExitIO = 6;
constexpr int kExitNothing = 8;

inline int exit_code_for(const Error& e) {
  switch (e.code()) {
    case ErrorCode::kInvalidArgument:
      return 4;
    case ErrorCode::kNotFound:
      return 3;
    case ErrorCode::kCorruption:
      return 4;
    case ErrorCode::kVersion:
      return 5;
    case ErrorCode::kIOError:
      return kExitIO;
    case ErrorCode::kBusy:
      return 7;
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
