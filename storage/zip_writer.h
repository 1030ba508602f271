// ZipStreamWriter: the zip archive of a checkpoint, streamed to a sink.
//
// The zip layout PyTorchStreamWriter (libtorch 1.13: miniz 2.1.0 in zip64 mode) writes, byte for
// byte, streamed to the sink: each record is a local header (crc and sizes 0, flags "data
// descriptor follows" and UTF-8, DOS time 0), its name, a zip64 extra field when the record or
// its offset reaches 4 GiB, an "FB" padding field that puts the data at a multiple of 64, the
// data, and a data descriptor (crc, sizes; 64-bit sizes with the zip64 field); then the central
// directory, the zip64 end record and locator, and the end record (counts capped at 16/32 bits).
// Writing it ourselves lets the CRC-32 use storage/crc32.h (~4x miniz's) and lets a sink's
// exception simply propagate. checkpoint_format_test checks the bytes against libtorch's writer,
// zip64 records and offsets included. Torch-free: part of ckptledger::files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace ckptledger {

// Receives the archive as consecutive chunks; may throw to abort (the exception propagates).
// A record's data reaches it as one chunk, straight from the caller's memory.
using ZipSink = std::function<void(const void* data, size_t size)>;

class ZipStreamWriter {
 public:
  explicit ZipStreamWriter(const ZipSink& sink) : sink_(sink) {}
  ZipStreamWriter(const ZipStreamWriter&) = delete;
  ZipStreamWriter& operator=(const ZipStreamWriter&) = delete;

  // Appends the record "archive/<name>" holding `size` bytes at `data`.
  void record(const std::string& name, const void* data, size_t size);
  // Appends the "version" record ("3\n"), the central directory and the end records.
  void finish();
  // Bytes handed to the sink so far.
  uint64_t bytes() const { return offset_; }

 private:
  void emit(const void* data, size_t size);

  const ZipSink& sink_;
  uint64_t offset_ = 0;
  uint64_t entries_ = 0;
  std::string central_;
};

}  // namespace ckptledger
