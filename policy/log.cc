#include "ckptledger/log.h"

namespace ckptledger {

const char* log_level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kWarning:
      return "WARNING";
    case LogLevel::kError:
      return "ERROR";
    case LogLevel::kInfo:
      break;
  }
  return "INFO";
}

}  // namespace ckptledger
