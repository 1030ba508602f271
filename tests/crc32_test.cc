// crc32_update (PCLMULQDQ folding where the CPU has it) and crc32_update_portable (tables) against
// a bit-at-a-time reference: known vectors, every short length at every alignment, large buffers,
// incremental updates.
#include "storage/crc32.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace ckptledger {
namespace {

// The definition, one bit at a time: zlib's crc32(crc, data, n).
uint32_t bitwise_crc32(uint32_t crc, const uint8_t* p, size_t n) {
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc & 1) ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
  }
  return ~crc;
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

using Crc32Fn = uint32_t (*)(uint32_t, const void*, size_t);

class Crc32Test : public ::testing::TestWithParam<Crc32Fn> {};

TEST_P(Crc32Test, KnownVectors) {
  const Crc32Fn crc = GetParam();
  const std::string check = "123456789";
  EXPECT_EQ(crc(0, check.data(), check.size()), 0xCBF43926u);
  EXPECT_EQ(crc(0, nullptr, 0), 0u);
  EXPECT_EQ(crc(0xCBF43926u, nullptr, 0), 0xCBF43926u);
  const std::string fox = "The quick brown fox jumps over the lazy dog";
  EXPECT_EQ(crc(0, fox.data(), fox.size()), 0x414FA339u);

  const std::vector<uint8_t> zeros(1 << 20, 0);
  EXPECT_EQ(crc(0, zeros.data(), zeros.size()), bitwise_crc32(0, zeros.data(), zeros.size()));
  const std::vector<uint8_t> ones(4096, 0xFF);
  EXPECT_EQ(crc(0, ones.data(), ones.size()), bitwise_crc32(0, ones.data(), ones.size()));
}

TEST_P(Crc32Test, EveryShortLengthAtEveryOffset) {
  const Crc32Fn crc = GetParam();
  const std::vector<uint8_t> buf = random_bytes(1100 + 16, 42);
  for (size_t offset = 0; offset < 16; ++offset) {
    for (size_t n = 0; n <= 1100; ++n) {
      const uint8_t* p = buf.data() + offset;
      ASSERT_EQ(crc(0, p, n), bitwise_crc32(0, p, n)) << "offset " << offset << " length " << n;
      // A non-zero starting CRC too (the register is folded into the first block).
      ASSERT_EQ(crc(0x12345678u, p, n), bitwise_crc32(0x12345678u, p, n))
          << "offset " << offset << " length " << n;
    }
  }
}

TEST_P(Crc32Test, LargeBuffers) {
  const Crc32Fn crc = GetParam();
  for (const size_t n : {(size_t{1} << 20) + 3, (size_t{8} << 20) + 17}) {
    const std::vector<uint8_t> buf = random_bytes(n + 1, static_cast<uint32_t>(n));
    EXPECT_EQ(crc(0, buf.data(), n), bitwise_crc32(0, buf.data(), n)) << n;
    EXPECT_EQ(crc(0, buf.data() + 1, n), bitwise_crc32(0, buf.data() + 1, n)) << n;
  }
}

TEST_P(Crc32Test, IncrementalEqualsWhole) {
  const Crc32Fn crc = GetParam();
  const std::vector<uint8_t> buf = random_bytes(300000, 7);
  const uint32_t whole = bitwise_crc32(0, buf.data(), buf.size());
  std::mt19937 rng(11);
  for (int round = 0; round < 200; ++round) {
    // Two to five pieces, cut at random points (short and long pieces both occur).
    std::vector<size_t> cuts = {0, buf.size()};
    const int pieces = 2 + static_cast<int>(rng() % 4);
    for (int i = 1; i < pieces; ++i) {
      const size_t cut = (rng() % 2) ? rng() % buf.size() : rng() % 200;
      cuts.push_back(cut);
    }
    std::sort(cuts.begin(), cuts.end());
    uint32_t c = 0;
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      c = crc(c, buf.data() + cuts[i], cuts[i + 1] - cuts[i]);
    }
    ASSERT_EQ(c, whole) << "round " << round;
  }
}

INSTANTIATE_TEST_SUITE_P(Implementations, Crc32Test,
                         ::testing::Values(&crc32_update, &crc32_update_portable),
                         [](const ::testing::TestParamInfo<Crc32Fn>& param) {
                           return std::string(param.index == 0 ? "Dispatched" : "Portable");
                         });

TEST(Crc32, ConvenienceAndImplementationName) {
  const std::string check = "123456789";
  EXPECT_EQ(crc32(check.data(), check.size()), 0xCBF43926u);
  EXPECT_EQ(std::string(crc32_implementation()), "isa-l");
}

}  // namespace
}  // namespace ckptledger
