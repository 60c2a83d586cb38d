// CRC-32C with a hardware path.  The journal checksums every byte it
// writes and every byte a restore reads, so the checksum must run far
// faster than zstd -1 and the disk: the SSE4.2 instruction on three
// independent streams, joined at the end of each 6 KiB; the table path is
// the portable fallback (and the reference the test compares to).
#include "base/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace kvmcdp {
namespace {

constexpr uint32_t kPoly = 0x82f63b78;  // reflected Castagnoli

constexpr std::array<std::array<uint32_t, 256>, 8> make_tables() {
  std::array<std::array<uint32_t, 256>, 8> t{};
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    t[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int s = 1; s < 8; s++) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
  return t;
}
constexpr auto kTables = make_tables();

uint32_t crc_table(uint32_t crc, const uint8_t* p, size_t n) {
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    w ^= crc;
    crc = kTables[7][w & 0xff] ^ kTables[6][(w >> 8) & 0xff] ^
          kTables[5][(w >> 16) & 0xff] ^ kTables[4][(w >> 24) & 0xff] ^
          kTables[3][(w >> 32) & 0xff] ^ kTables[2][(w >> 40) & 0xff] ^
          kTables[1][(w >> 48) & 0xff] ^ kTables[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) crc = (crc >> 8) ^ kTables[0][(crc ^ *p++) & 0xff];
  return crc;
}

#if defined(__x86_64__)
// One stream: each crc32 instruction waits for the previous one's result
// (3 cycles of latency), so this runs at a third of what the unit can do.
__attribute__((target("sse4.2"))) uint32_t crc_sse42(uint32_t crc,
                                                       const uint8_t* p,
                                                       size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c = _mm_crc32_u64(c, w);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}
const bool kHaveSse42 = __builtin_cpu_supports("sse4.2");

// Three streams side by side.  The register after a block B from state s
// is shift(s) ^ crc(0, B), where shift (feeding |B| zero bytes) is linear
// in s: so three consecutive blocks are checksummed independently, from
// 0 for the second and third, and joined with two shifts, which a table
// per register byte does in four lookups.
constexpr size_t kBlock = 2048;

struct ZeroShift {
  uint32_t t[4][256];
  uint32_t operator()(uint32_t c) const {
    return t[0][c & 0xff] ^ t[1][(c >> 8) & 0xff] ^ t[2][(c >> 16) & 0xff] ^ t[3][c >> 24];
  }
};

ZeroShift make_zero_shift() {
  static const uint8_t zeros[kBlock] = {};
  uint32_t bit[32];
  for (int i = 0; i < 32; i++) bit[i] = crc_sse42(1u << i, zeros, kBlock);
  ZeroShift s{};
  for (int k = 0; k < 4; k++)
    for (uint32_t b = 0; b < 256; b++)
      for (int j = 0; j < 8; j++)
        if (b & (1u << j)) s.t[k][b] ^= bit[8 * k + j];
  return s;
}

__attribute__((target("sse4.2"))) uint32_t crc_sse42_3way(uint32_t crc,
                                                            const uint8_t* p,
                                                            size_t n) {
  static const ZeroShift shift = make_zero_shift();
  while (n >= 3 * kBlock) {
    uint64_t c0 = crc, c1 = 0, c2 = 0;
    for (size_t i = 0; i < kBlock; i += 8) {
      uint64_t w0, w1, w2;
      std::memcpy(&w0, p + i, 8);
      std::memcpy(&w1, p + kBlock + i, 8);
      std::memcpy(&w2, p + 2 * kBlock + i, 8);
      c0 = _mm_crc32_u64(c0, w0);
      c1 = _mm_crc32_u64(c1, w1);
      c2 = _mm_crc32_u64(c2, w2);
    }
    uint32_t joined = shift(static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1);
    crc = shift(joined) ^ static_cast<uint32_t>(c2);
    p += 3 * kBlock;
    n -= 3 * kBlock;
  }
  return crc_sse42(crc, p, n);
}
#endif

}  // namespace

uint32_t crc32c_extend(uint32_t crc, const void* data, size_t n) {
  auto p = static_cast<const uint8_t*>(data);
  crc = ~crc;
#if defined(__x86_64__)
  if (kHaveSse42) return ~crc_sse42_3way(crc, p, n);
#endif
  return ~crc_table(crc, p, n);
}

// For the test: the table path regardless of the CPU.
uint32_t crc32c_portable_for_test(const void* data, size_t n) {
  return ~crc_table(~0u, static_cast<const uint8_t*>(data), n);
}

}  // namespace kvmcdp
