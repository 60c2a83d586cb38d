// The lazily filled point image against a naive replay: reads of random
// ranges before, during and after the background fill are bit-exact, and
// a writable image's writes shadow the point without touching the store.
#include "export/point_image.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <random>

#include "store/journal_test_util.h"

namespace kvmcdp {
using namespace journal;
using namespace journal::testing;

namespace {

struct TestStore {
  TempDir d;
  uint64_t size = 0;
  std::vector<uint8_t> base;
  std::vector<Record> recs;
};

void replay(std::vector<uint8_t>& img, const Record& r) {
  uint64_t end = std::min<uint64_t>(img.size(), r.offset + r.length);
  for (uint64_t i = r.offset; i < end; i++)
    img[i] = r.type == RecordType::kWrite ? r.data[i - r.offset] : 0;
}

void make_store(TestStore& t, std::mt19937_64& rng) {
  t.size = 300000 + rng() % 100000;
  t.base.assign(t.size, 0);
  for (auto& b : t.base) b = uint8_t(rng());
  // Holes in the base, some of them: extents must report them as zeroes.
  for (uint64_t c = 0; c + 65536 <= t.size; c += 65536)
    if (rng() % 3 == 0) std::fill(t.base.begin() + long(c), t.base.begin() + long(c + 65536), 0);
  write_bytes(t.d.path + "/base.raw", t.base);
  {
    int fd = ::open((t.d.path + "/base.raw").c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    for (uint64_t c = 0; c + 65536 <= t.size; c += 65536)
      if (std::all_of(t.base.begin() + long(c), t.base.begin() + long(c + 65536),
                      [](uint8_t x) { return x == 0; }))
        REQUIRE(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(c), 65536) == 0);
    ::close(fd);
  }
  WriterOptions o;
  o.frame_raw_bytes = 20000;
  o.segment_max_bytes = 60000;
  auto w = JournalWriter::open(t.d.path, o);
  REQUIRE(w);
  for (uint64_t s = 1; s <= 300; s++) {
    uint64_t off = rng() % t.size, len = std::min<uint64_t>(1 + rng() % 9000, t.size - off);
    Record r;
    int kind = int(rng() % 10);
    if (kind < 7) {
      r = write_rec(s, off, std::vector<uint8_t>(len));
      for (auto& b : r.data) b = uint8_t(rng() | 1);
    } else if (kind < 9) {
      r = plain_rec(s, kind == 7 ? RecordType::kWriteZeroes : RecordType::kDiscard, off, len);
    } else {
      r = plain_rec(s, RecordType::kFlush);
    }
    t.recs.push_back(r);
    REQUIRE((*w)->append(std::move(r)));
    if (rng() % 5 == 0) REQUIRE((*w)->commit());
  }
  REQUIRE((*w)->commit());
  w->reset();
  write_store_manifest(t.d.path, t.size, 10);
}

std::vector<uint8_t> point(const TestStore& t, uint64_t seq) {
  auto img = t.base;
  for (const auto& r : t.recs)
    if (r.seq <= seq) replay(img, r);
  return img;
}

void check_random_reads(PointImage& img, const std::vector<uint8_t>& want, std::mt19937_64& rng,
                        int n) {
  for (int i = 0; i < n; i++) {
    uint64_t off = rng() % want.size(), len = 1 + rng() % std::min<uint64_t>(70000, want.size() - off);
    std::vector<uint8_t> got(len);
    REQUIRE(img.read(off, len, got.data()));
    REQUIRE(std::equal(got.begin(), got.end(), want.begin() + long(off)));
  }
}

}  // namespace

TEST_CASE("point image: lazy reads, then filled reads, equal the replay") {
  std::mt19937_64 rng(77);
  TestStore t;
  make_store(t, rng);
  for (uint64_t seq : {uint64_t{10}, uint64_t{150}, uint64_t{300}}) {
    CAPTURE(seq);
    auto view = open_store_view(t.d.path);
    REQUIRE(view);
    TempDir work;
    auto img = PointImage::open(*view, seq, work.path, false);
    REQUIRE_MESSAGE(img, img.status().message());
    const auto want = point(t, seq);
    CHECK((*img)->frames_filled() == 0);  // opening reads no data
    check_random_reads(**img, want, rng, 40);
    (*img)->start_fill();
    check_random_reads(**img, want, rng, 40);
    std::vector<uint8_t> all(t.size);
    REQUIRE((*img)->read(0, t.size, all.data()));
    CHECK(all == want);
    // Extents tile the range in order, and every zero extent reads as zeroes.
    for (int i = 0; i < 20; i++) {
      uint64_t off = rng() % t.size, len = 1 + rng() % (t.size - off);
      uint64_t at = off;
      bool ok = true;
      REQUIRE((*img)->extents(off, len, [&](uint64_t b, uint64_t e, bool zero) {
        ok &= b == at && e > b;
        at = e;
        if (zero) ok &= std::all_of(want.begin() + long(b), want.begin() + long(e),
                                    [](uint8_t x) { return x == 0; });
      }));
      CHECK(ok);
      CHECK(at == off + len);
    }
    std::vector<uint8_t> one(1);
    CHECK(!(*img)->read(t.size, 1, one.data()));
    CHECK(!(*img)->write(0, 1, one.data()));  // read-only
  }
}

TEST_CASE("point image: a writable image's writes shadow the point, the store stays") {
  std::mt19937_64 rng(78);
  TestStore t;
  make_store(t, rng);
  auto before_base = read_bytes(t.d.path + "/base.raw");
  auto view = open_store_view(t.d.path);
  REQUIRE(view);
  auto want = point(t, 200);
  {
    TempDir work;
    auto img = PointImage::open(*view, 200, work.path, true);
    REQUIRE(img);
    for (int i = 0; i < 30; i++) {
      uint64_t off = rng() % t.size, len = std::min<uint64_t>(1 + rng() % 20000, t.size - off);
      if (rng() % 3 == 0) {
        REQUIRE((*img)->write_zeroes(off, len));
        std::fill(want.begin() + long(off), want.begin() + long(off + len), 0);
      } else {
        std::vector<uint8_t> data(len);
        for (auto& b : data) b = uint8_t(rng());
        REQUIRE((*img)->write(off, len, data.data()));
        std::copy(data.begin(), data.end(), want.begin() + long(off));
      }
      check_random_reads(**img, want, rng, 3);
    }
    std::vector<uint8_t> all(t.size);
    REQUIRE((*img)->read(0, t.size, all.data()));
    CHECK(all == want);
  }
  CHECK(read_bytes(t.d.path + "/base.raw") == before_base);
  // A new image of the same point has none of those writes.
  TempDir work;
  auto again = PointImage::open(*view, 200, work.path, false);
  REQUIRE(again);
  std::vector<uint8_t> all(t.size);
  REQUIRE((*again)->read(0, t.size, all.data()));
  CHECK(all == point(t, 200));
}

}  // namespace kvmcdp
