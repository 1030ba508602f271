// Times (ISO-8601, microseconds, UTC) and points in a ledger's history (--since, --as-of).
#include <cctype>
#include <cstdio>
#include <ctime>

#include <fmt/format.h>

#include "catalog/catalog.h"

namespace ckptledger {
namespace {

bool all_digits(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// Reads exactly `n` digits at s[i], advancing i.
bool digits(const std::string& s, size_t& i, size_t n, int& out) {
  if (i + n > s.size()) return false;
  out = 0;
  for (size_t k = 0; k < n; ++k) {
    char c = s[i + k];
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
    out = out * 10 + (c - '0');
  }
  i += n;
  return true;
}

}  // namespace

std::string format_iso8601_us(int64_t ts_us) {
  int64_t secs = ts_us / 1000000, us = ts_us % 1000000;
  if (us < 0) {
    us += 1000000;
    secs -= 1;
  }
  std::time_t t = static_cast<std::time_t>(secs);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  return fmt::format("{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:06d}Z", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, us);
}

std::optional<int64_t> parse_iso8601_us(const std::string& s) {
  size_t i = 0;
  int year = 0, mon = 0, day = 0, hour = 0, min = 0, sec = 0;
  if (!digits(s, i, 4, year) || i >= s.size() || s[i++] != '-' || !digits(s, i, 2, mon) ||
      i >= s.size() || s[i++] != '-' || !digits(s, i, 2, day)) {
    return std::nullopt;
  }
  int64_t frac_us = 0;
  if (i < s.size() && (s[i] == 'T' || s[i] == 't' || s[i] == ' ')) {
    ++i;
    if (!digits(s, i, 2, hour) || i >= s.size() || s[i++] != ':' || !digits(s, i, 2, min)) {
      return std::nullopt;
    }
    if (i < s.size() && s[i] == ':') {
      ++i;
      if (!digits(s, i, 2, sec)) return std::nullopt;
      if (i < s.size() && (s[i] == '.' || s[i] == ',')) {
        ++i;
        int64_t scale = 100000;
        size_t n = 0;
        while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
          if (scale > 0) frac_us += (s[i] - '0') * scale;
          scale /= 10;
          ++i;
          ++n;
        }
        if (n == 0) return std::nullopt;
      }
    }
  }
  int64_t offset_s = 0;
  if (i < s.size()) {
    if (s[i] == 'Z' || s[i] == 'z') {
      ++i;
    } else if (s[i] == '+' || s[i] == '-') {
      int sign = s[i++] == '+' ? 1 : -1, oh = 0, om = 0;
      if (!digits(s, i, 2, oh)) return std::nullopt;
      if (i < s.size() && s[i] == ':') ++i;
      if (!digits(s, i, 2, om)) return std::nullopt;
      offset_s = sign * (oh * 3600 + om * 60);
    } else {
      return std::nullopt;
    }
  }
  if (i != s.size()) return std::nullopt;
  if (mon < 1 || mon > 12 || day < 1 || day > 31 || hour > 23 || min > 59 || sec > 60) {
    return std::nullopt;
  }
  std::tm tm{};
  tm.tm_year = year - 1900;
  tm.tm_mon = mon - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = min;
  tm.tm_sec = sec;
  const std::time_t t = ::timegm(&tm);
  if (tm.tm_mday != day) return std::nullopt;  // 2026-02-30 normalised into March
  return (static_cast<int64_t>(t) - offset_s) * 1000000 + frac_us;
}

Point parse_point(const std::string& text, const std::string& option, bool counters) {
  Point p;
  if (all_digits(text)) {
    p.kind = Point::Kind::kSeq;
    try {
      p.value = std::stoll(text);
    } catch (const std::exception&) {
      throw UsageError(fmt::format("{}: '{}' is too large for a seq", option, text));
    }
    return p;
  }
  for (const auto& [prefix, kind] :
       {std::pair<std::string, Point::Kind>{"epoch:", Point::Kind::kEpoch},
        {"iter:", Point::Kind::kIter}}) {
    if (counters && text.compare(0, prefix.size(), prefix) == 0 &&
        all_digits(text.substr(prefix.size()))) {
      p.kind = kind;
      try {
        p.value = std::stoll(text.substr(prefix.size()));
      } catch (const std::exception&) {
        throw UsageError(fmt::format("{}: '{}' is too large for {} count", option, text,
                                     kind == Point::Kind::kEpoch ? "an epoch" : "an iteration"));
      }
      return p;
    }
  }
  if (auto t = parse_iso8601_us(text)) {
    p.kind = Point::Kind::kTime;
    p.value = *t;
    return p;
  }
  throw UsageError(fmt::format(
      "{}: '{}' is neither a seq (digits) nor a time (ISO-8601, e.g. 2026-11-29T10:15:02Z){}",
      option, text, counters ? " nor epoch:N / iter:N" : ""));
}

}  // namespace ckptledger
