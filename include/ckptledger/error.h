// Error taxonomy shared by every ckptledger module (a status code carried by an exception).
//
// One small set of codes; the message always names the culprit (option, path, event seq).
// Errors cross API boundaries as `ckptledger::Error`; foreign exceptions (sqlite, libtorch,
// the OS) are converted at the boundary where they occur.
#pragma once

#include <stdexcept>
#include <string>

namespace ckptledger {

enum class ErrorCode {
  kInvalidArgument,  // bad config, bad path, malformed input
  kNotFound,         // a file, a ledger, a checkpoint that should exist does not
  kCorruption,       // bytes on disk disagree with what was recorded
  kIOError,          // the OS refused (permissions, ENOSPC, EIO, read-only)
  kBusy,             // another writer holds the ledger
  kVersion,          // a ledger written by a newer ckptledger
  kForeign,          // a file at the ledger's path that is not a ckptledger ledger (left untouched)
};

const char* error_code_name(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

[[noreturn]] inline void throw_error(ErrorCode code, const std::string& message) {
  throw Error(code, message);
}

}  // namespace ckptledger
