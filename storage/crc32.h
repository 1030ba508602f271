// CRC-32 as zip and zlib's crc32() compute it (IEEE 802.3: reflected polynomial 0xEDB88320,
// initial value and final xor 0xFFFFFFFF). Every zip record of a checkpoint carries one, so it is
// computed over every byte written and verified over every byte read.
//
// crc32_update is ISA-L's crc32_gzip_refl (libisal: it picks the CPU's fastest folding code at
// run time, VPCLMULQDQ where there is one): measured 5-8x our own former PCLMUL folding on this
// machine (bench/library_bench, docs/dependencies.md), so the library does it. The slice-by-8
// table version is kept as the reference tests compare with. Torch-free: part of
// ckptledger::storage.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ckptledger {

// Extends `crc` (the CRC-32 of earlier bytes; 0 for none, as zlib's crc32(0, ...)) over the n
// bytes at data: crc32_update(crc32_update(0, a), b) is the CRC-32 of a followed by b.
uint32_t crc32_update(uint32_t crc, const void* data, size_t n);

// The CRC-32 of the n bytes at data.
inline uint32_t crc32(const void* data, size_t n) { return crc32_update(0, data, n); }

// The same function with tables only (slice-by-8, ~2-3 GB/s): the reference that tests and
// benchmarks compare crc32_update with.
uint32_t crc32_update_portable(uint32_t crc, const void* data, size_t n);

// Which implementation crc32_update uses: "isa-l" (benchmarks, logs).
const char* crc32_implementation();

}  // namespace ckptledger
