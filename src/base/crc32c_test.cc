#include "base/crc32c.h"

#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <vector>

namespace kvmcdp {
namespace {

std::vector<uint8_t> noise(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> b(n);
  for (auto& x : b) x = uint8_t(rng());
  return b;
}

}  // namespace

TEST_CASE("crc32c: the check value of the Castagnoli polynomial") {
  CHECK(crc32c("123456789", 9) == 0xe3069283);
  CHECK(crc32c_portable_for_test("123456789", 9) == 0xe3069283);
  CHECK(crc32c("", 0) == 0);
}

TEST_CASE("crc32c: the hardware path equals the table at every length around its blocks") {
  // The fast path joins three 2 KiB streams per 6 KiB; lengths on both
  // sides of one and two such rounds, and odd starts, cover the joins and
  // the tails.
  auto b = noise(3 * 6144 + 64, 7);
  std::vector<size_t> lengths;
  for (size_t n = 0; n < 64; n++) lengths.push_back(n);
  for (size_t round : {6144u, 2 * 6144u, 3 * 6144u})
    for (size_t d = 0; d < 24; d++) {
      lengths.push_back(round - 12 + d);
    }
  lengths.push_back(2048);
  lengths.push_back(4096);
  for (size_t start : {0u, 1u, 3u, 7u, 8u})
    for (size_t n : lengths) {
      if (start + n > b.size()) continue;
      CAPTURE(start);
      CAPTURE(n);
      CHECK(crc32c(b.data() + start, n) == crc32c_portable_for_test(b.data() + start, n));
    }
}

TEST_CASE("crc32c: extending in pieces equals one pass, and a flipped bit shows") {
  auto b = noise(1 << 20, 11);
  uint32_t whole = crc32c(b.data(), b.size());
  CHECK(whole == crc32c_portable_for_test(b.data(), b.size()));
  for (size_t cut : {1u, 333u, 6144u, 6145u, 500000u, (1u << 20) - 1}) {
    CAPTURE(cut);
    CHECK(crc32c_extend(crc32c(b.data(), cut), b.data() + cut, b.size() - cut) == whole);
  }
  for (size_t at : {0u, 2047u, 2048u, 4100u, 6143u, 700001u}) {
    CAPTURE(at);
    b[at] ^= 0x10;
    CHECK(crc32c(b.data(), b.size()) != whole);
    b[at] ^= 0x10;
  }
}

}  // namespace kvmcdp
