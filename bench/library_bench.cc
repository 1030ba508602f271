// Components we wrote that a library we already link also provides, each timed beside that
// library on the same input in the same run (docs/dependencies.md gives the verdicts). Every
// comparison is "ours ÷ library" as a speed ratio (> 1: ours is faster), medians of interleaved
// rounds, plus a check that both give the same result.
//
//   library_bench [--dir DIR] [--mib M] [--rounds N] [--python PATH|none] [--json FILE]
//
// 1. Zip writer: storage/zip_writer.h's ZipStreamWriter vs libtorch's
//    caffe2::serialize::PyTorchStreamWriter (miniz), writing the records of an M MiB state dict
//    (bench_util.h's model-like one, default 256 MiB) to a sink that only counts bytes (so the
//    writer's own work is timed: headers and the CRC-32 of every byte). Once, untimed, both
//    streams are hashed to check they are the same bytes.
// 2. Checkpoint reader: hook/checkpoint_format.h's read_checkpoint(path) vs torch::pickle_load
//    (libtorch's PyTorchStreamReader + jit Unpickler, the API documented to read torch.save's
//    files) on the bytes of the same file, read into memory first (pickle_load takes a vector);
//    and both from memory (read_checkpoint_bytes vs pickle_load on the same vector); on our file
//    (write_checkpoint of the same state dict) and on a file Python's torch.save wrote for
//    tensors of the same names and shapes (PATH, default /usr/bin/python3). Once per file,
//    untimed, every tensor the two readers return is compared.
// 3. CRC-32: storage/crc32.h (PCLMUL on this CPU, and its slice-by-8 fallback) vs zlib's crc32()
//    and, when built with ISA-L (libisal-dev), ISA-L's crc32_gzip_refl, over 64 MiB (from memory)
//    and 256 KiB (from cache).
// 4. SHA-256: ledger/sha256.h's Sha256 (a wrapper over OpenSSL EVP) vs EVP_Digest directly.
// 5. filename_tmpl: policy's format_filename (Python's str.format for one int) vs fmt::format
//    (fmt::runtime) on the default template, ns per call; and both checked against Python's own
//    str.format (PATH, default /usr/bin/python3, run once) on templates where the syntaxes
//    overlap or differ.
// Files go to DIR/library_bench_<pid> (DIR defaults to the system temp dir), removed at the end.
// --json FILE: also writes the figures there, machine-readable (bench/figures.h).
#include <openssl/evp.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <caffe2/serialize/inline_container.h>
#include <fmt/format.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#if CKPTLEDGER_HAVE_ISAL
#include <isa-l/crc.h>
#endif

#include "bench/bench_util.h"
#include "bench/figures.h"
#include "ckptledger/hook_config.h"
#include "hook/checkpoint_format.h"
#include "ledger/sha256.h"
#include "storage/crc32.h"
#include "storage/zip_writer.h"

namespace {

namespace fs = std::filesystem;
using namespace ckptledger::bench;  // NOLINT: bench_util.h, figures.h

// Medians of interleaved rounds: each round runs every candidate once, in turn.
struct Candidates {
  std::vector<std::string> names;
  std::vector<std::function<void()>> fns;
  std::vector<std::vector<double>> seconds;
  std::function<void()> before;  // untimed, before every call (say, freeing the last result)
  void add(std::string name, std::function<void()> fn) {
    names.push_back(std::move(name));
    fns.push_back(std::move(fn));
    seconds.emplace_back();
  }
  void run(int rounds) {
    for (auto& f : fns) f();  // untimed warm-up
    for (int r = 0; r < rounds; ++r) {
      for (size_t i = 0; i < fns.size(); ++i) {
        if (before) before();
        auto t0 = Clock::now();
        fns[i]();
        seconds[i].push_back(seconds_since(t0));
      }
    }
  }
  double med(size_t i) const { return median(seconds[i]); }
  void print(double bytes) const {
    for (size_t i = 0; i < names.size(); ++i) {
      const double m = med(i);
      const auto [lo, hi] = std::minmax_element(seconds[i].begin(), seconds[i].end());
      fmt::print("   {:<60} {:9.3f} ms [{:8.3f}..{:8.3f}]", names[i], m * 1e3, *lo * 1e3,
                 *hi * 1e3);
      if (bytes > 0) fmt::print("  {:7.0f} MB/s", bytes / 1e6 / m);
      fmt::print("\n");
    }
  }
};

std::string mbs(double bytes, double s) { return fmt::format("{:.0f} MB/s", bytes / 1e6 / s); }

// --- 1. zip writer ------------------------------------------------------------------------------

struct Record {
  std::string name;
  const void* data;
  size_t size;
};

void zip_section(const std::vector<Record>& records, int rounds, FigureLog& figures) {
  double total = 0;
  for (const Record& r : records) total += static_cast<double>(r.size);
  auto ours = [&](const ckptledger::ZipSink& sink) {
    ckptledger::ZipStreamWriter zip(sink);
    for (const Record& r : records) zip.record(r.name, r.data, r.size);
    zip.finish();
  };
  auto theirs = [&](const std::function<void(const void*, size_t)>& sink) {
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* p, size_t n) {
      sink(p, n);
      return n;
    });
    for (const Record& r : records) writer.writeRecord(r.name, r.data, r.size);
    writer.writeEndOfFile();
  };
  // Same bytes? (untimed)
  std::string d1, d2;
  uint64_t n1 = 0, n2 = 0;
  {
    ckptledger::Sha256 h1, h2;
    ours([&](const void* p, size_t n) {
      h1.update(p, n);
      n1 += n;
    });
    theirs([&](const void* p, size_t n) {
      h2.update(p, n);
      n2 += n;
    });
    d1 = h1.hex_digest();
    d2 = h2.hex_digest();
  }
  uint64_t sink_bytes = 0;
  auto count = [&](const void*, size_t n) { sink_bytes += n; };
  Candidates c;
  c.add("ours: ZipStreamWriter (storage/zip_writer.h)", [&] { ours(count); });
  c.add("libtorch: caffe2::serialize::PyTorchStreamWriter (miniz)", [&] { theirs(count); });
  c.run(rounds);
  fmt::print("1. zip writer: {} records, {:.1f} MiB, to a sink that counts bytes; streams {}\n",
             records.size() + 1, total / 1048576.0,
             d1 == d2 && n1 == n2 ? "identical (SHA-256)" : "DIFFER");
  c.print(total);
  const double r = c.med(1) / c.med(0);
  fmt::print("   ours ÷ libtorch (speed): {:.2f}\n\n", r);
  figures.add("library: zip writer, ours ÷ PyTorchStreamWriter (speed)", r, "≥ 1", r >= 1,
              fmt::format("{} / {}{}", mbs(total, c.med(0)), mbs(total, c.med(1)),
                          d1 == d2 ? ", identical bytes" : ", BYTES DIFFER"));
}

// --- 2. checkpoint reader ---------------------------------------------------------------------

// What is wrong with `v` as a checkpoint {"state_dict": {name: tensor}}; empty when nothing.
std::string shape_problem(const c10::IValue& v) {
  if (!v.isGenericDict()) return fmt::format("returns a {}, not a dict", v.tagKind());
  const auto d = v.toGenericDict();
  if (!d.contains("state_dict")) return "returns no \"state_dict\"";
  const c10::IValue sd = d.at("state_dict");
  if (!sd.isGenericDict()) return fmt::format("returns \"state_dict\" as {}", sd.tagKind());
  for (const auto& kv : sd.toGenericDict()) {
    if (!kv.value().isTensor())
      return fmt::format("returns {} as a {}", kv.key().toStringRef(), kv.value().tagKind());
  }
  return "";
}

// Compares the two readers' results: "N tensors equal", or what differs / what is wrong.
std::string compare_state_dicts(const c10::IValue& ours, const c10::IValue& theirs) {
  if (std::string p = shape_problem(ours); !p.empty()) return "ours " + p;
  if (std::string p = shape_problem(theirs); !p.empty()) return "pickle_load " + p;
  const auto da = ours.toGenericDict().at("state_dict").toGenericDict();
  const auto db = theirs.toGenericDict().at("state_dict").toGenericDict();
  if (da.size() != db.size()) return "different numbers of tensors";
  int64_t n = 0;
  for (const auto& kv : da) {
    if (!db.contains(kv.key()) ||
        !torch::equal(kv.value().toTensor(), db.at(kv.key()).toTensor())) {
      return fmt::format("{} DIFFERS", kv.key().toStringRef());
    }
    ++n;
  }
  return fmt::format("{} tensors equal", n);
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> v(fs::file_size(path));
  in.read(v.data(), static_cast<std::streamsize>(v.size()));
  if (!in) throw std::runtime_error("cannot read " + path);
  return v;
}

// Runs `script` (Python source) with `python` and `args`; returns its stdout, or throws.
std::string run_python(const std::string& python, const fs::path& dir, const std::string& name,
                       const std::string& script, const std::string& args) {
  const fs::path py = dir / name;
  std::ofstream(py) << script;
  const std::string cmd = python + " " + py.string() + " " + args;
  std::FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("cannot run " + cmd);
  std::string text;
  char chunk[4096];
  size_t n = 0;
  while ((n = std::fread(chunk, 1, sizeof chunk, p)) > 0) text.append(chunk, n);
  if (::pclose(p) != 0) throw std::runtime_error(cmd + " failed");
  return text;
}

// Python torch.save({'state_dict': OrderedDict(...)}) of tensors with the names and shapes of
// `sd` (float32, random) to `path`.
void python_torch_save(const std::string& python, const fs::path& dir,
                       const c10::impl::GenericDict& sd, const std::string& path) {
  nlohmann::json spec = nlohmann::json::array();
  for (const auto& kv : sd) {
    spec.push_back({kv.key().toStringRef(), kv.value().toTensor().sizes().vec()});
  }
  const fs::path spec_path = dir / "shapes.json";
  std::ofstream(spec_path) << spec.dump();
  run_python(python, dir, "torch_save.py",
             "import collections, json, sys, torch\n"
             "shapes = json.load(open(sys.argv[1]))\n"
             "sd = collections.OrderedDict((n, torch.randn(s)) for n, s in shapes)\n"
             "torch.save({'state_dict': sd}, sys.argv[2])\n",
             spec_path.string() + " " + path);
}

// Both readers on the checkpoint at `path`; `figure_memory` adds the from-memory figure.
void reader_compare(const std::string& path, const std::string& label, int rounds,
                    FigureLog& figures, bool figure_memory) {
  const double bytes = static_cast<double>(fs::file_size(path));
  // Same values? (untimed)
  std::string check;
  auto first_line = [](const std::exception& e) {
    const std::string what = e.what();
    return what.substr(0, what.find('\n'));
  };
  c10::IValue ours, theirs;
  try {
    ours = ckptledger::read_checkpoint(path);
  } catch (const std::exception& e) {
    check = "read_checkpoint throws: " + first_line(e);
  }
  try {
    theirs = torch::pickle_load(read_file(path));
  } catch (const std::exception& e) {
    check +=
        (check.empty() ? "" : "; ") + std::string("torch::pickle_load throws: ") + first_line(e);
  }
  if (check.empty()) check = compare_state_dicts(ours, theirs);
  if (check.find("tensors equal") == std::string::npos) {
    fmt::print("2. checkpoint reader, {}: no comparison, {}\n\n", label, check);
    figures.add(fmt::format("library: checkpoint reader on {}, ours ÷ pickle_load", label), NAN,
                "≥ 1", std::nullopt, check);
    return;
  }
  const std::vector<char> mem = read_file(path);
  // The loaded checkpoint is kept until the next call is about to start, so that freeing its
  // tensors is not timed (as resume_bench's load; a model keeps what it loads).
  c10::IValue kept;
  Candidates c;
  c.before = [&] { kept = c10::IValue(); };
  c.add("ours: read_checkpoint(path)", [&] { kept = ckptledger::read_checkpoint(path); });
  c.add("libtorch: read the file into a vector + torch::pickle_load",
        [&] { kept = torch::pickle_load(read_file(path)); });
  c.add("ours, from memory: read_checkpoint_bytes", [&] {
    kept = ckptledger::read_checkpoint_bytes(std::string_view(mem.data(), mem.size()));
  });
  c.add("libtorch, from memory: torch::pickle_load", [&] { kept = torch::pickle_load(mem); });
  c.run(rounds);
  fmt::print("2. checkpoint reader, {} of {:.1f} MiB (warm page cache); {}\n", label,
             bytes / 1048576.0, check);
  c.print(bytes);
  const double r = c.med(1) / c.med(0), rm = c.med(3) / c.med(2);
  fmt::print("   ours ÷ libtorch (speed): {:.2f} from the file, {:.2f} from memory\n\n", r, rm);
  figures.add(fmt::format("library: checkpoint reader on {}, read_checkpoint ÷ read + "
                          "torch::pickle_load (speed)",
                          label),
              r, "≥ 1", r >= 1,
              fmt::format("{} / {}; {}", mbs(bytes, c.med(0)), mbs(bytes, c.med(1)), check));
  if (figure_memory) {
    figures.add(fmt::format("library: checkpoint reader on {}, from memory, "
                            "read_checkpoint_bytes ÷ pickle_load (speed)",
                            label),
                rm, fmt::format("{} / {}", mbs(bytes, c.med(2)), mbs(bytes, c.med(3))));
  }
}

void reader_section(const c10::impl::GenericDict& sd, const fs::path& dir, int rounds,
                    const std::string& python, FigureLog& figures) {
  c10::impl::GenericDict ckpt(c10::StringType::get(), c10::AnyType::get());
  ckpt.insert("state_dict", sd);
  const std::string path = (dir / "checkpoint.pth").string();
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    ckptledger::write_checkpoint(c10::IValue(ckpt), [&](const void* p, size_t n) {
      out.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
    });
    out.close();
    if (!out) throw std::runtime_error("cannot write " + path);
  }
  reader_compare(path, "our file (write_checkpoint)", rounds, figures, true);
  fs::remove(path);
  if (python == "none") return;
  const std::string py_path = (dir / "python.pth").string();
  try {
    python_torch_save(python, dir, sd, py_path);
  } catch (const std::exception& e) {
    fmt::print("2. checkpoint reader, Python's torch.save file: skipped ({})\n\n", e.what());
    return;
  }
  reader_compare(py_path, "Python's torch.save file", rounds, figures, false);
  fs::remove(py_path);
}

// --- 3. CRC-32 ----------------------------------------------------------------------------------

void crc_section(const std::vector<char>& buf, size_t size, int rounds, FigureLog& figures,
                 const std::string& label) {
  const auto* p = reinterpret_cast<const unsigned char*>(buf.data());
  // Many passes over a small (cached) buffer, one over a large one: ~64 MiB per timing.
  const size_t reps = std::max<size_t>(1, (64u << 20) / size);
  uint32_t sink = 0;
  auto repeat = [&](auto&& f) {
    for (size_t i = 0; i < reps; ++i) sink ^= f();
  };
  const uint32_t want = static_cast<uint32_t>(::crc32(0L, p, static_cast<uInt>(size)));
  std::vector<std::string> bad;
  if (ckptledger::crc32(p, size) != want) bad.push_back("ours");
  if (ckptledger::crc32_update_portable(0, p, size) != want) bad.push_back("ours (tables)");
#if CKPTLEDGER_HAVE_ISAL
  if (crc32_gzip_refl(0, p, size) != want) bad.push_back("ISA-L");
#endif
  Candidates c;
  c.add(fmt::format("ours: crc32_update ({})", ckptledger::crc32_implementation()),
        [&] { repeat([&] { return ckptledger::crc32(p, size); }); });
  c.add("ours: crc32_update_portable (slice-by-8)",
        [&] { repeat([&] { return ckptledger::crc32_update_portable(0, p, size); }); });
  c.add("zlib: crc32()", [&] {
    repeat([&] { return static_cast<uint32_t>(::crc32(0L, p, static_cast<uInt>(size))); });
  });
#if CKPTLEDGER_HAVE_ISAL
  c.add("ISA-L: crc32_gzip_refl", [&] { repeat([&] { return crc32_gzip_refl(0, p, size); }); });
#endif
  c.run(rounds);
  asm volatile("" : : "r"(sink));
  const double bytes = static_cast<double>(size) * static_cast<double>(reps);
  fmt::print("3. CRC-32 of {} ({} x {} bytes); results {}\n", label, reps, size,
             bad.empty() ? "all equal to zlib's" : "DIFFER: " + fmt::format("{}", bad.size()));
  c.print(bytes);
  const double rz = c.med(2) / c.med(0);
  fmt::print("   ours ÷ zlib (speed): {:.2f}", rz);
  figures.add(fmt::format("library: CRC-32 {}, ours ({}) ÷ zlib crc32 (speed)", label,
                          ckptledger::crc32_implementation()),
              rz, "≥ 1", rz >= 1,
              fmt::format("{} / {}", mbs(bytes, c.med(0)), mbs(bytes, c.med(2))));
#if CKPTLEDGER_HAVE_ISAL
  const double ri = c.med(3) / c.med(0);
  fmt::print(", ours ÷ ISA-L (speed): {:.2f}", ri);
  figures.add(fmt::format("library: CRC-32 {}, ours ÷ ISA-L crc32_gzip_refl (speed)", label), ri,
              "≥ 1", ri >= 1, fmt::format("{} / {}", mbs(bytes, c.med(0)), mbs(bytes, c.med(3))));
#endif
  fmt::print("\n\n");
}

// --- 4. SHA-256 ---------------------------------------------------------------------------------

void sha_section(const std::vector<char>& buf, int rounds, FigureLog& figures) {
  std::string ours_hex, evp_hex;
  auto evp = [&] {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(buf.data(), buf.size(), md, &len, EVP_sha256(), nullptr) != 1) {
      throw std::runtime_error("EVP_Digest failed");
    }
    evp_hex.clear();
    for (unsigned int i = 0; i < len; ++i) evp_hex += fmt::format("{:02x}", md[i]);
  };
  Candidates c;
  c.add("ours: Sha256::update (1 MiB chunks) + hex_digest", [&] {
    ckptledger::Sha256 h;
    for (size_t off = 0; off < buf.size(); off += 1 << 20) {
      h.update(buf.data() + off, std::min<size_t>(1 << 20, buf.size() - off));
    }
    ours_hex = h.hex_digest();
  });
  c.add("OpenSSL: EVP_Digest(EVP_sha256()) in one call", evp);
  c.run(rounds);
  const double bytes = static_cast<double>(buf.size());
  fmt::print("4. SHA-256 of {:.0f} MiB; digests {}\n", bytes / 1048576.0,
             ours_hex == evp_hex ? "equal" : "DIFFER");
  c.print(bytes);
  const double r = c.med(1) / c.med(0);
  fmt::print("   ours ÷ OpenSSL (speed): {:.3f} (ours is EVP_DigestInit/Update/Final)\n\n", r);
  figures.add("library: SHA-256, ours (a wrapper over OpenSSL EVP) ÷ EVP_Digest (speed)", r,
              fmt::format("{} / {}", mbs(bytes, c.med(0)), mbs(bytes, c.med(1))));
}

// --- 5. filename_tmpl ---------------------------------------------------------------------------

struct TmplCase {
  std::string tmpl;
  int64_t step;
  bool ours_by_choice;  // ckptledger rejects what Python accepts, on purpose (hook_config.h)
};

const std::vector<TmplCase>& tmpl_cases() {
  static const std::vector<TmplCase> cases = {
      {"epoch_{}.pth", 7, false},         {"iter_{0}.pth", 7, false},
      {"epoch_{:03d}.pth", 7, false},     {"epoch_{:06}.pth", -5, false},
      {"epoch_{:>06}.pth", -5, false},    {"epoch_{:>5}.pth", 42, false},
      {"epoch_{:<5}.pth", 42, false},     {"epoch_{:^6}.pth", 42, false},
      {"epoch_{:*^7}.pth", 42, false},    {"epoch_{:+d}.pth", 42, false},
      {"epoch_{: d}.pth", 42, false},     {"epoch_{:#x}.pth", 255, false},
      {"epoch_{:#X}.pth", 255, false},    {"epoch_{:#b}.pth", 5, false},
      {"epoch_{:#o}.pth", 8, false},      {"epoch_{:,}.pth", 1234567, false},
      {"epoch_{:_}.pth", 1234567, false}, {"epoch_{:_x}.pth", 0xABCDEF, false},
      {"epoch_{:08,}.pth", 1234, false},  {"epoch_{:=+8}.pth", 42, false},
      {"epoch_{:n}.pth", 1234, false},    {"{{epoch}}_{}.pth", 5, false},
      {"epoch_{:.3}.pth", 5, false},      {"epoch_{}_{}.pth", 5, false},
      {"epoch_{epoch}.pth", 5, false},    {"epoch_{1}.pth", 5, false},
      {"epoch_{:z}.pth", 5, false},       {"epoch_}.pth", 5, false},
      {"epoch_{:c}.pth", 65, true},       {"epoch_{:e}.pth", 5, true},
      {"epoch_{!r}.pth", 5, true},        {"epoch_{:300}.pth", 5, true},
  };
  return cases;
}

// Python's own results, one per case: the string, or "error: <exception type>".
std::vector<std::string> python_results(const std::string& python, const fs::path& dir) {
  std::vector<std::string> out;
  if (python == "none") return out;
  const fs::path in = dir / "tmpl_cases.json";
  nlohmann::json cases = nlohmann::json::array();
  for (const TmplCase& c : tmpl_cases()) cases.push_back({c.tmpl, c.step});
  std::ofstream(in) << cases.dump();
  try {
    const std::string text = run_python(python, dir, "tmpl_cases.py",
                                        "import json, sys\n"
                                        "out = []\n"
                                        "for t, s in json.load(open(sys.argv[1])):\n"
                                        "    try:\n"
                                        "        out.append(t.format(s))\n"
                                        "    except Exception as e:\n"
                                        "        out.append('error: ' + type(e).__name__)\n"
                                        "print(json.dumps(out))\n",
                                        in.string());
    for (const auto& s : nlohmann::json::parse(text)) out.push_back(s.get<std::string>());
  } catch (const std::exception& e) {
    fmt::print("   (Python not run: {})\n", e.what());
  }
  return out;
}

void format_section(const std::string& python, const fs::path& dir, int rounds,
                    FigureLog& figures) {
  const std::vector<std::string> py = python_results(python, dir);
  int ours_ok = 0, fmt_ok = 0, by_choice = 0;
  std::vector<std::string> fmt_differs;
  fmt::print("5. filename_tmpl: Python str.format vs ours (format_filename) vs fmt::format\n");
  fmt::print("   {:<20} {:>8}  {:<22} {:<22} {:<22}\n", "template", "step", "Python", "ours",
             "fmt::format");
  for (size_t i = 0; i < tmpl_cases().size(); ++i) {
    const TmplCase& c = tmpl_cases()[i];
    std::string ours, theirs;
    try {
      ours = ckptledger::format_filename(c.tmpl, c.step);
    } catch (const std::exception&) {
      ours = "error";
    }
    try {
      theirs = fmt::format(fmt::runtime(c.tmpl), c.step);
    } catch (const std::exception&) {
      theirs = "error";
    }
    const std::string want = i < py.size() ? py[i] : "?";
    auto same = [&](const std::string& got) {
      return got == want || (got == "error" && want.rfind("error", 0) == 0);
    };
    if (same(ours)) ++ours_ok;
    if (c.ours_by_choice && !same(ours)) ++by_choice;
    if (same(theirs)) {
      ++fmt_ok;
    } else {
      fmt_differs.push_back(c.tmpl);
    }
    auto cut = [](const std::string& x) {  // keeps the table readable ({:300} is 300 wide)
      return x.size() <= 22 ? x : x.substr(0, 10) + "..." + x.substr(x.size() - 9);
    };
    fmt::print("   {:<20} {:>8}  {:<22} {:<22} {:<22}{}\n", c.tmpl, c.step, cut(want), cut(ours),
               cut(theirs), c.ours_by_choice ? "  (ours: rejected by choice)" : "");
  }
  const size_t n = tmpl_cases().size();
  fmt::print("   agree with Python: ours {}/{} ({} rejected by choice), fmt::format {}/{}\n",
             ours_ok, n, by_choice, fmt_ok, n);

  // Speed on the default template (one call per save in the hook).
  constexpr int kCalls = 100000;
  size_t len = 0;
  Candidates c;
  c.add("ours: format_filename(\"epoch_{}.pth\", step)", [&] {
    for (int i = 0; i < kCalls; ++i) len += ckptledger::format_filename("epoch_{}.pth", i).size();
  });
  c.add("fmt: fmt::format(fmt::runtime(\"epoch_{}.pth\"), step)", [&] {
    for (int i = 0; i < kCalls; ++i) len += fmt::format(fmt::runtime("epoch_{}.pth"), i).size();
  });
  c.run(rounds);
  asm volatile("" : : "r"(len));
  fmt::print("   {} calls per timing:\n", kCalls);
  c.print(0);
  const double ns0 = c.med(0) / kCalls * 1e9, ns1 = c.med(1) / kCalls * 1e9;
  const double r = c.med(1) / c.med(0);
  fmt::print("   ours {:.0f} ns, fmt {:.0f} ns per call: ours ÷ fmt (speed) {:.2f}\n\n", ns0, ns1,
             r);
  figures.add("library: filename_tmpl, format_filename ÷ fmt::format (speed)", r,
              fmt::format("{:.0f} ns / {:.0f} ns per call; agree with Python on {} cases: ours "
                          "{} ({} rejected by choice), fmt {}",
                          ns0, ns1, n, ours_ok, by_choice, fmt_ok));
}

}  // namespace

int main(int argc, char** argv) {
  fs::path parent = fs::temp_directory_path();
  int64_t mib = 256;
  int rounds = 7;
  std::string python = "/usr/bin/python3", json;
  const char* usage =
      "usage: library_bench [--dir DIR] [--mib M] [--rounds N] [--python PATH|none] [--json FILE]";
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (i + 1 >= argc) {
      fmt::print(stderr, "library_bench: option {} needs a value\n{}\n", a, usage);
      return 2;
    }
    if (a == "--dir") {
      parent = argv[i + 1];
    } else if (a == "--mib") {
      mib = std::max<int64_t>(1, std::stoll(argv[i + 1]));
    } else if (a == "--rounds") {
      rounds = std::max(1, std::stoi(argv[i + 1]));
    } else if (a == "--python") {
      python = argv[i + 1];
    } else if (a == "--json") {
      json = argv[i + 1];
    } else {
      fmt::print(stderr, "library_bench: unknown option {}\n{}\n", a, usage);
      return 2;
    }
  }
  const fs::path dir = fs::absolute(parent) / fmt::format("library_bench_{}", ::getpid());
  fs::create_directories(dir);
  fmt::print(
      "library_bench: dir {}, {} interleaved rounds (medians, min..max), torch threads {}, "
      "ISA-L {}\n\n",
      dir.string(), rounds, torch::get_num_threads(),
      CKPTLEDGER_HAVE_ISAL ? "linked" : "not built in (libisal-dev missing at configure)");
  int rc = 0;
  try {
    FigureLog figures("library_bench");
    int64_t bytes = 0, tensors = 0;
    c10::impl::GenericDict sd = model_like_state_dict(mib, &bytes, &tensors);

    // The records write_checkpoint would write for it (data.pkl stands in as 64 KiB of bytes).
    std::vector<char> pkl(64 << 10, 'p');
    std::vector<Record> records = {{"data.pkl", pkl.data(), pkl.size()},
                                   {"byteorder", "little", 6}};
    int k = 0;
    for (const auto& kv : sd) {
      const torch::Tensor t = kv.value().toTensor();
      records.push_back({fmt::format("data/{}", k++), t.data_ptr(), t.nbytes()});
    }
    zip_section(records, rounds, figures);
    reader_section(sd, dir, rounds, python, figures);

    std::vector<char> buf(64 << 20);
    std::mt19937_64 rng(1);
    for (size_t i = 0; i + 8 <= buf.size(); i += 8) {
      const uint64_t v = rng();
      std::memcpy(buf.data() + i, &v, 8);
    }
    crc_section(buf, buf.size(), rounds, figures, "64 MiB");
    crc_section(buf, 256 << 10, rounds, figures, "256 KiB (in cache)");
    sha_section(buf, rounds, figures);
    format_section(python, dir, rounds, figures);
    figures.write(json);
  } catch (const std::exception& e) {
    fmt::print(stderr, "library_bench: {}\n", e.what());
    rc = 1;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return rc;
}
