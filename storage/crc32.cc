// CRC-32 (zip, zlib): ISA-L's crc32_gzip_refl, and slice-by-8 tables as the reference. See crc32.h.
#include "storage/crc32.h"

#include <isa-l/crc.h>

#include <cstring>

namespace ckptledger {
namespace {

// ---- slice-by-8 tables ----------------------------------------------------------------------

struct Crc32Tables {
  uint32_t t[8][256];
};

constexpr Crc32Tables make_crc32_tables() {
  Crc32Tables tables{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    tables.t[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i) {
    for (int s = 1; s < 8; ++s) {
      const uint32_t prev = tables.t[s - 1][i];
      tables.t[s][i] = (prev >> 8) ^ tables.t[0][prev & 0xFF];
    }
  }
  return tables;
}

constexpr Crc32Tables kCrc32 = make_crc32_tables();

// Advances the raw register (no initial or final inversion) over n bytes.
uint32_t crc32_tables(uint32_t crc, const uint8_t* p, size_t n) {
  const auto& t = kCrc32.t;
  while (n >= 8) {
    // Little-endian loads; ckptledger only builds for little-endian hosts.
    uint32_t lo = 0;
    uint32_t hi = 0;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= crc;
    crc = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^
          t[3][hi & 0xFF] ^ t[2][(hi >> 8) & 0xFF] ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
  return crc;
}

}  // namespace

uint32_t crc32_update_portable(uint32_t crc, const void* data, size_t n) {
  return ~crc32_tables(~crc, static_cast<const uint8_t*>(data), n);
}

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  // crc32_gzip_refl takes and returns the finished CRC (initial/final inversion inside), as zlib.
  return crc32_gzip_refl(crc, static_cast<const unsigned char*>(data), n);
}

const char* crc32_implementation() { return "isa-l"; }

}  // namespace ckptledger
