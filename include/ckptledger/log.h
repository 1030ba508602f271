// Log lines and validation metrics: the two plain types the hook shares with a training loop
// (no libtorch).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ckptledger {

enum class LogLevel { kInfo, kWarning, kError };
const char* log_level_name(LogLevel level);  // "INFO" | "WARNING" | "ERROR"
// Receives every log line of the hook; called by one thread at a time.
using LogSink = std::function<void(LogLevel, const std::string&)>;

// A validation's metrics in the order the evaluator produced them; nullopt is Python's None.
using Metrics = std::vector<std::pair<std::string, std::optional<double>>>;

}  // namespace ckptledger
