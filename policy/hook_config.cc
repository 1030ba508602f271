#include "ckptledger/hook_config.h"

#include <algorithm>
#include <cstddef>
#include <limits>
#include <set>
#include <utility>

#include <fmt/format.h>

#include "ckptledger/error.h"

namespace ckptledger {

using nlohmann::json;

namespace {

constexpr const char* kPrefix = "CheckpointHook config: ";
constexpr int kMaxTemplateWidth = 255;  // no file name component is longer

[[noreturn]] void fail(const std::string& message) {
  throw_error(ErrorCode::kInvalidArgument, kPrefix + message);
}

// ---- Python-typed JSON values ----------------------------------------------------------------

bool is_tuple(const json& v) {
  return v.is_object() && v.size() == 1 && v.contains("__tuple__") && v["__tuple__"].is_array();
}
bool is_py_float(const json& v) {
  return v.is_object() && v.size() == 1 && v.contains("__float__") && v["__float__"].is_string();
}
bool is_dict(const json& v) { return v.is_object() && !is_tuple(v) && !is_py_float(v); }

std::string dump(const json& v) { return v.dump(-1, ' ', false, json::error_handler_t::replace); }

// Quotes a string for a message (JSON escaping, so control characters stay visible).
std::string quoted(const std::string& s) { return dump(json(s)); }

// "<python type> <value>", e.g. `dict {"a":1}`, `tuple ("acc",)`, `bool true`, `None`.
std::string describe(const json& v) {
  std::string out;
  if (v.is_null()) return "None";
  if (v.is_boolean()) {
    out = "bool " + dump(v);
  } else if (v.is_number_integer()) {
    out = "int " + dump(v);
  } else if (v.is_number_float()) {
    out = "float " + dump(v);
  } else if (v.is_string()) {
    out = "str " + dump(v);
  } else if (v.is_array()) {
    out = "list " + dump(v);
  } else if (is_tuple(v)) {
    const json& items = v["__tuple__"];
    std::string inner = dump(items);
    inner = inner.substr(1, inner.size() - 2);
    out = "tuple (" + inner + (items.size() == 1 ? ",)" : ")");
  } else if (is_py_float(v)) {
    out = "float " + v["__float__"].get<std::string>();
  } else {
    out = "dict " + dump(v);
  }
  constexpr size_t kMax = 200;
  if (out.size() > kMax) out = out.substr(0, kMax) + "...";
  return out;
}

// The items of a list or a tuple; nullptr for anything else.
const json* sequence_items(const json& v) {
  if (v.is_array()) return &v;
  if (is_tuple(v)) return &v["__tuple__"];
  return nullptr;
}

// ---- from_json helpers ----------------------------------------------------------------------

int64_t get_int(const std::string& name, const json& v) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() &&
        v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail(fmt::format("\"{}\" is out of the int64 range, got {}", name, describe(v)));
    }
    return v.get<int64_t>();
  }
  fail(fmt::format("\"{}\" must be an int, got {}", name, describe(v)));
}

bool get_bool(const std::string& name, const json& v) {
  if (v.is_boolean()) return v.get<bool>();
  fail(fmt::format("\"{}\" must be a bool, got {}", name, describe(v)));
}

std::optional<std::string> get_optional_string(const std::string& name, const json& v) {
  if (v.is_null()) return std::nullopt;
  if (v.is_string()) return v.get<std::string>();
  fail(fmt::format("\"{}\" must be a str or None, got {}", name, describe(v)));
}

// "by_epoch, interval, ...": every key to_json() writes, which is every key from_json() reads.
std::string known_options() {
  HookConfig all;
  all.save_layout = "spread";           // to_json() writes it only when it is not the default
  const json defaults = all.to_json();  // a named object: items() does not extend lifetime
  std::string out;
  for (const auto& item : defaults.items()) {
    if (!out.empty()) out += ", ";
    out += item.key();
  }
  return out;
}

json optional_string_json(const std::optional<std::string>& s) {
  return s ? json(*s) : json(nullptr);
}

OnError parse_on_error(const json& v) {
  if (v.is_string()) {
    if (v == "raise") return OnError::kRaise;
    if (v == "warn") return OnError::kWarn;
  }
  fail(fmt::format("\"on_error\" must be \"raise\" or \"warn\", got {}", describe(v)));
}

RecoveryMode parse_recovery(const json& v) {
  if (v.is_string()) {
    if (v == "repair") return RecoveryMode::kRepair;
    if (v == "strict") return RecoveryMode::kStrict;
  }
  fail(fmt::format("\"recovery\" must be \"repair\" or \"strict\", got {}", describe(v)));
}

// ---- rule inference -------------------------------------------------------------------------

std::string ascii_lower(std::string s) {
  for (char& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

std::string quoted_list(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) {
    if (!out.empty()) out += ", ";
    out += quoted(s);
  }
  return out;
}

template <typename Pred>
std::vector<std::string> matching(const std::vector<std::string>& keys, Pred pred) {
  std::vector<std::string> out;
  for (const auto& k : keys) {
    if (pred(ascii_lower(k)) && std::find(out.begin(), out.end(), k) == out.end()) {
      out.push_back(k);
    }
  }
  return out;
}

// `context` names where the key came from, for the error message.
Rule infer_rule_in(const std::string& key, const std::vector<std::string>& greater_keys,
                   const std::vector<std::string>& less_keys, std::string* warning,
                   const std::string& context) {
  if (warning) warning->clear();
  const std::string lk = ascii_lower(key);
  auto ambiguous = [&](const char* how, const std::vector<std::string>& g,
                       const std::vector<std::string>& l) {
    if (!warning) return;
    *warning = fmt::format(
        "CheckpointHook: the rule for save_best key {} is ambiguous: it {} greater key(s) {} and "
        "less key(s) {}; inferred \"greater\" (greater keys are tried first, as in MMEngine). Set "
        "\"rule\" to \"greater\" or \"less\" to make it explicit.",
        quoted(key), how, quoted_list(g), quoted_list(l));
  };
  // 1. exact match (greater first), 2. substring match (greater first): MMEngine's order.
  const auto exact_g = matching(greater_keys, [&](const std::string& k) { return k == lk; });
  const auto exact_l = matching(less_keys, [&](const std::string& k) { return k == lk; });
  if (!exact_g.empty()) {
    if (!exact_l.empty()) ambiguous("equals", exact_g, exact_l);
    return Rule::kGreater;
  }
  if (!exact_l.empty()) return Rule::kLess;
  auto contains = [&](const std::string& k) { return lk.find(k) != std::string::npos; };
  const auto sub_g = matching(greater_keys, contains);
  const auto sub_l = matching(less_keys, contains);
  if (!sub_g.empty()) {
    if (!sub_l.empty()) ambiguous("contains", sub_g, sub_l);
    return Rule::kGreater;
  }
  if (!sub_l.empty()) return Rule::kLess;
  fail(fmt::format(
      "{}: Cannot infer the rule for key {}, thus a specific rule must be specified. Set \"rule\" "
      "to \"greater\" or \"less\", or list the key in \"greater_keys\" or \"less_keys\" (greater "
      "keys: [{}]; less keys: [{}])",
      context, key, quoted_list(greater_keys), quoted_list(less_keys)));
}

// ---- filename templates ---------------------------------------------------------------------

struct IntSpec {
  std::string fill = " ";  // one code point, UTF-8
  char align = '>';
  char sign = '-';
  bool alternate = false;
  int width = 0;
  char grouping = '\0';  // '\0', ',' or '_'
  char type = 'd';       // b d n o x X
};

struct ParsedTemplate {
  std::string before;  // literal text, escapes resolved
  std::string after;
  IntSpec spec;
};

[[noreturn]] void bad_template(const std::string& tmpl, const std::string& why) {
  fail(fmt::format("\"filename_tmpl\" {}: {}", quoted(tmpl), why));
}

size_t utf8_length(unsigned char lead) {
  if (lead >= 0xF0 && lead < 0xF8) return 4;
  if (lead >= 0xE0) return lead < 0xF0 ? 3 : 1;
  if (lead >= 0xC0) return 2;
  return 1;
}

bool is_align(char c) { return c == '<' || c == '>' || c == '=' || c == '^'; }

// CPython's parse_internal_render_format_spec, restricted to what an int accepts.
IntSpec parse_int_spec(const std::string& tmpl, const std::string& s) {
  IntSpec spec;
  if (s.find_first_of("{}") != std::string::npos) {
    bad_template(tmpl, fmt::format("nested replacement fields in format spec {} are not supported",
                                   quoted(s)));
  }
  size_t pos = 0;
  const size_t end = s.size();
  bool fill_given = false;
  bool align_given = false;
  const size_t fill_len =
      end > 0 ? std::min(utf8_length(static_cast<unsigned char>(s[0])), end) : 0;
  if (end > fill_len && fill_len > 0 && is_align(s[fill_len])) {
    spec.fill = s.substr(0, fill_len);
    spec.align = s[fill_len];
    fill_given = align_given = true;
    pos = fill_len + 1;
  } else if (end > 0 && is_align(s[0])) {
    spec.align = s[0];
    align_given = true;
    pos = 1;
  }
  if (pos < end && (s[pos] == '+' || s[pos] == '-' || s[pos] == ' ')) spec.sign = s[pos++];
  if (pos < end && s[pos] == 'z') {
    bad_template(tmpl, fmt::format("format spec {}: negative zero coercion (z) is not allowed for "
                                   "an integer",
                                   quoted(s)));
  }
  if (pos < end && s[pos] == '#') {
    spec.alternate = true;
    ++pos;
  }
  if (!fill_given && pos < end && s[pos] == '0') {
    spec.fill = "0";
    if (!align_given) spec.align = '=';
    ++pos;
  }
  long width = 0;
  while (pos < end && s[pos] >= '0' && s[pos] <= '9') {
    width = width * 10 + (s[pos++] - '0');
    if (width > kMaxTemplateWidth) {
      bad_template(tmpl, fmt::format("format spec {}: width is over {}, longer than any file name",
                                     quoted(s), kMaxTemplateWidth));
    }
  }
  spec.width = static_cast<int>(width);
  if (pos < end && s[pos] == ',') {
    spec.grouping = ',';
    ++pos;
  }
  if (pos < end && s[pos] == '_') {
    if (spec.grouping != '\0') {
      bad_template(tmpl, fmt::format("format spec {}: cannot specify both ',' and '_'", quoted(s)));
    }
    spec.grouping = '_';
    ++pos;
  }
  if (pos < end && s[pos] == ',' && spec.grouping == '_') {
    bad_template(tmpl, fmt::format("format spec {}: cannot specify both ',' and '_'", quoted(s)));
  }
  if (pos < end && s[pos] == '.') {
    bad_template(tmpl, fmt::format("format spec {}: precision is not allowed for an integer step",
                                   quoted(s)));
  }
  if (end - pos > 1) {
    bad_template(tmpl, fmt::format("invalid format spec {} for an integer step", quoted(s)));
  }
  if (end - pos == 1) spec.type = s[pos];
  switch (spec.type) {
    case 'b':
    case 'd':
    case 'n':
    case 'o':
    case 'x':
    case 'X':
      break;
    case 'c':
      bad_template(tmpl, fmt::format("format spec {}: type 'c' (a character) is not supported; "
                                     "use d, b, o, x, X, n or none",
                                     quoted(s)));
    case 'e':
    case 'E':
    case 'f':
    case 'F':
    case 'g':
    case 'G':
    case '%':
      bad_template(tmpl, fmt::format("format spec {}: type '{}' turns the step into a float; only "
                                     "the integer types d, b, o, x, X, n or none are supported",
                                     quoted(s), spec.type));
    default:
      bad_template(tmpl, fmt::format("format spec {}: unknown format code '{}' for an integer step",
                                     quoted(s), spec.type));
  }
  if (spec.grouping == ',' && spec.type != 'd') {
    bad_template(tmpl,
                 fmt::format("format spec {}: cannot specify ',' with '{}'", quoted(s), spec.type));
  }
  if (spec.grouping == '_' && spec.type == 'n') {
    bad_template(tmpl, fmt::format("format spec {}: cannot specify '_' with 'n'", quoted(s)));
  }
  return spec;
}

// str.format's scanner: literal text with "{{" / "}}", fields between balanced braces.
ParsedTemplate parse_template(const std::string& tmpl) {
  ParsedTemplate out;
  std::vector<std::string> fields;
  std::string* literal = &out.before;
  for (size_t i = 0; i < tmpl.size();) {
    const char c = tmpl[i];
    if (c == '}') {
      if (i + 1 < tmpl.size() && tmpl[i + 1] == '}') {
        *literal += '}';
        i += 2;
        continue;
      }
      bad_template(tmpl,
                   fmt::format("single '}}' at offset {} (write '}}}}' for a literal brace)", i));
    }
    if (c != '{') {
      *literal += c;
      ++i;
      continue;
    }
    if (i + 1 < tmpl.size() && tmpl[i + 1] == '{') {
      *literal += '{';
      i += 2;
      continue;
    }
    int depth = 1;
    size_t j = i + 1;
    for (; j < tmpl.size(); ++j) {
      if (tmpl[j] == '{') ++depth;
      if (tmpl[j] == '}' && --depth == 0) break;
    }
    if (j >= tmpl.size()) {
      bad_template(tmpl, fmt::format("unbalanced '{{' at offset {} (write '{{{{' for a literal "
                                     "brace)",
                                     i));
    }
    fields.push_back(tmpl.substr(i + 1, j - i - 1));
    literal = &out.after;
    i = j + 1;
  }
  if (fields.size() != 1) {
    bad_template(tmpl, fmt::format("must contain exactly one replacement field ({{}}, {{0}} or "
                                   "{{:spec}}) for the step, found {}",
                                   fields.size()));
  }
  const std::string& field = fields[0];
  const size_t name_end = field.find_first_of(":!");
  const std::string name = field.substr(0, name_end);
  if (!name.empty()) {
    if (name.find_first_not_of("0123456789") != std::string::npos) {
      const bool attr = name.find_first_of(".[") != std::string::npos;
      bad_template(tmpl, attr ? fmt::format("attribute or index access {} is not supported; "
                                            "use {{}} or {{0}}",
                                            quoted(name))
                              : fmt::format("named field {{{}}} is not supported: the step is "
                                            "the only (positional) argument; use {{}} or {{0}}",
                                            name));
    }
    if (name.find_first_not_of('0') != std::string::npos) {
      bad_template(tmpl, fmt::format("replacement index {} is out of range: the step is the only "
                                     "argument; use {{}} or {{0}}",
                                     name));
    }
  }
  if (name_end != std::string::npos && field[name_end] == '!') {
    bad_template(tmpl,
                 fmt::format("conversion {} is not supported", quoted(field.substr(name_end, 2))));
  }
  if (name_end != std::string::npos) out.spec = parse_int_spec(tmpl, field.substr(name_end + 1));
  return out;
}

// CPython's InsertThousandsGrouping: groups from the right; when min_width > 0 (zero fill with
// '=' alignment) leading zeros, grouped too, are added until the width is reached.
std::string group_digits(const std::string& digits, ptrdiff_t group, char sep,
                         ptrdiff_t min_width) {
  std::string out;
  ptrdiff_t remaining = static_cast<ptrdiff_t>(digits.size());
  bool use_sep = false;
  for (;;) {
    const ptrdiff_t l = std::min(group, std::max<ptrdiff_t>({remaining, min_width, 1}));
    const ptrdiff_t zeros = std::max<ptrdiff_t>(0, l - remaining);
    const ptrdiff_t chars = std::max<ptrdiff_t>(0, std::min(remaining, l));
    if (use_sep) out.insert(out.begin(), sep);
    out.insert(0, digits, static_cast<size_t>(remaining - chars), static_cast<size_t>(chars));
    out.insert(0, static_cast<size_t>(zeros), '0');
    use_sep = true;
    remaining -= chars;
    min_width -= l;
    if (remaining <= 0 && min_width <= 0) break;
    min_width -= 1;
  }
  return out;
}

std::string render(const ParsedTemplate& t, int64_t step) {
  const IntSpec& spec = t.spec;
  const bool negative = step < 0;
  uint64_t magnitude = negative ? 0 - static_cast<uint64_t>(step) : static_cast<uint64_t>(step);
  unsigned base = 10;
  const char* alphabet = "0123456789abcdef";
  std::string prefix;
  switch (spec.type) {
    case 'b':
      base = 2;
      prefix = "0b";
      break;
    case 'o':
      base = 8;
      prefix = "0o";
      break;
    case 'x':
      base = 16;
      prefix = "0x";
      break;
    case 'X':
      base = 16;
      prefix = "0X";
      alphabet = "0123456789ABCDEF";
      break;
    default:
      break;
  }
  if (!spec.alternate) prefix.clear();
  std::string digits;
  do {
    digits.insert(digits.begin(), alphabet[magnitude % base]);
    magnitude /= base;
  } while (magnitude != 0);

  std::string leading = negative ? "-" : spec.sign == '+' ? "+" : spec.sign == ' ' ? " " : "";
  leading += prefix;
  const ptrdiff_t width = spec.width;
  const ptrdiff_t lead_len = static_cast<ptrdiff_t>(leading.size());
  if (spec.grouping != '\0') {
    const ptrdiff_t group = (spec.grouping == '_' && base != 10) ? 4 : 3;
    const ptrdiff_t min_width = (spec.fill == "0" && spec.align == '=') ? width - lead_len : 0;
    digits = group_digits(digits, group, spec.grouping, min_width);
  }
  const ptrdiff_t body = lead_len + static_cast<ptrdiff_t>(digits.size());
  const ptrdiff_t pad = std::max<ptrdiff_t>(0, width - body);
  auto fill = [&](ptrdiff_t n) {
    std::string s;
    for (ptrdiff_t k = 0; k < n; ++k) s += spec.fill;
    return s;
  };
  std::string number;
  switch (spec.align) {
    case '<':
      number = leading + digits + fill(pad);
      break;
    case '^':
      number = fill(pad / 2) + leading + digits + fill(pad - pad / 2);
      break;
    case '=':
      number = leading + fill(pad) + digits;
      break;
    default:
      number = fill(pad) + leading + digits;
      break;
  }
  return t.before + number + t.after;
}

// ---- validate() helpers ---------------------------------------------------------------------

// Step 12: greater_keys / less_keys. A non-sequence is wrapped (a 1-tuple); elements must be str.
std::vector<std::string> effective_keys(const char* name, const json& v,
                                        const std::vector<std::string>& defaults) {
  if (v.is_null()) return defaults;
  const json* items = sequence_items(v);
  const json wrapped = json::array({v});
  if (!items) items = &wrapped;
  std::vector<std::string> out;
  for (size_t i = 0; i < items->size(); ++i) {
    const json& e = (*items)[i];
    if (!e.is_string()) {
      fail(fmt::format(
          "\"{}\" must be a str, a list or tuple of str, or None, got {}{}", name, describe(v),
          items == &wrapped ? "" : fmt::format(" (element {} is {})", i, describe(e))));
    }
    out.push_back(e.get<std::string>());
  }
  return out;
}

void check_backend(const char* name, const json& v) {
  if (v.is_null()) return;
  if (!is_dict(v)) fail(fmt::format("\"{}\" must be a dict or None, got {}", name, describe(v)));
  const char* supported = "supported backends: \"local\", \"disk\" (the local file system)";
  if (v.contains("backend")) {
    const json& b = v["backend"];
    if (!b.is_null() && !(b.is_string() && (b == "local" || b == "disk"))) {
      fail(fmt::format("\"{}\" selects backend {}, which ckptledger does not support; {}", name,
                       b.is_string() ? quoted(b.get<std::string>()) : describe(b), supported));
    }
  }
  for (const auto& item : v.items()) {
    if (item.key() != "backend") {
      fail(fmt::format("\"{}\" has key {} (value {}), which the local backend does not take; {}",
                       name, quoted(item.key()), describe(item.value()), supported));
    }
  }
}

}  // namespace

// ---- names ----------------------------------------------------------------------------------

const char* on_error_name(OnError v) { return v == OnError::kWarn ? "warn" : "raise"; }

const char* recovery_mode_name(RecoveryMode v) {
  return v == RecoveryMode::kStrict ? "strict" : "repair";
}

const char* rule_name(Rule r) {
  switch (r) {
    case Rule::kGreater:
      return "greater";
    case Rule::kLess:
      return "less";
    case Rule::kUnresolved:
      break;
  }
  return "none";
}

json python_tuple(std::vector<json> items) { return json{{"__tuple__", json(std::move(items))}}; }

// ---- HookConfig -----------------------------------------------------------------------------

HookConfig HookConfig::from_json(const json& j) {
  if (!is_dict(j)) {
    throw_error(
        ErrorCode::kInvalidArgument,
        fmt::format("{}must be a JSON object (a dict of options), got {}", kPrefix, describe(j)));
  }
  HookConfig c;
  for (const auto& item : j.items()) {
    const std::string& k = item.key();
    const json& v = item.value();
    if (k == "type") {
      if (!(v.is_string() && v == "CheckpointHook")) {
        fail(fmt::format("\"type\" must be \"CheckpointHook\", got {}", describe(v)));
      }
    } else if (k == "interval") {
      c.interval = get_int(k, v);
    } else if (k == "by_epoch") {
      c.by_epoch = get_bool(k, v);
    } else if (k == "save_optimizer") {
      c.save_optimizer = get_bool(k, v);
    } else if (k == "save_param_scheduler") {
      c.save_param_scheduler = get_bool(k, v);
    } else if (k == "out_dir") {
      c.out_dir = get_optional_string(k, v);
    } else if (k == "max_keep_ckpts") {
      c.max_keep_ckpts = get_int(k, v);
    } else if (k == "save_last") {
      c.save_last = get_bool(k, v);
    } else if (k == "save_best") {
      c.save_best = v;
    } else if (k == "rule") {
      c.rule = v;
    } else if (k == "greater_keys") {
      c.greater_keys = v;
    } else if (k == "less_keys") {
      c.less_keys = v;
    } else if (k == "file_client_args") {
      c.file_client_args = v;
    } else if (k == "filename_tmpl") {
      c.filename_tmpl = get_optional_string(k, v);
    } else if (k == "backend_args") {
      c.backend_args = v;
    } else if (k == "published_keys") {
      c.published_keys = v;
    } else if (k == "save_begin") {
      c.save_begin = get_int(k, v);
    } else if (k == "sync") {
      c.sync = get_bool(k, v);
    } else if (k == "on_error") {
      c.on_error = parse_on_error(v);
    } else if (k == "writer_threads") {
      c.writer_threads = get_int(k, v);
    } else if (k == "writer_nice") {
      c.writer_nice = get_int(k, v);
    } else if (k == "max_inflight_bytes") {
      c.max_inflight_bytes = get_int(k, v);
    } else if (k == "recovery") {
      c.recovery = parse_recovery(v);
    } else if (k == "ledger_path") {
      c.ledger_path = get_optional_string(k, v);
    } else if (k == "save_layout") {
      if (!v.is_string()) fail(fmt::format("\"save_layout\" must be a str, got {}", describe(v)));
      c.save_layout = v.get<std::string>();
    } else {
      // MMEngine keeps unknown kwargs and fails at the first regular save; we fail now.
      fail(fmt::format("unknown option {} (value {}); known options: {}", quoted(k), describe(v),
                       known_options()));
    }
  }
  return c;
}

json HookConfig::to_json() const {
  json j = json::object();
  j["type"] = "CheckpointHook";
  j["interval"] = interval;
  j["by_epoch"] = by_epoch;
  j["save_optimizer"] = save_optimizer;
  j["save_param_scheduler"] = save_param_scheduler;
  j["out_dir"] = optional_string_json(out_dir);
  j["max_keep_ckpts"] = max_keep_ckpts;
  j["save_last"] = save_last;
  j["save_best"] = save_best;
  j["rule"] = rule;
  j["greater_keys"] = greater_keys;
  j["less_keys"] = less_keys;
  j["file_client_args"] = file_client_args;
  j["filename_tmpl"] = optional_string_json(filename_tmpl);
  j["backend_args"] = backend_args;
  j["published_keys"] = published_keys;
  j["save_begin"] = save_begin;
  j["sync"] = sync;
  j["on_error"] = on_error_name(on_error);
  j["writer_threads"] = writer_threads;
  j["writer_nice"] = writer_nice;
  j["max_inflight_bytes"] = max_inflight_bytes;
  j["recovery"] = recovery_mode_name(recovery);
  j["ledger_path"] = optional_string_json(ledger_path);
  // Written only when set: the config recorded by runs of one process stays what it was.
  if (save_layout != "main") j["save_layout"] = save_layout;
  return j;
}

bool operator==(const HookConfig& a, const HookConfig& b) {
  return a.interval == b.interval && a.by_epoch == b.by_epoch &&
         a.save_optimizer == b.save_optimizer && a.save_param_scheduler == b.save_param_scheduler &&
         a.out_dir == b.out_dir && a.max_keep_ckpts == b.max_keep_ckpts &&
         a.save_last == b.save_last && a.save_best == b.save_best && a.rule == b.rule &&
         a.greater_keys == b.greater_keys && a.less_keys == b.less_keys &&
         a.file_client_args == b.file_client_args && a.filename_tmpl == b.filename_tmpl &&
         a.backend_args == b.backend_args && a.published_keys == b.published_keys &&
         a.save_begin == b.save_begin && a.sync == b.sync && a.on_error == b.on_error &&
         a.writer_threads == b.writer_threads && a.writer_nice == b.writer_nice &&
         a.max_inflight_bytes == b.max_inflight_bytes && a.recovery == b.recovery &&
         a.ledger_path == b.ledger_path && a.save_layout == b.save_layout;
}

// ---- rules ----------------------------------------------------------------------------------

const std::vector<std::string>& default_greater_keys() {
  static const std::vector<std::string> keys = {"acc", "top",   "AR@",  "auc",  "precision",
                                                "mAP", "mDice", "mIoU", "mAcc", "aAcc"};
  return keys;
}

const std::vector<std::string>& default_less_keys() {
  static const std::vector<std::string> keys = {"loss"};
  return keys;
}

Rule infer_rule(const std::string& key, const std::vector<std::string>& greater_keys,
                const std::vector<std::string>& less_keys, std::string* warning) {
  return infer_rule_in(key, greater_keys, less_keys, warning,
                       fmt::format("\"save_best\" key {}", quoted(key)));
}

// ---- templates ------------------------------------------------------------------------------

std::string format_filename(const std::string& tmpl, int64_t step) {
  return render(parse_template(tmpl), step);
}

void check_filename_tmpl(const std::string& tmpl) { parse_template(tmpl); }

// ---- ValidatedConfig ------------------------------------------------------------------------

std::vector<std::string> ValidatedConfig::key_indicators() const {
  std::vector<std::string> keys;
  keys.reserve(best.size());
  for (const auto& b : best) keys.push_back(b.key);
  return keys;
}

BestIndicator ValidatedConfig::resolve_auto(const std::string& first_metric_key,
                                            std::string* warning) const {
  if (!has_auto()) {
    throw_error(ErrorCode::kInvalidArgument,
                "CheckpointHook: resolve_auto() called but save_best is not 'auto'");
  }
  BestIndicator resolved = best[0];
  resolved.key = first_metric_key;
  if (warning) warning->clear();
  if (!resolved.explicit_rule) {
    resolved.rule = infer_rule_in(
        first_metric_key, greater_keys, less_keys, warning,
        fmt::format("\"save_best\" 'auto' resolved to metric {} (the first key of the first "
                    "validation metrics)",
                    quoted(first_metric_key)));
  }
  return resolved;
}

ValidatedConfig validate(const HookConfig& c) {
  ValidatedConfig v;
  v.options = c;

  // MMEngine's constructor checks, in its order and numbered as its steps; steps 1-7 (interval ..
  // kwargs) validate nothing in MMEngine.
  // 8. file_client_args / backend_args.
  if (!c.file_client_args.is_null()) {
    v.warnings.push_back(
        "\"file_client_args\" will be deprecated in future. Please use \"backend_args\" instead");
    if (!c.backend_args.is_null()) {
      fail(
          fmt::format("\"file_client_args\" and \"backend_args\" cannot be set at the same time "
                      "(got file_client_args={}, backend_args={}); use \"backend_args\" only",
                      describe(c.file_client_args), describe(c.backend_args)));
    }
  }

  // 9. filename_tmpl default (checked below, after MMEngine's own init errors).
  v.filename_tmpl = c.filename_tmpl ? *c.filename_tmpl
                    : c.by_epoch    ? "epoch_{}.pth"
                                    : "iter_{}.pth";

  // 10. save_best: None, str or list of str.
  std::optional<std::vector<std::string>> save_best;
  if (c.save_best.is_string()) {
    save_best = std::vector<std::string>{c.save_best.get<std::string>()};
  } else if (c.save_best.is_array()) {
    save_best.emplace();
    for (const json& e : c.save_best) {
      if (!e.is_string()) {
        fail(fmt::format("\"save_best\" must be a str, a list of str or None, got {} (element {})",
                         describe(c.save_best), describe(e)));
      }
      save_best->push_back(e.get<std::string>());
    }
    const auto& keys = *save_best;
    if (std::find(keys.begin(), keys.end(), "auto") != keys.end() && keys.size() != 1) {
      fail(fmt::format("\"save_best\": only one \"auto\" is supported and it must be alone, got {}",
                       describe(c.save_best)));
    }
    std::set<std::string> seen;
    for (const auto& k : keys) {
      if (!seen.insert(k).second) {
        fail(
            fmt::format("\"save_best\": duplicate key {} in {}", quoted(k), describe(c.save_best)));
      }
    }
  } else if (!c.save_best.is_null()) {
    fail(fmt::format("\"save_best\" must be a str, a list of str or None, got {}",
                     describe(c.save_best)));
  }
  v.save_best_enabled = save_best.has_value();

  // 11. rule: None, str or list; a list has 1 or len(save_best) elements.
  if (!(c.rule.is_null() || c.rule.is_string() || c.rule.is_array())) {
    fail(fmt::format("\"rule\" must be a str, a list of str or None, got {}", describe(c.rule)));
  }
  std::vector<json> rules;
  if (!save_best) {
    // MMEngine ignores a str (unvalidated) and crashes on a list (len(None)); we reject both.
    if (!c.rule.is_null()) {
      fail(
          fmt::format("\"rule\" is set to {} but \"save_best\" is None; a rule only applies to "
                      "save_best keys: set \"save_best\" or remove \"rule\"",
                      describe(c.rule)));
    }
  } else if (c.rule.is_array()) {
    if (c.rule.size() != 1 && c.rule.size() != save_best->size()) {
      fail(
          fmt::format("number of \"rule\" must be 1 or the same as number of \"save_best\" ({}), "
                      "but got {}: rule={}",
                      save_best->size(), c.rule.size(), describe(c.rule)));
    }
    rules.assign(c.rule.begin(), c.rule.end());
  } else {
    rules.push_back(c.rule);
  }

  // 12. greater_keys / less_keys: user keys replace the defaults.
  v.greater_keys = effective_keys("greater_keys", c.greater_keys, default_greater_keys());
  v.less_keys = effective_keys("less_keys", c.less_keys, default_less_keys());

  // 13. Rule initialisation, pair by pair: the rule value is checked before inference.
  if (save_best) {
    // save_best=[] zips nothing, so MMEngine never looks at the rule; we still reject a bad one.
    for (const json& r : rules) {
      if (save_best->empty() && !r.is_null() &&
          !(r.is_string() && (r == "greater" || r == "less"))) {
        fail(fmt::format("\"rule\" must be greater, less or None, but got {}", describe(r)));
      }
    }
    if (rules.size() == 1) {
      const json only = rules[0];  // not a reference into `rules`, which assign() overwrites
      rules.assign(save_best->size(), only);
    }
    for (size_t i = 0; i < save_best->size(); ++i) {
      const std::string& key = (*save_best)[i];
      const json& r = rules[i];
      BestIndicator b{key, Rule::kUnresolved, false};
      if (r.is_string() && r == "greater") {
        b.rule = Rule::kGreater;
        b.explicit_rule = true;
      } else if (r.is_string() && r == "less") {
        b.rule = Rule::kLess;
        b.explicit_rule = true;
      } else if (!r.is_null()) {
        fail(
            fmt::format("\"rule\" must be greater, less or None, but got {} (for save_best key "
                        "{})",
                        describe(r), quoted(key)));
      }
      if (!b.explicit_rule && key != "auto") {
        std::string warning;
        b.rule = infer_rule(key, v.greater_keys, v.less_keys, &warning);
        if (!warning.empty()) v.warnings.push_back(warning);
      }
      v.best.push_back(std::move(b));
    }
  }

  // 14. published_keys: None, str or a sequence of str without duplicates.
  if (c.published_keys.is_string()) {
    v.published_keys = std::vector<std::string>{c.published_keys.get<std::string>()};
  } else if (!c.published_keys.is_null()) {
    const json* items = sequence_items(c.published_keys);
    bool all_str = items != nullptr;
    for (size_t i = 0; all_str && i < items->size(); ++i) all_str = (*items)[i].is_string();
    if (!all_str) {
      fail(fmt::format("\"published_keys\" must be a str, a list or tuple of str, or None, got {}",
                       describe(c.published_keys)));
    }
    v.published_keys.emplace();
    std::set<std::string> seen;
    for (const json& e : *items) {
      const std::string k = e.get<std::string>();
      if (!seen.insert(k).second) {
        fail(fmt::format("\"published_keys\": duplicate key {} in {}", quoted(k),
                         describe(c.published_keys)));
      }
      v.published_keys->push_back(k);
    }
  }

  // 16. save_begin (MMEngine's message forgot the f-prefix; ours shows the value).
  if (c.save_begin < 0) {
    fail(fmt::format("\"save_begin\" should not be less than 0, but got {}", c.save_begin));
  }

  // What MMEngine finds only later (first save, before_train), now at construction.
  check_filename_tmpl(v.filename_tmpl);
  check_backend("file_client_args", c.file_client_args);
  check_backend("backend_args", c.backend_args);

  // ckptledger's own options.
  if (c.writer_threads < 1) {
    fail(fmt::format("\"writer_threads\" must be at least 1, got {}", c.writer_threads));
  }
  if (c.writer_nice < 0 || c.writer_nice > 19) {
    fail(fmt::format("\"writer_nice\" must be between 0 and 19 (a nice increment), got {}",
                     c.writer_nice));
  }
  if (c.max_inflight_bytes < 0) {
    fail(fmt::format("\"max_inflight_bytes\" must be >= 0 (0: one checkpoint in flight), got {}",
                     c.max_inflight_bytes));
  }
  if (c.ledger_path && c.ledger_path->empty()) {
    fail("\"ledger_path\" must be a non-empty path or None, got str \"\"");
  }
  if (c.save_layout != "main" && c.save_layout != "spread" && c.save_layout != "sharded") {
    fail(fmt::format("\"save_layout\" must be \"main\", \"spread\" or \"sharded\", got \"{}\"",
                     c.save_layout));
  }
  return v;
}

}  // namespace ckptledger
