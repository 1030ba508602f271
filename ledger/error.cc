#include "ckptledger/error.h"

namespace ckptledger {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return "InvalidArgument";
    case ErrorCode::kNotFound:
      return "NotFound";
    case ErrorCode::kCorruption:
      return "Corruption";
    case ErrorCode::kIOError:
      return "IOError";
    case ErrorCode::kBusy:
      return "Busy";
    case ErrorCode::kVersion:
      return "Version";
    case ErrorCode::kForeign:
      return "Foreign";
  }
  return "Unknown";
}

}  // namespace ckptledger
