#include "journal/frame_effort.h"

#include <doctest/doctest.h>

#include <cstring>
#include <vector>

namespace kvmcdp::journal {
namespace {

// xorshift bytes; `copy_every`: every so many 32-byte pieces repeat the
// piece 1000 bytes back (matches, as in fio's buffers); `zero_every`:
// every so many bytes are 0 (redundancy in byte frequencies only).
ByteBuf bytes(size_t n, int copy_every, int zero_every) {
  ByteBuf b;
  b.resize(n);
  uint64_t x = 88172645463325252ull;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b.data()[i] = zero_every && i % zero_every == 0 ? 0 : uint8_t(x);
  }
  if (copy_every)
    for (size_t p = 1024; p + 32 <= n; p += 32)
      if ((p / 32) % copy_every == 0) std::memcpy(b.data() + p, b.data() + p - 1000, 32);
  return b;
}

struct Cctx {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  Cctx() { ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, 1); }
  ~Cctx() { ZSTD_freeCCtx(c); }
};

size_t zstd_size(const ByteBuf& b, int level) {
  std::vector<uint8_t> out(ZSTD_compressBound(b.size()));
  size_t n = ZSTD_compress(out.data(), out.size(), b.data(), b.size(), level);
  REQUIRE(!ZSTD_isError(n));
  return n;
}

}  // namespace

TEST_CASE("frame effort: what barely compresses gets zstd's fast level, if that still pays") {
  Cctx z;
  ByteBuf probe;
  const size_t n = 1 << 20;
  ByteBuf matches = bytes(n, 5, 0);  // ~1/5 in matches: level 1 saves 1/16..1/4
  ByteBuf freq = bytes(n, 0, 4);     // a quarter zeroes: only entropy coding saves
  ByteBuf noise = bytes(n, 0, 0);
  ByteBuf text;
  text.resize(n);
  for (size_t i = 0; i < n; i++) text.data()[i] = uint8_t("the quick brown fox "[i % 20]);
  // The data is what the cases say it is.
  CHECK(zstd_size(matches, 1) < n - n / 16);
  CHECK(zstd_size(matches, 1) > n - n / 4);
  CHECK(zstd_size(matches, kFastLevel) < n - n / 16);
  CHECK(zstd_size(freq, 1) < n - n / 16);
  CHECK(zstd_size(freq, kFastLevel) > n - n / 16);

  CHECK(effort_for(z.c, 1, matches, false, &probe) == Effort::kFast);
  CHECK(effort_for(z.c, 1, matches, true, &probe) == Effort::kStore);
  CHECK(effort_for(z.c, 1, freq, false, &probe) == Effort::kFull);
  CHECK(effort_for(z.c, 1, freq, true, &probe) == Effort::kStore);
  CHECK(effort_for(z.c, 1, noise, false, &probe) == Effort::kStore);
  CHECK(effort_for(z.c, 1, text, true, &probe) == Effort::kFull);
  // The context is left at the level it was given.
  std::vector<uint8_t> out(ZSTD_compressBound(n));
  size_t got = ZSTD_compress2(z.c, out.data(), out.size(), matches.data(), n);
  REQUIRE(!ZSTD_isError(got));
  CHECK(got == zstd_size(matches, 1));
  CHECK(got != zstd_size(matches, kFastLevel));
}

TEST_CASE("frame effort: a frame too small to probe gets the configured level") {
  Cctx z;
  ByteBuf probe;
  CHECK(effort_for(z.c, 1, bytes(100000, 0, 0), true, &probe) == Effort::kFull);
}

}  // namespace kvmcdp::journal
