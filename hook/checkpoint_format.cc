#include "hook/checkpoint_format.h"

#include <ATen/core/Tensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/TensorImpl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "ckptledger/error.h"
#include "ledger/sha256.h"
#include "storage/crc32.h"
#include "storage/zip_writer.h"

namespace ckptledger {
namespace {

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

constexpr int kMaxNesting = 512;

bool is_supported_dtype(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float:
    case c10::ScalarType::Double:
    case c10::ScalarType::Half:
    case c10::ScalarType::BFloat16:
    case c10::ScalarType::Char:
    case c10::ScalarType::Short:
    case c10::ScalarType::Int:
    case c10::ScalarType::Long:
    case c10::ScalarType::Byte:
    case c10::ScalarType::Bool:
      return true;
    default:
      return false;
  }
}

std::string key_label(const c10::IValue& key) {
  if (key.isString()) return key.toStringRef();
  if (key.isInt()) return std::to_string(key.toInt());
  if (key.isBool()) return key.toBool() ? "True" : "False";
  if (key.isDouble()) return std::to_string(key.toDouble());
  return "<" + std::string(key.tagKind()) + " key>";
}

// Copies the container skeleton of the caller's object into plain containers, checking every
// value on the way. The copy serves three purposes:
//  * Typed lists (IntList, DoubleList, BoolList, TensorList) become generic lists. The Pickler
//    writes typed lists as torch.jit._pickle.build_*list calls, which weights_only=True refuses.
//  * Byte determinism. The Pickler memoizes a pointer value (BINPUT) only when its use_count()
//    is above 1, so a tensor the model also holds would pickle differently from an equal tensor
//    held only by the checkpoint. In the copy every tensor is referenced by the caller's object
//    and by the copy (always memoized), and every container exactly once (never memoized).
//  * Errors name the offending value's path before the sink sees a byte.
class PlainCopier {
 public:
  c10::IValue copy(const c10::IValue& v) {
    if (path_.size() > kMaxNesting) fail("nesting deeper than " + std::to_string(kMaxNesting));
    if (v.isNone() || v.isBool() || v.isInt() || v.isDouble() || v.isString()) return v;
    if (v.isTensor()) {
      check_tensor(v.toTensor());
      return v;
    }
    if (v.isGenericDict()) {
      const c10::impl::GenericDict in = v.toGenericDict();
      check_not_opaque(in);
      c10::impl::GenericDict out(in.keyType(), c10::AnyType::get());
      out.reserve(in.size());
      for (const auto& entry : in) {
        const c10::IValue& key = entry.key();
        if (!(key.isString() || key.isInt() || key.isBool() || key.isDouble())) {
          fail("dict key of type " + std::string(key.tagKind()) +
               " (keys must be str, int, bool or float)");
        }
        path_.push_back(key_label(key));
        out.insert(key, copy(entry.value()));
        path_.pop_back();
      }
      return out;
    }
    if (v.isList()) {
      const c10::List<c10::IValue> in = v.toList();
      c10::impl::GenericList out(c10::AnyType::get());
      out.reserve(in.size());
      for (size_t i = 0; i < in.size(); ++i) {
        path_.push_back("[" + std::to_string(i) + "]");
        out.push_back(copy(in.get(i)));
        path_.pop_back();
      }
      return out;
    }
    if (v.isTuple()) {
      const auto& elements = v.toTupleRef().elements();
      std::vector<c10::IValue> out;
      out.reserve(elements.size());
      for (size_t i = 0; i < elements.size(); ++i) {
        path_.push_back("(" + std::to_string(i) + ")");
        out.push_back(copy(elements[i]));
        path_.pop_back();
      }
      return c10::ivalue::Tuple::create(std::move(out));
    }
    fail("unsupported value of type " + std::string(v.tagKind()));
  }

 private:
  void check_tensor(const at::Tensor& t) {
    if (!t.defined()) fail("undefined tensor");
    if (t.layout() != c10::kStrided) fail("non-strided (sparse or mkldnn) tensor");
    if (t.is_quantized()) fail("quantized tensor");
    if (t.is_conj() || t.is_neg()) fail("tensor with a conjugate or negative bit");
    if (!is_supported_dtype(t.scalar_type())) {
      fail("tensor of unsupported dtype " + std::string(c10::toString(t.scalar_type())));
    }
    const c10::DeviceType device = t.device().type();
    if (device != c10::DeviceType::CPU && device != c10::DeviceType::CUDA) {
      fail("tensor on unsupported device " + t.device().str());
    }
    if (!t.has_storage() || (t.storage().nbytes() > 0 && t.storage().data() == nullptr)) {
      fail("tensor without data");
    }
  }

  // What read_checkpoint makes of a pickled object it cannot build ({"__pickled__": ...} or
  // {"__global__": ...} first) is refused: written as a dict, Python would read back a dict in
  // place of the object, and raw bytes in it as text it cannot decode.
  void check_not_opaque(const c10::impl::GenericDict& dict) const {
    if (dict.empty()) return;
    const c10::IValue& key = dict.begin()->key();
    if (!key.isString() ||
        (key.toStringRef() != "__pickled__" && key.toStringRef() != "__global__")) {
      return;
    }
    const c10::IValue& name = dict.begin()->value();
    fail("opaque pickled object " + (name.isString() ? name.toStringRef() : std::string("?")) +
         " (as read_checkpoint reads a Python object it cannot build; drop it or convert it "
         "to plain values)");
  }

  [[noreturn]] void fail(const std::string& what) const {
    std::string where;
    for (const auto& part : path_) where += "/" + part;
    throw_error(ErrorCode::kInvalidArgument,
                "write_checkpoint: " + what + " at " + (where.empty() ? "/" : where));
  }

  std::vector<std::string> path_;
};

}  // namespace

uint64_t write_checkpoint(const c10::IValue& obj, const CheckpointSink& sink) {
  const c10::IValue plain = PlainCopier().copy(obj);

  // The pickle holds only metadata (tensors become storage references collected in
  // tensorData()), so buffering it is cheap; the storages go to the sink from their own memory.
  std::string pickle;
  std::vector<at::Tensor> storages;
  try {
    torch::jit::Pickler pickler(
        [&pickle](const char* data, size_t size) { pickle.append(data, size); },
        /*tensor_table=*/nullptr, /*type_renamer=*/nullptr,
        /*memoized_class_types=*/nullptr, /*get_tensor_id=*/nullptr,
        /*tag_aggregates=*/false);
    pickler.protocol();
    pickler.pushIValue(plain);
    pickler.stop();
    storages = pickler.tensorData();
  } catch (const c10::Error& e) {
    throw_error(ErrorCode::kInvalidArgument,
                std::string("write_checkpoint: pickling failed: ") + e.what_without_backtrace());
  }

  ZipStreamWriter zip(sink);
  zip.record("data.pkl", pickle.data(), pickle.size());
  static constexpr char kByteOrder[] = "little";
  zip.record("byteorder", kByteOrder, sizeof(kByteOrder) - 1);
  for (size_t i = 0; i < storages.size(); ++i) {
    try {
      // For CPU tensors this is the tensor itself; a CUDA storage is copied to the host here.
      const torch::jit::WriteableTensorData data = torch::jit::getWriteableTensorData(storages[i]);
      zip.record("data/" + std::to_string(i), data.data(), data.sizeInBytes());
    } catch (const c10::Error& e) {
      throw_error(ErrorCode::kIOError,
                  std::string("write_checkpoint: ") + e.what_without_backtrace());
    }
  }
  zip.finish();
  return zip.bytes();
}

namespace {

// ---------------------------------------------------------------------------------------------
// Reading: random access to the archive's bytes
// ---------------------------------------------------------------------------------------------

[[noreturn]] void corrupt(const std::string& name, const std::string& what) {
  throw_error(ErrorCode::kCorruption, "checkpoint " + name + ": " + what);
}

[[noreturn]] void unsupported(const std::string& name, const std::string& what) {
  throw_error(ErrorCode::kInvalidArgument, "checkpoint " + name + ": " + what);
}

class ByteSource {
 public:
  explicit ByteSource(std::string name) : name_(std::move(name)) {}
  virtual ~ByteSource() = default;
  ByteSource(const ByteSource&) = delete;
  ByteSource& operator=(const ByteSource&) = delete;

  const std::string& name() const { return name_; }
  virtual uint64_t size() const = 0;
  // Reads exactly n bytes at offset; a range past the end is corruption (a truncated archive).
  void read(uint64_t offset, void* out, size_t n) const {
    if (offset > size() || n > size() - offset) {
      corrupt(name_, "truncated: needs bytes [" + std::to_string(offset) + ", " +
                         std::to_string(offset + n) + ") of " + std::to_string(size()));
    }
    read_in_range(offset, out, n);
  }
  // The reader has read record `name`, [offset, offset + n), into `data` and keeps it there,
  // unchanged, until it calls abandon() or the source's finish: a hashing source hashes it where
  // it lies. Returns true when the source checks the record's CRC-32 `crc` itself (a source that
  // verifies a known SHA-256 over these very bytes needs no CRC), false when the reader must.
  virtual bool kept(uint64_t /*offset*/, const void* /*data*/, size_t /*n*/, uint32_t /*crc*/,
                    const std::string& /*name*/) const {
    return false;
  }
  // The reader is unwinding: stop using what kept() was given, before it is freed.
  virtual void abandon() const noexcept {}

 private:
  virtual void read_in_range(uint64_t offset, void* out, size_t n) const = 0;
  std::string name_;
};

class MemorySource final : public ByteSource {
 public:
  MemorySource(std::string_view bytes, std::string name)
      : ByteSource(std::move(name)), bytes_(bytes) {}
  uint64_t size() const override { return bytes_.size(); }

 private:
  void read_in_range(uint64_t offset, void* out, size_t n) const override {
    if (n > 0) std::memcpy(out, bytes_.data() + offset, n);
  }
  std::string_view bytes_;
};

// Reads pieces of a file at given offsets until done; pread semantics with the reader's errors.
void pread_exact(int fd, const std::string& name, uint64_t offset, void* out, size_t n) {
  auto* dst = static_cast<char*>(out);
  while (n > 0) {
    const ssize_t got = ::pread(fd, dst, n, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw_error(ErrorCode::kIOError, "checkpoint " + name + ": read at " +
                                           std::to_string(offset) + ": " + std::strerror(errno));
    }
    if (got == 0) corrupt(name, "truncated while reading (the file shrank)");
    dst += got;
    offset += static_cast<uint64_t>(got);
    n -= static_cast<size_t>(got);
  }
}

// The SHA-256 of a whole file, computed on a second thread while the reader loads it, so that
// the file is read once: the records the reader keeps in memory (data.pkl, every storage) are
// hashed where they lie, and the bytes in between (zip headers, the central directory, records
// the reader skips) are read by the thread itself. The thread hashes in file order; it reads a
// gap itself when the gap is small or the reader is done, and otherwise waits for the reader to
// load it (readers load records in file order, so it never waits long).
// Thread safety: kept() from the reader's thread; finish()/abandon() join the thread.
class BackgroundFileHash {
 public:
  BackgroundFileHash(int fd, uint64_t size, std::string name)
      : fd_(fd), size_(size), name_(std::move(name)), thread_([this] { run(); }) {}
  ~BackgroundFileHash() { abandon(); }
  BackgroundFileHash(const BackgroundFileHash&) = delete;
  BackgroundFileHash& operator=(const BackgroundFileHash&) = delete;

  void kept(uint64_t offset, const char* data, size_t n) {
    if (n == 0) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      regions_[offset] = {data, n};
    }
    cv_.notify_one();
  }
  // Waits for the digest of the whole file (lowercase hex); rethrows a read error of the thread.
  std::string finish() {
    stop(/*abort=*/false);
    if (error_) std::rethrow_exception(error_);
    return hex_;
  }
  // After finish(): whether the region kept at `offset` was hashed, whole, from the reader's
  // memory (rather than, in part, from the thread's own read of the file).
  bool hashed_in_place(uint64_t offset) const { return in_place_.count(offset) > 0; }
  void abandon() noexcept { stop(/*abort=*/true); }

 private:
  // Gaps up to this size are read by the thread at once rather than waited for.
  static constexpr uint64_t kReadGap = 1 << 20;

  void stop(bool abort) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      abort_ = abort_ || abort;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }

  void run() {
    try {
      Sha256 sha;
      std::vector<char> buf;
      uint64_t cursor = 0;
      while (cursor < size_) {
        const char* mem = nullptr;
        uint64_t end = 0;
        {
          std::unique_lock<std::mutex> lock(mu_);
          for (;;) {
            if (abort_) return;
            while (!regions_.empty() &&
                   regions_.begin()->first + regions_.begin()->second.second <= cursor) {
              regions_.erase(regions_.begin());
            }
            if (!regions_.empty() && regions_.begin()->first <= cursor) {
              const auto& [offset, region] = *regions_.begin();
              mem = region.first + (cursor - offset);
              end = offset + region.second;
              if (offset == cursor && end <= size_) in_place_.insert(offset);
              regions_.erase(regions_.begin());
              break;
            }
            const uint64_t next = regions_.empty() ? size_ : regions_.begin()->first;
            if (done_ || next - cursor <= kReadGap) {
              end = std::min(next, size_);
              break;
            }
            cv_.wait(lock);
          }
        }
        end = std::min(end, size_);
        if (mem != nullptr) {
          sha.update(mem, end - cursor);
          cursor = end;
          continue;
        }
        while (cursor < end) {
          const size_t n = static_cast<size_t>(std::min<uint64_t>(end - cursor, kReadGap));
          buf.resize(n);
          pread_exact(fd_, name_, cursor, buf.data(), n);
          sha.update(buf.data(), n);
          cursor += n;
        }
      }
      hex_ = sha.hex_digest();
    } catch (...) {
      error_ = std::current_exception();
    }
  }

  const int fd_;
  const uint64_t size_;
  const std::string name_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, std::pair<const char*, size_t>> regions_;  // guarded by mu_
  bool done_ = false;                                           // guarded by mu_
  bool abort_ = false;                                          // guarded by mu_
  std::string hex_;                                             // written by the thread
  std::exception_ptr error_;                                    // written by the thread
  std::set<uint64_t> in_place_;                                 // written by the thread
  std::thread thread_;  // last: started once everything it uses exists
};

class FileSource final : public ByteSource {
 public:
  // With `hash`, the file's SHA-256 is computed while it is read (finish_hash()), and the CRC-32
  // of the records hashed in place is left to that digest: the caller compares it with a known
  // one and discards the load when it differs.
  explicit FileSource(const std::string& path, bool hash = false) : ByteSource(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      const int err = errno;
      throw_error(err == ENOENT || err == ENOTDIR ? ErrorCode::kNotFound : ErrorCode::kIOError,
                  "checkpoint " + path + ": open: " + std::strerror(err));
    }
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      const int err = errno;
      ::close(fd_);
      throw_error(ErrorCode::kIOError, "checkpoint " + path + ": fstat: " + std::strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd_);
      throw_error(ErrorCode::kInvalidArgument, "checkpoint " + path + ": not a regular file");
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (hash) hash_ = std::make_unique<BackgroundFileHash>(fd_, size_, path);
  }
  ~FileSource() override {
    hash_.reset();  // joins the hashing thread before its descriptor is closed
    ::close(fd_);
  }
  uint64_t size() const override { return size_; }
  bool kept(uint64_t offset, const void* data, size_t n, uint32_t crc,
            const std::string& name) const override {
    if (!hash_) return false;
    hash_->kept(offset, static_cast<const char*>(data), n);
    deferred_.push_back({offset, static_cast<const char*>(data), n, crc, name});
    return true;
  }
  void abandon() const noexcept override {
    if (hash_) hash_->abandon();
  }
  // The digest of the whole file; call once the reader is done with it (what it kept still
  // alive). Records the thread did not hash in place (it read some of their bytes itself, racing
  // ahead of the reader) get their CRC-32 checked here, as the reader would have.
  std::string finish_hash() const {
    if (!hash_) return std::string();
    std::string hex = hash_->finish();
    for (const Deferred& d : deferred_) {
      if (!hash_->hashed_in_place(d.offset) && crc32(d.data, d.size) != d.crc) {
        corrupt(name(), "CRC-32 mismatch in record " + d.name);
      }
    }
    return hex;
  }

 private:
  void read_in_range(uint64_t offset, void* out, size_t n) const override {
    pread_exact(fd_, name(), offset, out, n);
  }
  struct Deferred {
    uint64_t offset;
    const char* data;
    size_t size;
    uint32_t crc;
    std::string name;
  };
  int fd_ = -1;
  uint64_t size_ = 0;
  std::unique_ptr<BackgroundFileHash> hash_;
  mutable std::vector<Deferred> deferred_;  // kept records whose CRC-32 the reader left to us
};

uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t le64(const uint8_t* p) {
  return static_cast<uint64_t>(le32(p)) | (static_cast<uint64_t>(le32(p + 4)) << 32);
}

// The central directory of a zip archive: name -> where the entry's data lies and its CRC.
// Only what PyTorch writes is supported: a single disk, stored (uncompressed) entries.
class ZipDirectory {
 public:
  struct Entry {
    uint64_t local_header_offset = 0;
    uint64_t size = 0;
    uint32_t crc = 0;
  };

  explicit ZipDirectory(const ByteSource& src) : src_(src) {
    uint64_t cd_offset = 0;
    uint64_t cd_size = 0;
    uint64_t count = 0;
    find_central_directory(&cd_offset, &cd_size, &count);
    if (cd_size > src.size() || count > cd_size / kCentralHeaderSize) {
      corrupt(src.name(),
              "zip central directory size " + std::to_string(cd_size) + " does not fit the file");
    }
    std::vector<uint8_t> cd(cd_size);
    src.read(cd_offset, cd.data(), cd.size());
    size_t pos = 0;
    for (uint64_t i = 0; i < count; ++i) parse_central_header(cd, &pos);
  }

  const std::string& first_name() const { return first_name_; }
  const Entry* find(const std::string& name) const {
    auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second;
  }

  // Reads the entry's data into out (entry.size bytes) and verifies its CRC-32. With `keep`, the
  // caller keeps `out` until the source is done (ByteSource::kept), which may take the CRC over.
  void read(const std::string& name, const Entry& e, void* out, bool keep = false) const {
    uint8_t local[kLocalHeaderSize];
    src_.read(e.local_header_offset, local, sizeof(local));
    if (le32(local) != 0x04034b50) corrupt(src_.name(), "bad zip local header for " + name);
    const uint16_t name_len = le16(local + 26);
    const uint16_t extra_len = le16(local + 28);
    std::string local_name(name_len, '\0');
    src_.read(e.local_header_offset + kLocalHeaderSize, local_name.data(), name_len);
    if (local_name != name) corrupt(src_.name(), "zip local header names " + local_name);
    const uint64_t data_offset = e.local_header_offset + kLocalHeaderSize + name_len + extra_len;
    src_.read(data_offset, out, e.size);
    if (keep && src_.kept(data_offset, out, e.size, e.crc, name)) return;
    if (crc32(out, e.size) != e.crc) corrupt(src_.name(), "CRC-32 mismatch in record " + name);
  }

 private:
  static constexpr size_t kEocdSize = 22;
  static constexpr size_t kZip64LocatorSize = 20;
  static constexpr size_t kZip64EocdSize = 56;
  static constexpr size_t kCentralHeaderSize = 46;
  static constexpr size_t kLocalHeaderSize = 30;

  void find_central_directory(uint64_t* cd_offset, uint64_t* cd_size, uint64_t* count) const {
    const uint64_t file_size = src_.size();
    if (file_size < kEocdSize) corrupt(src_.name(), "not a zip archive (too short)");
    // The end-of-central-directory record sits in the last 22 + 65535 (comment) bytes.
    const uint64_t tail_size = std::min<uint64_t>(file_size, kEocdSize + 0xFFFF);
    std::vector<uint8_t> tail(tail_size);
    src_.read(file_size - tail_size, tail.data(), tail.size());
    size_t eocd = tail_size - kEocdSize;
    while (le32(&tail[eocd]) != 0x06054b50) {
      if (eocd == 0) {
        corrupt(src_.name(), "not a zip archive (no end of central directory; truncated?)");
      }
      --eocd;
    }
    const uint8_t* e = &tail[eocd];
    if (le16(e + 4) != 0 || le16(e + 6) != 0) unsupported(src_.name(), "multi-disk zip archive");
    *count = le16(e + 10);
    *cd_size = le32(e + 12);
    *cd_offset = le32(e + 16);
    const uint64_t eocd_offset = file_size - tail_size + eocd;
    if (eocd_offset >= kZip64LocatorSize) {
      uint8_t locator[kZip64LocatorSize];
      src_.read(eocd_offset - kZip64LocatorSize, locator, sizeof(locator));
      if (le32(locator) == 0x07064b50) {
        uint8_t z[kZip64EocdSize];
        src_.read(le64(locator + 8), z, sizeof(z));
        if (le32(z) != 0x06064b50) corrupt(src_.name(), "bad zip64 end of central directory");
        *count = le64(z + 32);
        *cd_size = le64(z + 40);
        *cd_offset = le64(z + 48);
      }
    }
  }

  void parse_central_header(const std::vector<uint8_t>& cd, size_t* pos) {
    if (cd.size() - *pos < kCentralHeaderSize || le32(&cd[*pos]) != 0x02014b50) {
      corrupt(src_.name(), "bad zip central directory entry");
    }
    const uint8_t* h = &cd[*pos];
    const uint16_t flags = le16(h + 8);
    const uint16_t method = le16(h + 10);
    Entry e;
    e.crc = le32(h + 16);
    uint64_t compressed = le32(h + 20);
    e.size = le32(h + 24);
    const size_t name_len = le16(h + 28);
    const size_t extra_len = le16(h + 30);
    const size_t comment_len = le16(h + 32);
    e.local_header_offset = le32(h + 42);
    if (cd.size() - *pos - kCentralHeaderSize < name_len + extra_len + comment_len) {
      corrupt(src_.name(), "bad zip central directory entry");
    }
    std::string name(reinterpret_cast<const char*>(h + kCentralHeaderSize), name_len);
    // Zip64 extended information: the 64-bit values of the fields set to 0xFFFFFFFF, in order.
    const uint8_t* extra = h + kCentralHeaderSize + name_len;
    for (size_t x = 0; x + 4 <= extra_len;) {
      const uint16_t id = le16(extra + x);
      const uint16_t len = le16(extra + x + 2);
      if (x + 4 + len > extra_len) corrupt(src_.name(), "bad zip extra field for " + name);
      if (id == 0x0001) {
        const uint8_t* f = extra + x + 4;
        size_t left = len;
        auto take = [&](uint64_t* field) {
          if (*field != 0xFFFFFFFFu) return;
          if (left < 8) corrupt(src_.name(), "short zip64 extra field for " + name);
          *field = le64(f);
          f += 8;
          left -= 8;
        };
        take(&e.size);
        take(&compressed);
        take(&e.local_header_offset);
      }
      x += 4 + len;
    }
    *pos += kCentralHeaderSize + name_len + extra_len + comment_len;

    if (flags & 0x1) unsupported(src_.name(), "encrypted zip record " + name);
    if (method != 0 || compressed != e.size) {
      unsupported(src_.name(),
                  "compressed zip record " + name + " (method " + std::to_string(method) + ")");
    }
    if (e.local_header_offset > src_.size() || e.size > src_.size() - e.local_header_offset) {
      corrupt(src_.name(), "record " + name + " lies past the end of the file (truncated?)");
    }
    if (first_name_.empty() && entries_.empty()) first_name_ = name;
    if (!entries_.emplace(std::move(name), e).second) {
      corrupt(src_.name(), "duplicate zip record");
    }
  }

  const ByteSource& src_;
  std::string first_name_;
  std::unordered_map<std::string, Entry> entries_;
};

// ---------------------------------------------------------------------------------------------
// Reading: the pickle
// ---------------------------------------------------------------------------------------------

// Python's pickle machine for protocols 2 to 5 (what torch.save and the libtorch Pickler
// produce), building values only: a global it does not know is never imported, and calling it
// builds an opaque value (checkpoint_format.h, READING PYTHON OBJECTS). The opcodes it refuses
// are protocol 0's text forms and INST/OBJ, which no protocol-2+ pickler writes, EXT1/2/4 (they
// name globals through Python's copyreg registry) and NEXT_BUFFER/READONLY_BUFFER (out-of-band data
// torch.save never uses). libtorch's own torch::jit::Unpickler is not used: in 1.13 it cannot
// read a one-item dict (SETITEM) nor collections.OrderedDict with items, i.e. any Python
// state_dict.
class PickleReader {
 public:
  // Returns the storage with the given key and dtype, holding numel elements.
  using StorageLoader =
      std::function<c10::Storage(const std::string& key, c10::ScalarType dtype, int64_t numel)>;

  PickleReader(std::string_view pickle, StorageLoader load_storage, std::string name)
      : in_(pickle), load_storage_(std::move(load_storage)), name_(std::move(name)) {}

  c10::IValue parse() {
    while (true) {
      const size_t at = pos_;
      const uint8_t op = read_u8();
      if (op == '.') break;  // STOP
      step(op, at);
    }
    if (stack_.size() != 1 || !marks_.empty()) bad("pickle ends with a malformed stack");
    c10::IValue result = as_value(std::move(stack_.back()));
    refine_key_types(result, &reachable_, 0);  // also bounds the result's nesting
    parsed_ = true;
    return result;
  }

  // A pickle may build containers nested far deeper than kMaxNesting (lists appended into lists,
  // objects into objects, top down through the memo too), and destroying one takes a recursion
  // per level. So every container built is held in built_ until the reader is done (none is
  // destroyed while parsing, whatever the pickle drops), and then emptied one by one, unless the
  // result (of bounded depth) reaches it.
  ~PickleReader() {
    for (const c10::IValue& v : built_) {
      if (parsed_ && reachable_.count(v.internalToPointer()) > 0) continue;
      if (v.isList()) {
        v.toList().clear();
      } else if (v.isGenericDict()) {
        v.toGenericDict().clear();
      } else {
        c10::ivalue::Tuple& tuple = v.toTupleRef();
        for (size_t i = 0; i < tuple.size(); ++i) tuple.unsafeSetElement(i, c10::IValue());
      }
    }
  }
  PickleReader(const PickleReader&) = delete;
  PickleReader& operator=(const PickleReader&) = delete;

 private:
  enum class Global {
    kRebuildTensorV2,
    kRebuildParameter,
    kOrderedDict,
    kRestoreTypeTag,
    kBuildList,
    kStorageType,
    kCodecsEncode,  // _codecs.encode(str, "latin1"): how protocol 2 pickles bytes
    kBytes,         // builtins.bytes(): protocol 2's empty bytes
    kNumpyScalar,   // numpy.core.multiarray.scalar(dtype, bytes)
    kOpaque,        // anything else: called, it builds an opaque value
  };

  // A value on the pickle stack: an IValue, or one of the Python objects that only exist while
  // unpickling (a global, a storage, a tuple holding such things, as persistent ids do). An
  // opaque object (kObject) is its dict {"__pickled__": ..., "args": ...}, still to be completed
  // by BUILD, APPEND(S), SETITEM(S) or ADDITEMS; the value is a handle, so memo copies share it.
  struct Item {
    enum class Kind { kValue, kGlobal, kTuple, kStorage, kObject };
    Kind kind = Kind::kValue;
    c10::IValue value;  // kValue; kObject: the GenericDict
    std::string name;   // kGlobal: module.name (Python 3 module names)
    Global global = Global::kOrderedDict;
    c10::ScalarType dtype = c10::ScalarType::Undefined;  // kStorage; kGlobal kStorageType
    c10::Storage storage;                                // kStorage
    std::vector<Item> tuple;                             // kTuple
    int tuple_depth = 0;  // kTuple: nesting depth, bounded to bound as_value()'s recursion
  };

  Item value_item(c10::IValue v) const {
    track(v);
    Item it;
    it.value = std::move(v);
    return it;
  }

  // Holds the container `v` (a list, dict or tuple) until the reader is done; see the destructor.
  const c10::IValue& track(const c10::IValue& v) const {
    if (v.isList() || v.isGenericDict() || v.isTuple()) built_.push_back(v);
    return v;
  }

  [[noreturn]] void bad(const std::string& what) const {
    corrupt(name_, "data.pkl: " + what + " (at byte " + std::to_string(pos_) + ")");
  }

  uint8_t read_u8() {
    if (pos_ >= in_.size()) bad("pickle truncated");
    return static_cast<uint8_t>(in_[pos_++]);
  }
  const uint8_t* read_bytes(size_t n) {
    if (n > in_.size() - pos_) bad("pickle truncated");
    const auto* p = reinterpret_cast<const uint8_t*>(in_.data() + pos_);
    pos_ += n;
    return p;
  }
  std::string read_string(size_t n) {
    const uint8_t* p = read_bytes(n);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
  std::string read_line() {
    const size_t end = in_.find('\n', pos_);
    if (end == std::string_view::npos) bad("pickle truncated");
    std::string line(in_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return line;
  }

  Item pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) {
      bad("pickle stack underflow");
    }
    Item it = std::move(stack_.back());
    stack_.pop_back();
    return it;
  }
  Item& top() {
    if (stack_.empty()) bad("pickle stack underflow");
    return stack_.back();
  }
  // Pops everything above the last MARK, and the mark.
  std::vector<Item> pop_mark() {
    if (marks_.empty()) bad("pickle MARK missing");
    const size_t mark = marks_.back();
    marks_.pop_back();
    if (mark > stack_.size()) bad("pickle stack underflow");
    std::vector<Item> items(std::make_move_iterator(stack_.begin() + mark),
                            std::make_move_iterator(stack_.end()));
    stack_.resize(mark);
    return items;
  }

  c10::IValue as_value(Item&& it) const {
    switch (it.kind) {
      case Item::Kind::kValue:
        return std::move(it.value);
      case Item::Kind::kTuple: {
        std::vector<c10::IValue> elements;
        elements.reserve(it.tuple.size());
        for (auto& e : it.tuple) elements.push_back(as_value(std::move(e)));
        return track(c10::ivalue::Tuple::create(std::move(elements)));
      }
      case Item::Kind::kObject:
        return std::move(it.value);
      case Item::Kind::kGlobal: {  // a class or function as a value: {"__global__": name}
        c10::impl::GenericDict ref = string_keyed_dict();
        ref.insert("__global__", it.name);
        return track(ref);
      }
      case Item::Kind::kStorage:
        break;
    }
    bad("a storage is used as a value");
  }

  static c10::impl::GenericDict string_keyed_dict() {
    return c10::impl::GenericDict(c10::StringType::get(), c10::AnyType::get());
  }

  // An opaque object: {"__pickled__": name, "args": args}, completed by what follows.
  Item make_object(const std::string& name, c10::IValue args) const {
    track(args);
    c10::impl::GenericDict dict = string_keyed_dict();
    track(dict);
    dict.insert("__pickled__", name);
    dict.insert("args", std::move(args));
    Item it;
    it.kind = Item::Kind::kObject;
    it.value = std::move(dict);
    return it;
  }

  Item make_object_of(const std::string& name, std::vector<c10::IValue> args) const {
    return make_object(name, c10::ivalue::Tuple::create(std::move(args)));
  }

  static std::string object_name(const Item& obj) {
    return obj.value.toGenericDict().at("__pickled__").toStringRef();
  }

  // The list under `key` ("listitems", "dictitems") of an opaque object, added empty when absent.
  c10::impl::GenericList object_list(const Item& obj, const char* key) const {
    c10::impl::GenericDict dict = obj.value.toGenericDict();
    const auto found = dict.find(key);
    if (found != dict.end()) return found->value().toList();
    c10::impl::GenericList list(c10::AnyType::get());
    track(list);
    dict.insert(key, list);
    return list;
  }

  Item make_tuple(std::vector<Item> items) const {
    Item it;
    it.kind = Item::Kind::kTuple;
    for (const auto& e : items) it.tuple_depth = std::max(it.tuple_depth, e.tuple_depth);
    if (++it.tuple_depth > kMaxNesting)
      bad("tuples nested deeper than " + std::to_string(kMaxNesting));
    it.tuple = std::move(items);
    return it;
  }

  void push_int(int64_t v) { stack_.push_back(value_item(c10::IValue(v))); }

  // Little-endian two's complement integer of n bytes (LONG1 / LONG4).
  int64_t read_long(size_t n) {
    if (n > 8) bad("integer wider than 64 bits");
    const uint8_t* p = read_bytes(n);
    if (n == 0) return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
    if (n < 8 && (p[n - 1] & 0x80)) v |= ~uint64_t{0} << (8 * n);  // sign-extend
    return static_cast<int64_t>(v);
  }

  void memo_put(uint64_t index) { memo_[index] = top(); }
  void memo_get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) bad("pickle memo " + std::to_string(index) + " missing");
    stack_.push_back(it->second);
  }

  // A handle sharing the list that APPEND(S) to `it` extends: the list itself, or an opaque
  // object's "listitems".
  c10::impl::GenericList list_at(const Item& it) const {
    if (it.kind == Item::Kind::kObject) return object_list(it, "listitems");
    if (it.kind != Item::Kind::kValue || !it.value.isList()) bad("APPEND to a non-list");
    return it.value.toList();
  }

  void append_items(std::vector<Item>&& items) {
    Item& target = top();
    if (items.empty() && target.kind == Item::Kind::kObject) return;  // no empty "listitems"
    c10::impl::GenericList list = list_at(target);
    for (auto& it : items) list.push_back(as_value(std::move(it)));
  }

  // SETITEM(S) on an opaque object records (key, value) in its "dictitems", any key type.
  void set_item(Item& target, Item&& key, Item&& value) {
    if (target.kind == Item::Kind::kObject) {
      c10::IValue k = as_value(std::move(key));
      object_list(target, "dictitems")
          .push_back(track(c10::ivalue::Tuple::create(std::move(k), as_value(std::move(value)))));
      return;
    }
    if (target.kind != Item::Kind::kValue || !target.value.isGenericDict()) {
      bad("SETITEM on a non-dict");
    }
    c10::IValue k = as_value(std::move(key));
    if (!(k.isString() || k.isInt() || k.isBool() || k.isDouble())) {
      unsupported(name_, "data.pkl: dict key of type " + std::string(k.tagKind()));
    }
    target.value.toGenericDict().insert_or_assign(std::move(k), as_value(std::move(value)));
  }

  // Any global resolves: the few known ones to what they build, the rest (kOpaque) to opaque
  // values. Refused are only the torch globals that build tensors or storages this reader
  // cannot, since an opaque value in place of a tensor would fail far from the cause.
  Item resolve_global(const std::string& module_in, const std::string& name) const {
    // Protocol 2 writes Python 2's module names (pickle's _compat_pickle); name them as Python 3.
    const std::string module = module_in == "__builtin__" ? "builtins"
                               : module_in == "copy_reg"  ? "copyreg"
                                                          : module_in;
    Item it;
    it.kind = Item::Kind::kGlobal;
    it.name = module + "." + name;
    const bool torch_module = module == "torch" || module.rfind("torch.", 0) == 0;
    if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
      it.global = Global::kRebuildTensorV2;
    } else if (module == "torch._utils" &&
               (name == "_rebuild_parameter" || name == "_rebuild_parameter_with_state")) {
      it.global = Global::kRebuildParameter;
    } else if (module == "collections" && name == "OrderedDict") {
      it.global = Global::kOrderedDict;
    } else if (module == "torch.jit._pickle" && name == "restore_type_tag") {
      it.global = Global::kRestoreTypeTag;
    } else if (module == "torch.jit._pickle" &&
               (name == "build_intlist" || name == "build_doublelist" || name == "build_boollist" ||
                name == "build_tensorlist")) {
      it.global = Global::kBuildList;
    } else if (module == "torch" && storage_dtype(name, &it.dtype)) {
      it.global = Global::kStorageType;
    } else if (torch_module &&
               (name.rfind("_rebuild", 0) == 0 || name == "_load_from_bytes" ||
                (name.size() > 7 && name.compare(name.size() - 7, 7, "Storage") == 0))) {
      unsupported(name_, "data.pkl: unsupported pickled global " + it.name);
    } else if (module == "_codecs" && name == "encode") {
      it.global = Global::kCodecsEncode;
    } else if (module == "builtins" && name == "bytes") {
      it.global = Global::kBytes;
    } else if ((module == "numpy.core.multiarray" || module == "numpy._core.multiarray") &&
               name == "scalar") {
      it.global = Global::kNumpyScalar;
    } else {
      it.global = Global::kOpaque;
    }
    return it;
  }

  // _codecs.encode(text, "latin1"), protocol 2's bytes: the bytes, as a string (as BINBYTES).
  // Other encodings build an opaque value, as any call does.
  Item encoded_bytes(const Item& callable, std::vector<Item>& a) const {
    if (a.size() != 2 || a[0].kind != Item::Kind::kValue || !a[0].value.isString() ||
        a[1].kind != Item::Kind::kValue || !a[1].value.isString() ||
        (a[1].value.toStringRef() != "latin1" && a[1].value.toStringRef() != "latin-1")) {
      std::vector<c10::IValue> args;
      for (auto& e : a) args.push_back(as_value(std::move(e)));
      return make_object_of(callable.name, std::move(args));
    }
    const std::string& text = a[0].value.toStringRef();  // UTF-8; every code point <= 0xFF
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
      const auto c = static_cast<uint8_t>(text[i]);
      if (c < 0x80) {
        out.push_back(static_cast<char>(c));
      } else if ((c == 0xC2 || c == 0xC3) && i + 1 < text.size() &&
                 (static_cast<uint8_t>(text[i + 1]) & 0xC0) == 0x80) {
        out.push_back(static_cast<char>(((c & 0x03) << 6) | (text[++i] & 0x3F)));
      } else {
        bad("_codecs.encode of text that is not latin-1");
      }
    }
    return value_item(c10::IValue(std::move(out)));
  }

  // numpy.core.multiarray.scalar(dtype, data): a plain bool, int or double when the dtype is
  // numpy.dtype(("b1" | "i1" ... "i8" | "u1" ... "u8" | "f2" | "f4" | "f8"), ...) with a byte order
  // and `data` its bytes (a uint64 above INT64_MAX is not); false otherwise.
  static bool numpy_scalar(const std::vector<Item>& a, c10::IValue* out) {
    if (a.size() != 2 || a[0].kind != Item::Kind::kObject || a[1].kind != Item::Kind::kValue ||
        !a[1].value.isString()) {
      return false;
    }
    const c10::impl::GenericDict dtype = a[0].value.toGenericDict();
    if (dtype.at("__pickled__").toStringRef() != "numpy.dtype" || !dtype.contains("state")) {
      return false;
    }
    const c10::IValue& args = dtype.at("args");
    const c10::IValue& state = dtype.at("state");
    if (!args.isTuple() || args.toTupleRef().elements().empty() || !state.isTuple() ||
        state.toTupleRef().elements().size() < 2) {
      return false;
    }
    const c10::IValue& code_v = args.toTupleRef().elements()[0];
    const c10::IValue& order_v = state.toTupleRef().elements()[1];
    if (!code_v.isString() || !order_v.isString()) return false;
    const std::string& code = code_v.toStringRef();
    const std::string& order = order_v.toStringRef();
    std::string data = a[1].value.toStringRef();
    if (code.size() != 2 || code[1] < '1' || code[1] > '8' ||
        data.size() != static_cast<size_t>(code[1] - '0')) {
      return false;
    }
    if (order == ">") {
      std::reverse(data.begin(), data.end());
    } else if (order != "<" && order != "|" && order != "=") {
      return false;
    }
    uint64_t bits = 0;  // little-endian
    for (size_t i = 0; i < data.size(); ++i) {
      bits |= static_cast<uint64_t>(static_cast<uint8_t>(data[i])) << (8 * i);
    }
    const size_t n = data.size();
    switch (code[0]) {
      case 'b':
        if (n != 1) return false;
        *out = c10::IValue(bits != 0);
        return true;
      case 'i':
        if (n != 1 && n != 2 && n != 4 && n != 8) return false;
        if (n < 8 && (bits >> (8 * n - 1)) != 0) bits |= ~uint64_t{0} << (8 * n);  // sign
        *out = c10::IValue(static_cast<int64_t>(bits));
        return true;
      case 'u':
        if ((n != 1 && n != 2 && n != 4 && n != 8) || bits > uint64_t{INT64_MAX}) return false;
        *out = c10::IValue(static_cast<int64_t>(bits));
        return true;
      case 'f':
        if (n == 2) {
          *out = c10::IValue(static_cast<double>(
              static_cast<float>(c10::Half(static_cast<uint16_t>(bits), c10::Half::from_bits()))));
        } else if (n == 4) {
          float f = 0;
          const auto u = static_cast<uint32_t>(bits);
          std::memcpy(&f, &u, sizeof(f));
          *out = c10::IValue(static_cast<double>(f));
        } else if (n == 8) {
          double d = 0;
          std::memcpy(&d, &bits, sizeof(d));
          *out = c10::IValue(d);
        } else {
          return false;
        }
        return true;
      default:
        return false;
    }
  }

  // NEWOBJ(_EX): cls.__new__(cls, *args, **kwargs). OrderedDict() is an empty dict, as by REDUCE;
  // an unknown class is an opaque value ("kwargs" only when there are any); a known function is
  // no class.
  Item new_object(Item&& cls, Item&& args, c10::IValue kwargs) const {
    if (cls.kind != Item::Kind::kGlobal) bad("NEWOBJ of a non-class");
    if (args.kind != Item::Kind::kTuple) bad("NEWOBJ arguments are not a tuple");
    const bool no_kwargs = kwargs.isNone() || kwargs.toGenericDict().empty();
    if (cls.global == Global::kOrderedDict && args.tuple.empty() && no_kwargs) {
      return value_item(c10::impl::GenericDict(c10::AnyType::get(), c10::AnyType::get()));
    }
    switch (cls.global) {
      case Global::kCodecsEncode:
      case Global::kBytes:
      case Global::kNumpyScalar:
      case Global::kOpaque:
        break;
      default:
        bad("NEWOBJ of " + cls.name);
    }
    Item obj = make_object(cls.name, as_value(std::move(args)));
    if (!no_kwargs) obj.value.toGenericDict().insert("kwargs", std::move(kwargs));
    return obj;
  }

  static bool storage_dtype(const std::string& name, c10::ScalarType* dtype) {
    static const std::unordered_map<std::string, c10::ScalarType> kTypes = {
        {"FloatStorage", c10::ScalarType::Float},  {"DoubleStorage", c10::ScalarType::Double},
        {"HalfStorage", c10::ScalarType::Half},    {"BFloat16Storage", c10::ScalarType::BFloat16},
        {"LongStorage", c10::ScalarType::Long},    {"IntStorage", c10::ScalarType::Int},
        {"ShortStorage", c10::ScalarType::Short},  {"CharStorage", c10::ScalarType::Char},
        {"ByteStorage", c10::ScalarType::Byte},    {"BoolStorage", c10::ScalarType::Bool},
        {"UntypedStorage", c10::ScalarType::Byte},
    };
    auto it = kTypes.find(name);
    if (it == kTypes.end()) return false;
    *dtype = it->second;
    return true;
  }

  // BINPERSID: ('storage', torch.<Scalar>Storage, key, location, numel).
  Item persistent_load(Item&& pid) {
    if (pid.kind != Item::Kind::kTuple || pid.tuple.size() != 5) bad("unexpected persistent id");
    auto& t = pid.tuple;
    if (t[0].kind != Item::Kind::kValue || !t[0].value.isString() ||
        t[0].value.toStringRef() != "storage") {
      bad("unexpected persistent id");
    }
    if (t[1].kind != Item::Kind::kGlobal || t[1].global != Global::kStorageType) {
      bad("persistent id without a storage type");
    }
    if (t[2].kind != Item::Kind::kValue || !t[2].value.isString() ||
        t[4].kind != Item::Kind::kValue || !t[4].value.isInt() || t[4].value.toInt() < 0) {
      bad("malformed storage persistent id");
    }
    const std::string key = t[2].value.toStringRef();
    const c10::ScalarType dtype = t[1].dtype;
    auto cached = storages_.find(key);
    if (cached == storages_.end()) {
      cached =
          storages_
              .emplace(key, std::make_pair(load_storage_(key, dtype, t[4].value.toInt()), dtype))
              .first;
    } else if (cached->second.second != dtype) {
      bad("storage " + key + " used with two dtypes");
    }
    Item it;
    it.kind = Item::Kind::kStorage;
    it.storage = cached->second.first;
    it.dtype = dtype;
    return it;
  }

  std::vector<int64_t> int_tuple(Item& it, const char* what) const {
    std::vector<int64_t> out;
    if (it.kind == Item::Kind::kTuple) {
      for (auto& e : it.tuple) {
        if (e.kind != Item::Kind::kValue || !e.value.isInt()) break;
        out.push_back(e.value.toInt());
      }
      if (out.size() == it.tuple.size()) return out;
    }
    bad(std::string("tensor ") + what + " is not a tuple of ints");
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[,
  // metadata]): a view of the storage, checked to lie inside it.
  at::Tensor rebuild_tensor(std::vector<Item>& args) {
    if (args.size() < 6 || args[0].kind != Item::Kind::kStorage) bad("malformed tensor");
    const Item& storage = args[0];
    if (args[1].kind != Item::Kind::kValue || !args[1].value.isInt()) bad("malformed tensor");
    const int64_t offset = args[1].value.toInt();
    const std::vector<int64_t> sizes = int_tuple(args[2], "size");
    const std::vector<int64_t> strides = int_tuple(args[3], "stride");
    if (args[4].kind != Item::Kind::kValue || !args[4].value.isBool()) bad("malformed tensor");
    const bool requires_grad = args[4].value.toBool();
    if (sizes.size() != strides.size() || offset < 0) bad("malformed tensor geometry");

    const int64_t element_size = static_cast<int64_t>(c10::elementSize(storage.dtype));
    const int64_t storage_numel = static_cast<int64_t>(storage.storage.nbytes()) / element_size;
    int64_t numel = 1;
    int64_t last = offset;  // index of the last element
    for (size_t d = 0; d < sizes.size(); ++d) {
      int64_t span = 0;
      if (sizes[d] < 0 || strides[d] < 0 || __builtin_mul_overflow(numel, sizes[d], &numel) ||
          (sizes[d] > 0 && (__builtin_mul_overflow(sizes[d] - 1, strides[d], &span) ||
                            __builtin_add_overflow(last, span, &last)))) {
        bad("malformed tensor geometry");
      }
    }
    if (numel > 0 && last >= storage_numel) {
      bad("tensor reaches element " + std::to_string(last) + " of a storage of " +
          std::to_string(storage_numel));
    }
    c10::Storage s = storage.storage;
    at::Tensor t = at::detail::make_tensor<c10::TensorImpl>(
        std::move(s), c10::DispatchKeySet(c10::DispatchKey::CPU),
        caffe2::TypeMeta::fromScalarType(storage.dtype));
    t.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides, offset);
    if (requires_grad) t.set_requires_grad(true);
    return t;
  }

  // REDUCE: callable(*args). The known globals build their values; a call of any other global
  // builds the opaque value {"__pickled__": "module.name", "args": args}.
  void reduce() {
    Item args = pop();
    Item callable = pop();
    if (callable.kind != Item::Kind::kGlobal) bad("REDUCE of a non-callable");
    if (args.kind != Item::Kind::kTuple) bad("REDUCE arguments are not a tuple");
    std::vector<Item>& a = args.tuple;
    switch (callable.global) {
      case Global::kRebuildTensorV2:
        stack_.push_back(value_item(rebuild_tensor(a)));
        return;
      case Global::kRebuildParameter: {  // (data, requires_grad, backward_hooks[, state])
        if (a.size() < 2 || a[0].kind != Item::Kind::kValue || !a[0].value.isTensor() ||
            a[1].kind != Item::Kind::kValue || !a[1].value.isBool()) {
          bad("malformed parameter");
        }
        at::Tensor t = a[0].value.toTensor();
        if (a[1].value.toBool() && !t.requires_grad()) t.set_requires_grad(true);
        stack_.push_back(value_item(std::move(t)));
        return;
      }
      case Global::kOrderedDict:
        if (!a.empty()) unsupported(name_, "data.pkl: OrderedDict built from arguments");
        stack_.push_back(
            value_item(c10::impl::GenericDict(c10::AnyType::get(), c10::AnyType::get())));
        return;
      case Global::kRestoreTypeTag:  // (value, type string): the value, untyped
      case Global::kBuildList:       // (list,)
        if (a.empty()) bad("malformed torch.jit._pickle call");
        stack_.push_back(std::move(a[0]));
        return;
      case Global::kStorageType:
        bad("REDUCE of a storage type");
      case Global::kCodecsEncode:
        stack_.push_back(encoded_bytes(callable, a));
        return;
      case Global::kBytes:  // bytes(): b""
        if (a.empty()) {
          stack_.push_back(value_item(c10::IValue(std::string())));
          return;
        }
        break;
      case Global::kNumpyScalar: {
        c10::IValue scalar;
        if (numpy_scalar(a, &scalar)) {
          stack_.push_back(value_item(std::move(scalar)));
          return;
        }
        break;
      }
      case Global::kOpaque:
        break;
    }
    stack_.push_back(make_object(callable.name, as_value(std::move(args))));
  }

  void step(uint8_t op, size_t at) {
    switch (op) {
      case 0x80:  // PROTO
        if (read_u8() > 5) unsupported(name_, "data.pkl: pickle protocol above 5");
        return;
      case 0x95:  // FRAME
        read_bytes(8);
        return;
      case '(':  // MARK
        marks_.push_back(stack_.size());
        return;
      case '0':  // POP
        pop();
        return;
      case '1':  // POP_MARK
        pop_mark();
        return;
      case '2':  // DUP
        stack_.push_back(top());
        return;
      case 'N':  // NONE
        stack_.push_back(value_item(c10::IValue()));
        return;
      case 0x88:  // NEWTRUE
        stack_.push_back(value_item(c10::IValue(true)));
        return;
      case 0x89:  // NEWFALSE
        stack_.push_back(value_item(c10::IValue(false)));
        return;
      case 'J':  // BININT
        push_int(static_cast<int32_t>(le32(read_bytes(4))));
        return;
      case 'K':  // BININT1
        push_int(read_u8());
        return;
      case 'M':  // BININT2
        push_int(le16(read_bytes(2)));
        return;
      case 0x8a:  // LONG1
        push_int(read_long(read_u8()));
        return;
      case 0x8b: {  // LONG4
        const uint32_t n = le32(read_bytes(4));
        push_int(read_long(n));
        return;
      }
      case 'G': {  // BINFLOAT, big-endian
        const uint8_t* p = read_bytes(8);
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | p[i];
        double d = 0;
        std::memcpy(&d, &bits, sizeof(d));
        stack_.push_back(value_item(c10::IValue(d)));
        return;
      }
      case 'X':  // BINUNICODE
      case 'B':  // BINBYTES
        stack_.push_back(value_item(c10::IValue(read_string(le32(read_bytes(4))))));
        return;
      case 'T': {  // BINSTRING (signed length)
        const int32_t n = static_cast<int32_t>(le32(read_bytes(4)));
        if (n < 0) bad("negative string length");
        stack_.push_back(value_item(c10::IValue(read_string(static_cast<size_t>(n)))));
        return;
      }
      case 0x8c:  // SHORT_BINUNICODE
      case 'U':   // SHORT_BINSTRING
      case 'C':   // SHORT_BINBYTES
        stack_.push_back(value_item(c10::IValue(read_string(read_u8()))));
        return;
      case 0x8d:    // BINUNICODE8
      case 0x8e: {  // BINBYTES8
        const uint64_t n = le64(read_bytes(8));
        if (n > in_.size()) bad("pickle truncated");
        stack_.push_back(value_item(c10::IValue(read_string(static_cast<size_t>(n)))));
        return;
      }
      case ')':  // EMPTY_TUPLE
        stack_.push_back(make_tuple({}));
        return;
      case 't':  // TUPLE
        stack_.push_back(make_tuple(pop_mark()));
        return;
      case 0x85:    // TUPLE1
      case 0x86:    // TUPLE2
      case 0x87: {  // TUPLE3
        const size_t n = op - 0x84;
        if (stack_.size() < n) bad("pickle stack underflow");
        std::vector<Item> items(n);
        for (size_t i = n; i-- > 0;) items[i] = pop();
        stack_.push_back(make_tuple(std::move(items)));
        return;
      }
      case ']':  // EMPTY_LIST
        stack_.push_back(value_item(c10::impl::GenericList(c10::AnyType::get())));
        return;
      case 'l': {  // LIST
        std::vector<Item> items = pop_mark();
        c10::impl::GenericList list(c10::AnyType::get());
        for (auto& it : items) list.push_back(as_value(std::move(it)));
        stack_.push_back(value_item(std::move(list)));
        return;
      }
      case 'a': {  // APPEND
        std::vector<Item> items;
        items.push_back(pop());
        append_items(std::move(items));
        return;
      }
      case 'e':  // APPENDS
        append_items(pop_mark());
        return;
      case '}':  // EMPTY_DICT
        stack_.push_back(
            value_item(c10::impl::GenericDict(c10::AnyType::get(), c10::AnyType::get())));
        return;
      case 'd': {  // DICT
        std::vector<Item> items = pop_mark();
        if (items.size() % 2 != 0) bad("DICT with an odd number of items");
        Item dict = value_item(c10::impl::GenericDict(c10::AnyType::get(), c10::AnyType::get()));
        for (size_t i = 0; i < items.size(); i += 2) {
          set_item(dict, std::move(items[i]), std::move(items[i + 1]));
        }
        stack_.push_back(std::move(dict));
        return;
      }
      case 's': {  // SETITEM
        Item v = pop();
        Item k = pop();
        set_item(top(), std::move(k), std::move(v));
        return;
      }
      case 'u': {  // SETITEMS
        std::vector<Item> items = pop_mark();
        if (items.size() % 2 != 0) bad("SETITEMS with an odd number of items");
        Item& dict = top();
        for (size_t i = 0; i < items.size(); i += 2) {
          set_item(dict, std::move(items[i]), std::move(items[i + 1]));
        }
        return;
      }
      case 'q':  // BINPUT
        memo_put(read_u8());
        return;
      case 'r':  // LONG_BINPUT
        memo_put(le32(read_bytes(4)));
        return;
      case 0x94:  // MEMOIZE
        memo_put(memo_.size());
        return;
      case 'h':  // BINGET
        memo_get(read_u8());
        return;
      case 'j':  // LONG_BINGET
        memo_get(le32(read_bytes(4)));
        return;
      case 'c': {  // GLOBAL
        std::string module = read_line();
        std::string name = read_line();
        stack_.push_back(resolve_global(module, name));
        return;
      }
      case 0x93: {  // STACK_GLOBAL
        c10::IValue name = as_value(pop());
        c10::IValue module = as_value(pop());
        if (!name.isString() || !module.isString()) bad("STACK_GLOBAL of non-strings");
        stack_.push_back(resolve_global(module.toStringRef(), name.toStringRef()));
        return;
      }
      case 'R':  // REDUCE
        reduce();
        return;
      case 'b': {  // BUILD: an opaque object's "state"; a dict's (a state_dict's _metadata) dropped
        Item state = pop();
        Item& obj = top();
        if (obj.kind == Item::Kind::kObject) {
          obj.value.toGenericDict().insert_or_assign("state", as_value(std::move(state)));
          return;
        }
        if (obj.kind != Item::Kind::kValue || !obj.value.isGenericDict()) {
          unsupported(name_, "data.pkl: BUILD of an object other than a dict");
        }
        return;
      }
      case 0x81: {  // NEWOBJ
        Item args = pop();
        Item cls = pop();
        stack_.push_back(new_object(std::move(cls), std::move(args), c10::IValue()));
        return;
      }
      case 0x92: {  // NEWOBJ_EX
        c10::IValue kwargs = as_value(pop());
        Item args = pop();
        Item cls = pop();
        if (!kwargs.isGenericDict()) bad("NEWOBJ_EX keyword arguments are not a dict");
        stack_.push_back(new_object(std::move(cls), std::move(args), std::move(kwargs)));
        return;
      }
      case 0x8f:  // EMPTY_SET
        stack_.push_back(
            make_object_of("builtins.set", {track(c10::impl::GenericList(c10::AnyType::get()))}));
        return;
      case 0x90: {  // ADDITEMS
        std::vector<Item> items = pop_mark();
        Item& set = top();
        if (set.kind != Item::Kind::kObject || object_name(set) != "builtins.set") {
          bad("ADDITEMS to a non-set");
        }
        const c10::IValue& args = set.value.toGenericDict().at("args");
        if (!args.isTuple() || args.toTupleRef().elements().size() != 1 ||
            !args.toTupleRef().elements()[0].isList()) {
          bad("ADDITEMS to a malformed set");
        }
        c10::impl::GenericList list = args.toTupleRef().elements()[0].toList();
        for (auto& it : items) list.push_back(as_value(std::move(it)));
        return;
      }
      case 0x91: {  // FROZENSET
        std::vector<Item> items = pop_mark();
        c10::impl::GenericList list(c10::AnyType::get());
        track(list);
        for (auto& it : items) list.push_back(as_value(std::move(it)));
        stack_.push_back(make_object_of("builtins.frozenset", {std::move(list)}));
        return;
      }
      case 0x96: {  // BYTEARRAY8: bytearray(bytes), as protocols 3 and 4 pickle it
        const uint64_t n = le64(read_bytes(8));
        if (n > in_.size()) bad("pickle truncated");
        stack_.push_back(make_object_of("builtins.bytearray",
                                        {c10::IValue(read_string(static_cast<size_t>(n)))}));
        return;
      }
      case 'Q':  // BINPERSID
        stack_.push_back(persistent_load(pop()));
        return;
      default:
        pos_ = at;
        unsupported(name_, "data.pkl: unsupported pickle opcode 0x" + hex(op) + " at byte " +
                               std::to_string(at));
    }
  }

  static std::string hex(uint8_t v) {
    static constexpr char kDigits[] = "0123456789abcdef";
    return {kDigits[v >> 4], kDigits[v & 0xF]};
  }

  // Python dicts are untyped; give a dict the String or Int key type when all its keys have it,
  // so that callers can use c10::impl::toTypedDict and the checkpoint writes back identically.
  void refine_key_types(const c10::IValue& v, std::unordered_set<const void*>* seen,
                        int depth) const {
    if (depth > kMaxNesting) bad("nesting deeper than " + std::to_string(kMaxNesting));
    if (!(v.isGenericDict() || v.isList() || v.isTuple())) return;
    if (!seen->insert(v.internalToPointer()).second) return;
    if (v.isGenericDict()) {
      c10::impl::GenericDict dict = v.toGenericDict();
      bool all_str = true;
      bool all_int = true;
      for (const auto& entry : dict) {
        all_str = all_str && entry.key().isString();
        all_int = all_int && entry.key().isInt();
        refine_key_types(entry.value(), seen, depth + 1);
      }
      if (!dict.empty() && all_str) dict.unsafeSetKeyType(c10::StringType::get());
      if (!dict.empty() && all_int) dict.unsafeSetKeyType(c10::IntType::get());
    } else if (v.isList()) {
      for (const c10::IValue& e : v.toListRef()) refine_key_types(e, seen, depth + 1);
    } else {
      for (const c10::IValue& e : v.toTupleRef().elements()) refine_key_types(e, seen, depth + 1);
    }
  }

  std::string_view in_;
  size_t pos_ = 0;
  StorageLoader load_storage_;
  std::string name_;
  std::vector<Item> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Item> memo_;
  std::unordered_map<std::string, std::pair<c10::Storage, c10::ScalarType>> storages_;
  mutable std::vector<c10::IValue> built_;     // every container built; see the destructor
  std::unordered_set<const void*> reachable_;  // the containers the result reaches
  bool parsed_ = false;                        // the result is handed out
};

// `finish` runs once everything is read, while what the source was told to keep is still alive.
c10::IValue read_from(const ByteSource& src, const std::function<void()>& finish = nullptr) {
  const ZipDirectory zip(src);
  const std::string& first = zip.first_name();
  const size_t slash = first.find('/');
  if (slash == std::string::npos || slash == 0) {
    corrupt(src.name(), "not a PyTorch archive (first record " + first + ")");
  }
  const std::string prefix = first.substr(0, slash + 1);

  if (const auto* byteorder = zip.find(prefix + "byteorder")) {
    std::string order(byteorder->size, '\0');
    zip.read(prefix + "byteorder", *byteorder, order.data());
    if (order != "little") unsupported(src.name(), "byte order " + order);
  }
  const auto* pkl = zip.find(prefix + "data.pkl");
  if (pkl == nullptr) corrupt(src.name(), "not a PyTorch archive (no " + prefix + "data.pkl)");
  std::string pickle(pkl->size, '\0');
  // What the source was told to keep (ByteSource::kept) lives until it is done with it: the
  // guard, declared after, tells it to stop first when this function unwinds.
  std::vector<c10::Storage> kept_storages;
  struct AbandonOnUnwind {
    const ByteSource& src;
    bool finished = false;
    ~AbandonOnUnwind() {
      if (!finished) src.abandon();
    }
  } guard{src};
  zip.read(prefix + "data.pkl", *pkl, pickle.data(), /*keep=*/true);

  auto load_storage = [&](const std::string& key, c10::ScalarType dtype, int64_t numel) {
    const std::string record = prefix + "data/" + key;
    const auto* entry = zip.find(record);
    if (entry == nullptr) corrupt(src.name(), "record " + record + " missing");
    const uint64_t element_size = c10::elementSize(dtype);
    if (static_cast<uint64_t>(numel) > entry->size / element_size ||
        static_cast<uint64_t>(numel) * element_size != entry->size) {
      corrupt(src.name(), "record " + record + " holds " + std::to_string(entry->size) +
                              " bytes, not " + std::to_string(numel) + " elements of " +
                              std::to_string(element_size));
    }
    c10::Storage storage;
    try {
      storage = c10::Storage(c10::Storage::use_byte_size_t(), static_cast<int64_t>(entry->size),
                             c10::GetCPUAllocator(), /*resizable=*/false);
    } catch (const c10::Error& e) {  // out of memory: not the file's fault
      throw_error(ErrorCode::kIOError, "checkpoint " + src.name() + ": allocating " + record +
                                           ": " + e.what_without_backtrace());
    }
    zip.read(record, *entry, storage.data(), /*keep=*/true);
    kept_storages.push_back(storage);
    return storage;
  };
  c10::IValue result;
  try {
    result = PickleReader(pickle, load_storage, src.name()).parse();
  } catch (const c10::Error& e) {
    corrupt(src.name(), std::string("data.pkl: ") + e.what_without_backtrace());
  }
  if (finish) finish();
  guard.finished = true;
  return result;
}

}  // namespace

c10::IValue read_checkpoint(const std::string& path) { return read_from(FileSource(path)); }

VerifiedCheckpoint read_checkpoint_verified(const std::string& path,
                                            const std::string& expected_sha256) {
  VerifiedCheckpoint out;
  const FileSource src(path, /*hash=*/true);
  out.bytes = src.size();
  c10::IValue value = read_from(src, [&] { out.sha256 = src.finish_hash(); });
  out.matches = out.sha256 == expected_sha256;
  // The CRC-32s of the records hashed in place were left to the digest: a load that does not
  // match it is never handed out.
  if (out.matches) out.value = std::move(value);
  return out;
}

c10::IValue read_checkpoint_bytes(std::string_view bytes, const std::string& name) {
  return read_from(MemorySource(bytes, name));
}

}  // namespace ckptledger
