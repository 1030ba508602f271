// CRC-32 (zip, zlib): PCLMULQDQ folding on x86-64, slice-by-8 tables elsewhere. See crc32.h.
#include "storage/crc32.h"

#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

#if defined(__x86_64__)

// ---- PCLMULQDQ folding ----------------------------------------------------------------------
// Constants for the bit-reflected polynomial, as in the Intel paper, Linux's
// arch/x86/crypto/crc32-pclmul_asm.S and Chromium's zlib (crc32_simd.c): x^k mod P(x), reflected
// and shifted left by one bit. In the low/high 64-bit lanes of each vector:
//   fold4:   R1 = x^(4*128+32) mod P, R2 = x^(4*128-32) mod P  (fold 64 bytes ahead)
//   fold1:   R3 = x^(128+32) mod P,   R4 = x^(128-32) mod P    (fold 16 bytes ahead)
//   fold32:  R5 = x^64 mod P                                   (fold 64 bits to 32)
//   barrett: P(x) = 0x1DB710641 and mu = floor(x^64 / P(x)) = 0x1F7011641 (both reflected).

// Folds x 128 bits ahead onto next: x.lo * k.lo ^ x.hi * k.hi ^ next.
__attribute__((target("pclmul,sse4.1"))) inline __m128i fold16(__m128i x, __m128i k, __m128i next) {
  const __m128i lo = _mm_clmulepi64_si128(x, k, 0x00);
  const __m128i hi = _mm_clmulepi64_si128(x, k, 0x11);
  return _mm_xor_si128(_mm_xor_si128(lo, hi), next);
}

// Advances the raw register over n bytes; n >= 64 and a multiple of 16.
__attribute__((target("pclmul,sse4.1"))) uint32_t crc32_pclmul(uint32_t crc, const uint8_t* p,
                                                               size_t n) {
  const __m128i fold4 = _mm_set_epi64x(0x1c6e41596, 0x154442bd4);
  const __m128i fold1 = _mm_set_epi64x(0x0ccaa009e, 0x1751997d0);
  const __m128i fold32 = _mm_set_epi64x(0, 0x163cd6124);
  const __m128i barrett = _mm_set_epi64x(0x1F7011641, 0x1DB710641);
  const __m128i mask32 = _mm_setr_epi32(~0, 0, ~0, 0);

  // Four 128-bit accumulators, the register folded into the first.
  __m128i x1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 0x00));
  __m128i x2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 0x10));
  __m128i x3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 0x20));
  __m128i x4 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 0x30));
  x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128(static_cast<int>(crc)));
  p += 64;
  n -= 64;

  // Each accumulator A becomes A.lo * R1 ^ A.hi * R2 ^ (the next 16 bytes 64 bytes on).
  while (n >= 64) {
    const __m128i y1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 0x00));
    const __m128i y2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 0x10));
    const __m128i y3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 0x20));
    const __m128i y4 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 0x30));
    x1 = fold16(x1, fold4, y1);
    x2 = fold16(x2, fold4, y2);
    x3 = fold16(x3, fold4, y3);
    x4 = fold16(x4, fold4, y4);
    p += 64;
    n -= 64;
  }

  // Fold the four accumulators, then any remaining 16-byte blocks, into one (16 bytes on each).
  x1 = fold16(x1, fold1, x2);
  x1 = fold16(x1, fold1, x3);
  x1 = fold16(x1, fold1, x4);
  while (n >= 16) {
    x1 = fold16(x1, fold1, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    p += 16;
    n -= 16;
  }

  // 128 -> 64 bits (appending 32 zero bits): x.lo * R4 ^ x.hi.
  x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), _mm_clmulepi64_si128(x1, fold1, 0x10));
  // 64 -> 32 bits: (x & 0xFFFFFFFF) * R5 ^ (x >> 32).
  x1 = _mm_xor_si128(_mm_srli_si128(x1, 4),
                     _mm_clmulepi64_si128(_mm_and_si128(x1, mask32), fold32, 0x00));
  // Barrett reduction: t = (x.lo32 * mu).lo32 * P; the remainder is in bits 32..63 of x ^ t.
  __m128i t = _mm_clmulepi64_si128(_mm_and_si128(x1, mask32), barrett, 0x10);
  t = _mm_clmulepi64_si128(_mm_and_si128(t, mask32), barrett, 0x00);
  return static_cast<uint32_t>(_mm_extract_epi32(_mm_xor_si128(x1, t), 1));
}

bool has_pclmul() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
  }();
  return has;
}

#endif  // defined(__x86_64__)

}  // namespace

uint32_t crc32_update_portable(uint32_t crc, const void* data, size_t n) {
  return ~crc32_tables(~crc, static_cast<const uint8_t*>(data), n);
}

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t reg = ~crc;
#if defined(__x86_64__)
  if (n >= 64 && has_pclmul()) {
    const size_t bulk = n & ~static_cast<size_t>(15);
    reg = crc32_pclmul(reg, p, bulk);
    p += bulk;
    n -= bulk;
  }
#endif
  return ~crc32_tables(reg, p, n);
}

const char* crc32_implementation() {
#if defined(__x86_64__)
  if (has_pclmul()) return "pclmul";
#endif
  return "table";
}

}  // namespace ckptledger
