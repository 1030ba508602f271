// TextTable: the readable output of the catalog's verbs.
#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "catalog/catalog.h"

namespace ckptledger {
namespace {

bool numeric(const std::string& s) {
  if (s.empty()) return false;
  size_t i = s[0] == '-' ? 1 : 0;
  if (i == s.size()) return false;
  for (; i < s.size(); ++i) {
    char c = s[i];
    if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == 'e' || c == '+' ||
          c == '-')) {
      return false;
    }
  }
  return true;
}

// Display width: UTF-8 continuation bytes take no column.
size_t width(const std::string& s) {
  size_t w = 0;
  for (unsigned char c : s) w += (c & 0xC0) != 0x80;
  return w;
}

}  // namespace

std::string cell_text(const nlohmann::ordered_json& v) {
  if (v.is_null()) return "";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isnan(d)) return "nan";
    return fmt::format("{:.6g}", d);
  }
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  return v.dump();
}

void TextTable::add(std::vector<std::string> cells) {
  cells.resize(headers_.size());
  rows_.push_back(std::move(cells));
}

std::string TextTable::render() const {
  const size_t n = headers_.size();
  std::vector<size_t> w(n, 0);
  std::vector<bool> right(n, true);
  for (size_t c = 0; c < n; ++c) {
    w[c] = width(headers_[c]);
    bool any = false;
    for (const auto& r : rows_) {
      w[c] = std::max(w[c], width(r[c]));
      if (!r[c].empty()) {
        any = true;
        right[c] = right[c] && numeric(r[c]);
      }
    }
    if (!any) right[c] = false;
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (size_t c = 0; c < n; ++c) {
      const std::string& s = cells[c];
      const size_t pad = w[c] - width(s);
      if (c > 0) out += "  ";
      if (right[c]) {
        out += std::string(pad, ' ') + s;
      } else if (c + 1 < n) {
        out += s + std::string(pad, ' ');
      } else {
        out += s;
      }
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out + "\n";
  };
  std::string out = line(headers_);
  std::vector<std::string> rule(n);
  for (size_t c = 0; c < n; ++c) rule[c] = std::string(w[c], '-');
  out += line(rule);
  for (const auto& r : rows_) out += line(r);
  return out;
}

}  // namespace ckptledger
