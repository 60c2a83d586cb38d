#include "store/journal_changes.h"

#include <doctest/doctest.h>

#include "journal/journal_writer.h"
#include "store/journal_test_util.h"

namespace kvmcdp::journal {
namespace {

using testing::TempDir;
using testing::plain_rec;
using testing::write_rec;

constexpr uint64_t kS = 1000000000ull;

TEST_CASE("changes: bytes of an area per interval, resent data and other areas left out") {
  TempDir d;
  const uint64_t t0 = 1795636200ull * kS;
  {
    auto w = JournalWriter::open(d.path, WriterOptions{});
    REQUIRE(w);
    uint64_t s = 0;
    // Second 1: 8 KiB at 0 (in the area), 4 KiB at 1 MiB (outside).
    REQUIRE((*w)->append(write_rec(++s, 0, std::vector<uint8_t>(8192, 1), t0 + 1 * kS)));
    REQUIRE((*w)->append(write_rec(++s, 1 << 20, std::vector<uint8_t>(4096, 2), t0 + 1 * kS)));
    // Second 5: zeroes over the area's end, counted only inside it.
    REQUIRE((*w)->append(plain_rec(++s, RecordType::kWriteZeroes, 60 * 1024, 8192, t0 + 5 * kS)));
    // Second 7: a gap, then resent data (not the guest's), then done.
    Record g = plain_rec(++s, RecordType::kGap, 0, 0, t0 + 7 * kS);
    g.offset = s;
    REQUIRE((*w)->append(std::move(g)));
    Record rs = write_rec(++s, 0, std::vector<uint8_t>(4096, 3), t0 + 7 * kS);
    rs.flags = wire::kFlagResync;
    REQUIRE((*w)->append(std::move(rs)));
    REQUIRE((*w)->append(plain_rec(++s, RecordType::kResyncDone, 0, 0, t0 + 7 * kS)));
    // Second 9: 4 KiB at 4 KiB.  Second 12: after the interval.
    REQUIRE((*w)->append(write_rec(++s, 4096, std::vector<uint8_t>(4096, 4), t0 + 9 * kS)));
    REQUIRE((*w)->append(write_rec(++s, 0, std::vector<uint8_t>(4096, 5), t0 + 12 * kS)));
    REQUIRE((*w)->commit());
  }
  auto r = JournalReader::open(d.path);
  REQUIRE(r);
  // The area [0, 64 KiB) from second 0 to second 10, in 5 intervals of 2 s.
  auto h = changes_between(**r, t0, t0 + 10 * kS - 1, 0, 64 * 1024, 5);
  REQUIRE_MESSAGE(h, h.status().message());
  REQUIRE(h->buckets.size() == 5);
  CHECK(h->buckets[0].bytes == 8192);
  CHECK(h->buckets[0].records == 1);
  CHECK(h->buckets[1].bytes == 0);
  CHECK(h->buckets[2].bytes == 4096);  // the zeroes' part inside the area
  CHECK(h->buckets[3].bytes == 0);     // the resent data is not a write
  CHECK(h->buckets[4].bytes == 4096);
  CHECK(h->bytes == 16384);
  CHECK(h->records == 3);
  CHECK(h->gaps == 1);
  CHECK(h->first_ns == t0 + 1 * kS);
  CHECK(h->last_ns == t0 + 9 * kS);
  CHECK(h->buckets[1].start_ns == t0 + 2 * kS);
  // An interval that starts after the first records still finds the later ones.
  auto late = changes_between(**r, t0 + 8 * kS, t0 + 20 * kS, 0, UINT64_MAX, 1);
  REQUIRE(late);
  CHECK(late->bytes == 8192);
  CHECK(late->records == 2);
  CHECK_FALSE(changes_between(**r, t0 + 5 * kS, t0, 0, 1, 1));
}

}  // namespace
}  // namespace kvmcdp::journal
