#include "storage/zip_writer.h"

#include <algorithm>

#include "storage/crc32.h"

namespace ckptledger {
namespace {

constexpr uint64_t kMax32 = 0xFFFFFFFFu;
constexpr size_t kLocalHeader = 30;
constexpr size_t kAlignment = 64;  // record data starts at a multiple of this (mmap-friendly)
constexpr char kArchive[] = "archive/";

void put16(std::string& s, uint16_t v) {
  s.push_back(static_cast<char>(v & 0xFF));
  s.push_back(static_cast<char>(v >> 8));
}
void put32(std::string& s, uint32_t v) {
  put16(s, static_cast<uint16_t>(v & 0xFFFF));
  put16(s, static_cast<uint16_t>(v >> 16));
}
void put64(std::string& s, uint64_t v) {
  put32(s, static_cast<uint32_t>(v & 0xFFFFFFFFu));
  put32(s, static_cast<uint32_t>(v >> 32));
}

// The zip64 extended information field of a record: its sizes when the record reaches 4 GiB, its
// offset when it starts past 4 GiB; empty when neither (miniz writes the local field before the
// data, with a compressed size of 0, and the central one with the final sizes).
std::string zip64_field(uint64_t size, uint64_t compressed, uint64_t offset) {
  const bool big = size >= kMax32;
  const bool far = offset >= kMax32;
  std::string f;
  if (!big && !far) return f;
  put16(f, 0x0001);
  put16(f, static_cast<uint16_t>((big ? 16 : 0) + (far ? 8 : 0)));
  if (big) {
    put64(f, size);
    put64(f, compressed);
  }
  if (far) put64(f, offset);
  return f;
}

}  // namespace

void ZipStreamWriter::emit(const void* data, size_t size) {
  sink_(data, size);
  offset_ += size;
}

void ZipStreamWriter::record(const std::string& name, const void* data, size_t size) {
  const std::string full = kArchive + name;
  const uint64_t offset = offset_;
  const std::string zip64 = zip64_field(size, /*compressed=*/0, offset);
  const size_t start = offset + kLocalHeader + full.size() + 4 + zip64.size();
  const size_t padding = (kAlignment - start % kAlignment) % kAlignment;
  const uint16_t flags = size > 0 ? 0x0808 : 0x0800;
  std::string head;
  head.reserve(kLocalHeader + full.size() + zip64.size() + 4 + padding);
  put32(head, 0x04034b50);
  put16(head, 0);  // version needed
  put16(head, flags);
  put16(head, 0);  // stored
  put32(head, 0);  // DOS time and date
  put32(head, 0);  // crc, sizes: in the data descriptor
  put32(head, 0);
  put32(head, 0);
  put16(head, static_cast<uint16_t>(full.size()));
  put16(head, static_cast<uint16_t>(zip64.size() + 4 + padding));
  head += full;
  head += zip64;
  head += "FB";
  put16(head, static_cast<uint16_t>(padding));
  head.append(padding, 'Z');
  emit(head.data(), head.size());
  if (size > 0) emit(data, size);
  const uint32_t crc = size > 0 ? crc32(data, size) : 0;
  if (size > 0) {
    std::string desc;
    put32(desc, 0x08074b50);
    put32(desc, crc);
    if (!zip64.empty()) {
      put64(desc, size);
      put64(desc, size);
    } else {
      put32(desc, static_cast<uint32_t>(size));
      put32(desc, static_cast<uint32_t>(size));
    }
    emit(desc.data(), desc.size());
  }
  // Central directory entry; its zip64 field holds the final sizes.
  const std::string cz64 = zip64_field(size, size, offset);
  std::string& c = central_;
  put32(c, 0x02014b50);
  put16(c, 0);  // version made by
  put16(c, 0);  // version needed
  put16(c, flags);
  put16(c, 0);  // stored
  put32(c, 0);  // DOS time and date
  put32(c, crc);
  put32(c, static_cast<uint32_t>(std::min<uint64_t>(size, kMax32)));
  put32(c, static_cast<uint32_t>(std::min<uint64_t>(size, kMax32)));
  put16(c, static_cast<uint16_t>(full.size()));
  put16(c, static_cast<uint16_t>(cz64.size()));
  put16(c, 0);  // comment
  put16(c, 0);  // disk
  put16(c, 0);  // internal attributes
  put32(c, 0);  // external attributes
  put32(c, static_cast<uint32_t>(std::min<uint64_t>(offset, kMax32)));
  c += full;
  c += cz64;
  ++entries_;
}

void ZipStreamWriter::finish() {
  static constexpr char kVersion[] = "3\n";
  record("version", kVersion, sizeof(kVersion) - 1);
  const uint64_t dir_offset = offset_;
  const uint64_t dir_size = central_.size();
  emit(central_.data(), central_.size());
  const uint64_t end64_offset = offset_;
  std::string end;
  put32(end, 0x06064b50);  // zip64 end of central directory record
  put64(end, 44);
  put16(end, 0x031E);
  put16(end, 0x002D);
  put32(end, 0);
  put32(end, 0);
  put64(end, entries_);
  put64(end, entries_);
  put64(end, dir_size);
  put64(end, dir_offset);
  put32(end, 0x07064b50);  // zip64 end of central directory locator
  put32(end, 0);
  put64(end, end64_offset);
  put32(end, 1);
  put32(end, 0x06054b50);  // end of central directory record
  put16(end, 0);
  put16(end, 0);
  put16(end, static_cast<uint16_t>(std::min<uint64_t>(entries_, 0xFFFF)));
  put16(end, static_cast<uint16_t>(std::min<uint64_t>(entries_, 0xFFFF)));
  put32(end, static_cast<uint32_t>(std::min<uint64_t>(dir_size, kMax32)));
  put32(end, static_cast<uint32_t>(std::min<uint64_t>(dir_offset, kMax32)));
  put16(end, 0);
  emit(end.data(), end.size());
}

}  // namespace ckptledger
