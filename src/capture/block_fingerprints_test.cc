#include "capture/block_fingerprints.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <random>
#include <vector>

#include "store/journal_test_util.h"

namespace kvmcdp {
namespace {

using journal::testing::TempDir;
constexpr uint64_t kB = BlockFingerprints::kBlockSize;

std::string hex(const BlockFingerprints::Digest& d) {
  static const char* x = "0123456789abcdef";
  std::string s;
  for (uint8_t b : d) s += {x[b >> 4], x[b & 15]};
  return s;
}

}  // namespace

TEST_CASE("block fingerprints: SHA-256") {
  const uint8_t abc[] = {'a', 'b', 'c'};
  CHECK(hex(BlockFingerprints::digest(abc, 3)) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("block fingerprints: of a sparse image with a short last block") {
  TempDir d;
  const uint64_t size = 5 * kB + 1000;  // the last block is 1000 bytes
  std::vector<uint8_t> img(size, 0);
  std::mt19937_64 rng(3);
  // Data in blocks 1, 3 (one byte) and the short tail; 0, 2 and 4 are holes.
  for (uint64_t i = kB; i < 2 * kB; i++) img[i] = uint8_t(rng());
  img[3 * kB + 77] = 9;
  for (uint64_t i = 5 * kB; i < size; i++) img[i] = uint8_t(rng());
  std::string path = d.path + "/img.raw";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, off_t(size)) == 0);
  for (uint64_t b : {1, 3, 5}) {
    uint64_t n = std::min(kB, size - b * kB);
    REQUIRE(::pwrite(fd, img.data() + b * kB, n, off_t(b * kB)) == ssize_t(n));
  }
  auto map = BlockFingerprints::of_image(fd, path, size);
  ::close(fd);
  REQUIRE(map);
  CHECK(map->block_count() == 6);
  CHECK(map->known_count() == 6);
  for (uint64_t b = 0; b < 6; b++) {
    uint64_t n = std::min(kB, size - b * kB);
    CHECK(map->matches(b, img.data() + b * kB, n));
    std::vector<uint8_t> other(img.begin() + long(b * kB), img.begin() + long(b * kB + n));
    other[n / 2] ^= 1;
    CHECK_FALSE(map->matches(b, other.data(), n));
  }
  // A part of a block is never the block.
  CHECK_FALSE(map->matches(0, img.data(), kB / 2));
  CHECK_FALSE(map->matches(6, img.data(), 1000));
}

TEST_CASE("block fingerprints: forget makes every block touched unknown") {
  BlockFingerprints map(4 * kB);
  CHECK(map.known_count() == 0);
  std::vector<uint8_t> zero(kB, 0);
  for (uint64_t b = 0; b < 4; b++) map.set(b, BlockFingerprints::digest(zero.data(), kB));
  CHECK(map.known_count() == 4);
  CHECK(map.matches(1, zero.data(), kB));
  map.forget(kB - 1, 2);  // the last byte of block 0, the first of block 1
  CHECK(map.known_count() == 2);
  CHECK_FALSE(map.matches(0, zero.data(), kB));
  CHECK_FALSE(map.matches(1, zero.data(), kB));
  CHECK(map.matches(2, zero.data(), kB));
  map.forget(3 * kB, 0);  // nothing
  CHECK(map.known_count() == 2);
  map.forget(3 * kB + 5, ~uint64_t(0));  // to the end, without overflowing
  CHECK(map.known_count() == 1);
  CHECK(map.matches(2, zero.data(), kB));
}

}  // namespace kvmcdp
