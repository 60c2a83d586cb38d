#include "restore/range_coalescer.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <random>

namespace kvmcdp {
namespace {

struct Sent {
  uint64_t offset, length;
  std::vector<uint8_t> data;
};

std::vector<uint8_t> bytes(uint64_t offset, uint64_t length) {
  std::vector<uint8_t> v(length);
  for (uint64_t i = 0; i < length; i++) v[i] = uint8_t((offset + i) * 7 + 1);
  return v;
}

}  // namespace

TEST_CASE("range coalescer: touching ranges of one kind join, in either direction") {
  std::vector<Sent> out;
  RangeCoalescer c(1 << 20, [&](uint64_t off, uint64_t len, std::vector<uint8_t> d) {
    out.push_back({off, len, std::move(d)});
    return Status::ok();
  });
  // A sequential burst met newest first: descending offsets.
  for (uint64_t off : {12288, 8192, 4096}) REQUIRE(c.add(off, 4096, bytes(off, 4096).data()));
  REQUIRE(c.add(16384, 4096, bytes(16384, 4096).data()));  // begins where it ends
  REQUIRE(c.add(20480, 4096, nullptr));                      // zeroes: a new range
  REQUIRE(c.add(24576, 8192, nullptr));                      // joins the zeroes
  REQUIRE(c.add(40960, 4096, bytes(40960, 4096).data()));   // a gap: a new range
  REQUIRE(c.flush());
  REQUIRE(c.flush());  // nothing pending: nothing sent
  REQUIRE(out.size() == 3);
  CHECK(out[0].offset == 4096);
  CHECK(out[0].length == 16384);
  CHECK(out[0].data == bytes(4096, 16384));
  CHECK(out[1].offset == 20480);
  CHECK(out[1].length == 12288);
  CHECK(out[1].data.empty());
  CHECK(out[2].offset == 40960);
  CHECK(out[2].data == bytes(40960, 4096));
  CHECK(c.sent() == 3);
}

TEST_CASE("range coalescer: a join never passes the limit") {
  std::vector<Sent> out;
  RangeCoalescer c(16384, [&](uint64_t off, uint64_t len, std::vector<uint8_t> d) {
    out.push_back({off, len, std::move(d)});
    return Status::ok();
  });
  for (uint64_t off = 0; off < 65536; off += 4096) REQUIRE(c.add(off, 4096, bytes(off, 4096).data()));
  REQUIRE(c.add(65536, 65536, bytes(65536, 65536).data()));  // alone bigger than the limit
  REQUIRE(c.flush());
  REQUIRE(out.size() == 5);
  for (size_t i = 0; i < 4; i++) {
    CHECK(out[i].offset == i * 16384);
    CHECK(out[i].length == 16384);
    CHECK(out[i].data == bytes(i * 16384, 16384));
  }
  CHECK(out[4].length == 65536);
}

TEST_CASE("range coalescer: any order of disjoint ranges gives back exactly the same bytes") {
  // Disjoint 512-byte-aligned ranges over 1 MiB, shuffled; what comes out
  // must cover the same bytes with the same contents and kinds.
  std::mt19937_64 rng(7);
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (uint64_t off = 0; off < (1 << 20);) {
    uint64_t len = 512 * (1 + rng() % 16);
    if (rng() % 4) ranges.push_back({off, len});
    off += len;
  }
  std::shuffle(ranges.begin(), ranges.end(), rng);
  std::map<uint64_t, std::pair<uint64_t, bool>> want;  // offset -> length, zero
  std::vector<uint8_t> image(1 << 20, 0xEE), expect(1 << 20, 0xEE);
  std::vector<uint8_t> zero_map(1 << 20, 0), expect_zero(1 << 20, 0);
  bool twice = false, bad_size = false;
  RangeCoalescer c(8192, [&](uint64_t off, uint64_t len, std::vector<uint8_t> d) {
    bad_size |= !d.empty() && d.size() != len;
    for (uint64_t i = 0; i < len; i++) {
      twice |= zero_map[off + i] != 0;  // never sent twice
      zero_map[off + i] = d.empty() ? 2 : 1;
      if (!d.empty()) image[off + i] = d[i];
    }
    return Status::ok();
  });
  for (auto [off, len] : ranges) {
    bool zero = (off / 512) % 3 == 0;
    auto b = bytes(off, len);
    REQUIRE(c.add(off, len, zero ? nullptr : b.data()));
    for (uint64_t i = 0; i < len; i++) {
      expect_zero[off + i] = zero ? 2 : 1;
      if (!zero) expect[off + i] = b[i];
    }
  }
  REQUIRE(c.flush());
  CHECK(!twice);
  CHECK(!bad_size);
  CHECK(zero_map == expect_zero);
  CHECK(image == expect);
  CHECK(c.sent() < ranges.size());  // some touched and were joined
}

TEST_CASE("range coalescer: a sink error comes back from add or flush") {
  RangeCoalescer c(1 << 20, [](uint64_t, uint64_t, std::vector<uint8_t>) {
    return Status(ErrorKind::kFailure, "no");
  });
  uint8_t b[4096] = {};
  REQUIRE(c.add(0, 4096, b));       // pending, not sent yet
  CHECK(!c.add(1 << 20, 4096, b));  // sending the first fails
  RangeCoalescer d(1 << 20, [](uint64_t, uint64_t, std::vector<uint8_t>) {
    return Status(ErrorKind::kFailure, "no");
  });
  REQUIRE(d.add(0, 4096, b));
  CHECK(!d.flush());
}

}  // namespace kvmcdp
