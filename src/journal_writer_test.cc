#include "journal_writer.h"

#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>

#include "journal_reader.h"
#include "journal_test_util.h"
#include "segment_list.h"

namespace kvmcdp::journal {
using namespace testing;

namespace {
std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = uint8_t(seed + i * 7);
  return v;
}
}  // namespace

TEST_CASE("journal round trip across frames and segments") {
  TempDir d;
  WriterOptions o;
  o.stream_id = 42;
  o.frame_raw_bytes = 3000;
  o.segment_max_bytes = 4096;
  {
    auto w = JournalWriter::open(d.path, o);
    REQUIRE(w);
    CHECK(!(*w)->recovered());
    for (uint64_t s = 1; s <= 200; s++) {
      REQUIRE((*w)->append(write_rec(s, s * 512, pattern(500, uint8_t(s)))));
      if (s % 17 == 0) {
        auto c = (*w)->commit();
        REQUIRE(c);
        CHECK(*c == s);
      }
    }
    CHECK((*w)->last_durable_seq() == 187);
    REQUIRE((*w)->close());
    CHECK((*w)->last_durable_seq() == 200);
    CHECK((*w)->stats().records == 200);
    CHECK((*w)->stats().segments > 3);
  }
  auto r = JournalReader::open(d.path);
  REQUIRE(r);
  CHECK(!(*r)->damage());
  CHECK((*r)->stream_id() == 42);
  CHECK((*r)->first_seq() == 1);
  CHECK((*r)->last_seq() == 200);
  uint64_t next = 1;
  REQUIRE((*r)->for_each_record(1, [&](const RecordView& v) {
    CHECK(v.seq == next);
    CHECK(v.offset == next * 512);
    CHECK(std::vector<uint8_t>(v.data, v.data + v.data_len) == pattern(500, uint8_t(next)));
    next++;
    return true;
  }));
  CHECK(next == 201);
  auto fi = (*r)->frame_for_seq(100);
  REQUIRE(fi);
  CHECK((*r)->frames()[*fi].first_seq <= 100);
  CHECK((*r)->frames()[*fi].last_seq >= 100);
  CHECK(!(*r)->frame_for_seq(201));
  auto v = verify_journal(d.path);
  REQUIRE(v);
  CHECK(v->ok());
  CHECK(v->records == 200);
  CHECK(v->last_seq == 200);

  // Reopening continues the sequence in a new segment.
  auto w = JournalWriter::open(d.path, o);
  REQUIRE(w);
  CHECK((*w)->last_durable_seq() == 200);
  CHECK(!(*w)->append(write_rec(202, 0, pattern(1, 1))));  // not consecutive
  REQUIRE((*w)->append(plain_rec(203, RecordType::kGap, 201)));
  REQUIRE((*w)->append(write_rec(204, 0, pattern(1, 1))));
  CHECK(*(*w)->commit() == 204);
}

TEST_CASE("second writer is refused with kBusy naming the pid") {
  TempDir d;
  auto w = JournalWriter::open(d.path, {});
  REQUIRE(w);
  auto w2 = JournalWriter::open(d.path, {});
  REQUIRE(!w2);
  CHECK(w2.status().kind() == ErrorKind::kBusy);
  CHECK(w2.status().message().find("pid " + std::to_string(::getpid())) !=
        std::string::npos);
}

TEST_CASE("stream id mismatch is refused") {
  TempDir d;
  {
    WriterOptions o;
    o.stream_id = 1;
    auto w = JournalWriter::open(d.path, o);
    REQUIRE((*w)->append(write_rec(1, 0, {1})));
    REQUIRE((*w)->commit());
  }
  WriterOptions o;
  o.stream_id = 2;
  CHECK(!JournalWriter::open(d.path, o));
}

}  // namespace kvmcdp::journal
