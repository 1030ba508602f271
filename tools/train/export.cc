#include "tools/train/export.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>

#include <fmt/format.h>

#include "catalog/catalog.h"
#include "ckptledger/error.h"
#include "ckptledger/hook_state.h"
#include "ckptledger/ledger.h"
#include "hook/checkpoint_format.h"
#include "hook/layouts.h"
#include "policy/parts.h"
#include "storage/durable_file.h"

namespace ckptledger {
namespace {

namespace fs = std::filesystem;

// One file of a checkpoint and what its commit recorded.
struct Part {
  std::string path;
  int64_t bytes = 0;
  std::string sha256;
};

// A checkpoint's parts in rank order (part 0 is the checkpoint itself). Part paths are recorded as
// written; the ledger gives them as they are now (a moved work_dir: Ledger::reroot).
std::vector<Part> parts_of(const std::string& path, const LiveFile& lf, const Ledger& ledger) {
  std::vector<Part> parts{{path, lf.bytes, lf.digest}};
  if (lf.part_bytes.size() != lf.part_paths.size() ||
      lf.part_sha256.size() != lf.part_paths.size()) {
    throw_error(
        ErrorCode::kCorruption,
        fmt::format("checkpoint {}: its commit lists {} part paths, {} sizes and {} "
                    "digests",
                    path, lf.part_paths.size(), lf.part_bytes.size(), lf.part_sha256.size()));
  }
  for (size_t r = 1; r < lf.part_paths.size(); ++r) {
    parts.push_back({ledger.reroot(lf.part_paths[r]), lf.part_bytes[r], lf.part_sha256[r]});
  }
  return parts;
}

// A part that does not verify: its message names the part and the checkpoint.
struct PartProblem {
  std::string what;
};

std::string part_name(const std::string& ckpt, size_t rank, const Part& p) {
  return rank == 0 ? ckpt : fmt::format("part {} ({})", rank, p.path);
}

// Throws PartProblem unless `p` exists with the recorded size (its SHA-256 is checked as it is
// read).
void check_size(const std::string& ckpt, size_t rank, const Part& p) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(p.path, ec);
  if (ec == std::errc::no_such_file_or_directory) {
    throw PartProblem{part_name(ckpt, rank, p) + " is missing"};
  }
  if (ec) throw PartProblem{fmt::format("{}: {}", part_name(ckpt, rank, p), ec.message())};
  if (static_cast<int64_t>(size) != p.bytes) {
    throw PartProblem{fmt::format("{} has {} bytes, its commit recorded {}",
                                  part_name(ckpt, rank, p), size, p.bytes)};
  }
}

// The file's bytes into `sink`, 1 MiB at a time.
void copy_bytes(const std::string& path, const ByteSink& sink) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw_error(errno == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIOError,
                fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  }
  std::unique_ptr<int, void (*)(int*)> closer(new int(fd), [](int* f) {
    ::close(*f);
    delete f;
  });
  std::vector<char> buf(kWriteBlockBytes);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      throw_error(ErrorCode::kIOError,
                  fmt::format("cannot read {}: {}", path, std::strerror(errno)));
    if (n == 0) break;
    sink(buf.data(), static_cast<size_t>(n));
  }
}

// Part `rank` loaded, its SHA-256 checked as it is read. Throws PartProblem.
c10::IValue load_part(const std::string& ckpt, size_t rank, const Part& p) {
  check_size(ckpt, rank, p);
  VerifiedCheckpoint v;
  try {
    v = read_checkpoint_verified(p.path, p.sha256);
  } catch (const Error& e) {
    throw PartProblem{
        fmt::format("{} does not read as a checkpoint ({})", part_name(ckpt, rank, p), e.what())};
  }
  if (!v.matches) {
    throw PartProblem{fmt::format("{}: SHA-256 {} differs from the recorded {}",
                                  part_name(ckpt, rank, p), v.sha256, p.sha256)};
  }
  return std::move(v.value);
}

// The exported content of a checkpoint of several parts.
c10::IValue combine(const std::string& ckpt, const LiveFile& lf, const std::vector<Part>& parts) {
  std::vector<c10::IValue> loaded;
  for (size_t r = 0; r < parts.size(); ++r) loaded.push_back(load_part(ckpt, r, parts[r]));
  if (lf.layout == "spread") {
    return assemble_spread(loaded[0], {loaded.begin() + 1, loaded.end()});
  }
  // "sharded": rank 0's checkpoint, and every rank's optimizer state beside it.
  c10::impl::GenericList shards(c10::AnyType::get());
  for (size_t r = 0; r < loaded.size(); ++r) {
    if (!loaded[r].isGenericDict()) {
      throw_error(ErrorCode::kCorruption, fmt::format("checkpoint {}: {} is not a dict", ckpt,
                                                      part_name(ckpt, r, parts[r])));
    }
    const c10::impl::GenericDict d = loaded[r].toGenericDict();
    shards.push_back(d.contains("optimizer") ? d.at("optimizer") : c10::IValue());
  }
  c10::impl::GenericDict out = loaded[0].toGenericDict().copy();
  out.insert_or_assign("optimizer_shards", shards);
  return out;
}

// Whether the file at `path` is an SQLite database (a ledger given as SOURCE).
bool is_sqlite_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char head[16] = {};
  in.read(head, sizeof(head));
  return in.gcount() == 16 && std::memcmp(head, "SQLite format 3", 16) == 0;
}

struct Folded {
  std::unique_ptr<Ledger> ledger;
  HookState state;
};

Folded fold(const std::string& ledger_or_work_dir) {
  LedgerOptions ro;
  ro.mode = OpenMode::kReadOnly;
  ro.one_look = true;
  Folded f;
  f.ledger = Ledger::open(resolve_ledger_path(absolute_normal(ledger_or_work_dir)), ro);
  HookStateFold folder(f.state);
  f.ledger->replay(folder);
  return f;
}

class Exporter {
 public:
  explicit Exporter(const ExportOptions& o) : out_(absolute_normal(o.output)) {
    if (o.output.empty()) throw_error(ErrorCode::kInvalidArgument, "export: -o FILE is required");
    std::error_code ec;
    const fs::file_status st = fs::symlink_status(out_, ec);
    if (fs::is_directory(st)) {
      throw_error(ErrorCode::kInvalidArgument, fmt::format("export: {} is a directory", out_));
    }
    if (fs::exists(st) && !o.force) {
      throw_error(ErrorCode::kInvalidArgument,
                  fmt::format("export: {} exists (--force replaces it)", out_));
    }
  }

  // Writes the checkpoint `path` whose parts are `parts`. Throws PartProblem when one does not
  // verify (nothing is then written, and an existing output is left as it was).
  void write(const std::string& path, const LiveFile& lf, const std::vector<Part>& parts,
             ExportResult& r) {
    for (const Part& p : parts) refuse_overwrite(p.path);
    WrittenFile w;
    if (parts.size() == 1) {
      // A whole file: its bytes, which are the MMEngine layout already (and keep whatever a
      // Python-written file holds). The copy is hashed as it is written and renamed into place
      // only when it is the committed content.
      const Part& p = parts[0];
      check_size(path, 0, p);
      w = write_durably(
          out_, [&](const ByteSink& sink) { copy_bytes(p.path, sink); }, FileSystem::posix(),
          [&](const WrittenFile& written) {
            if (written.sha256 != p.sha256) {
              throw PartProblem{fmt::format("{}: SHA-256 {} differs from the recorded {}", path,
                                            written.sha256, p.sha256)};
            }
          });
    } else {
      c10::IValue content;
      try {
        content = combine(path, lf, parts);
      } catch (const Error& e) {
        if (e.code() != ErrorCode::kCorruption) throw;
        throw PartProblem{e.what()};  // parts that verify but do not fit together
      }
      w = write_durably(out_, [&](const ByteSink& sink) { write_checkpoint(content, sink); });
    }
    r.checkpoint = path;
    r.layout = lf.layout;
    r.parts = static_cast<int64_t>(parts.size());
    r.step = lf.step;
    r.bytes = w.bytes;
    r.sha256 = w.sha256;
  }

  // A file no ledger recorded: exported as it is once it loads as a whole checkpoint.
  void write_plain(const std::string& path, ExportResult& r) {
    refuse_overwrite(path);
    const c10::IValue v = read_checkpoint(path);
    if (is_spread_part(v)) {
      throw_error(ErrorCode::kInvalidArgument,
                  fmt::format("export: {} is one part of a \"spread\" checkpoint, and no ledger "
                              "lists it: export its checkpoint (part 0) through the ledger that "
                              "recorded it (--ledger)",
                              path));
    }
    if (has_spread_placeholder(v)) {
      throw_error(ErrorCode::kInvalidArgument,
                  fmt::format("export: {} is part 0 of a \"spread\" checkpoint (its other ranks' "
                              "tensors are in other files), and no ledger lists it: give the "
                              "ledger that recorded it (--ledger)",
                              path));
    }
    const WrittenFile w =
        write_durably(out_, [&](const ByteSink& sink) { copy_bytes(path, sink); });
    r.checkpoint = path;
    r.bytes = w.bytes;
    r.sha256 = w.sha256;
  }

 private:
  // --force must not replace the checkpoint being exported, nor one of its parts.
  void refuse_overwrite(const std::string& input) const {
    std::error_code ec;
    if (input == out_ || fs::equivalent(input, out_, ec)) {
      throw_error(
          ErrorCode::kInvalidArgument,
          fmt::format("export: the output {} is the checkpoint file {} itself", out_, input));
    }
  }

  const std::string out_;
};

}  // namespace

ExportResult export_checkpoint(const ExportOptions& o) {
  ExportResult r;
  const std::string source = absolute_normal(o.source);
  std::error_code ec;
  const fs::file_status st = fs::status(source, ec);
  if (!fs::exists(st)) {
    throw_error(ec && ec != std::errc::no_such_file_or_directory ? ErrorCode::kIOError
                                                                 : ErrorCode::kNotFound,
                fmt::format("export: no such work_dir, ledger or checkpoint: {}", source));
  }
  Exporter exporter(o);

  if (fs::is_directory(st) || is_sqlite_file(source)) {
    if (o.ledger) {
      throw_error(ErrorCode::kInvalidArgument,
                  "export: --ledger goes with a checkpoint file, not with a work_dir or ledger");
    }
    // The newest committed regular checkpoint whose every part verifies: what a resume loads.
    Folded f = fold(source);
    r.ledger = f.ledger->path();
    for (auto it = f.state.regular_order.rbegin(); it != f.state.regular_order.rend(); ++it) {
      auto live = f.state.live.find(*it);
      if (live == f.state.live.end()) continue;
      try {
        exporter.write(*it, live->second, parts_of(*it, live->second, *f.ledger), r);
        return r;
      } catch (const PartProblem& p) {
        r.skipped.emplace_back(*it, p.what);
      }
    }
    return r;  // none verifies
  }

  // A checkpoint file: the ledger of its directory (or --ledger) must hold it live.
  const std::string ledger_at =
      o.ledger ? absolute_normal(*o.ledger) : fs::path(source).parent_path().string();
  const std::string ledger_file = resolve_ledger_path(ledger_at);
  if (!o.ledger && !fs::exists(ledger_file, ec)) {
    exporter.write_plain(source, r);
    return r;
  }
  Folded f = fold(ledger_file);
  r.ledger = f.ledger->path();
  auto live = f.state.live.find(source);
  if (live == f.state.live.end()) {
    // One of a live checkpoint's parts?
    for (const auto& [path, lf] : f.state.live) {
      for (size_t p = 1; p < lf.part_paths.size(); ++p) {
        if (f.ledger->reroot(lf.part_paths[p]) == source) {
          throw_error(ErrorCode::kInvalidArgument,
                      fmt::format("export: {} is part {} of checkpoint {}: export the checkpoint",
                                  source, p, path));
        }
      }
    }
    const bool recorded =
        f.ledger->names(source, {EventKind::kSaveBegun, EventKind::kSaveCommitted,
                                 EventKind::kPublished, EventKind::kPruned, EventKind::kRecovered});
    if (o.ledger || recorded || is_part_name(fs::path(source).filename().string())) {
      throw_error(ErrorCode::kNotFound,
                  fmt::format("export: {} is not a live checkpoint of ledger {}{}", source,
                              f.ledger->path(),
                              recorded ? " (it was pruned, lost, or never committed)" : ""));
    }
    r.ledger.clear();
    exporter.write_plain(source, r);
    return r;
  }
  try {
    exporter.write(source, live->second, parts_of(source, live->second, *f.ledger), r);
  } catch (const PartProblem& p) {
    throw_error(
        ErrorCode::kCorruption,
        fmt::format("export: checkpoint {} does not verify: {}; nothing written", source, p.what));
  }
  return r;
}

}  // namespace ckptledger
