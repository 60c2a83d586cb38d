#include "store/frame_prefetcher.h"

#include <doctest/doctest.h>

#include "store/journal_test_util.h"
#include "journal/journal_writer.h"

namespace kvmcdp::journal {
using namespace testing;

namespace {

// A closed journal of `n` one-record frames; record s carries byte s.
void make_journal(const std::string& dir, uint64_t n) {
  WriterOptions o;
  o.frame_raw_bytes = 64;  // one 50-byte record per frame
  auto w = JournalWriter::open(dir, o);
  REQUIRE(w);
  for (uint64_t s = 1; s <= n; s++)
    REQUIRE((*w)->append(write_rec(s, s * 4096, {uint8_t(s), uint8_t(s)})));
  REQUIRE((*w)->close());
}

}  // namespace

TEST_CASE("frame prefetcher: frames come in the order asked, records intact") {
  TempDir d;
  make_journal(d.path, 30);
  auto r = JournalReader::open(d.path);
  REQUIRE(r);
  REQUIRE((*r)->frames().size() == 30);
  std::vector<size_t> order;
  for (size_t i = 30; i-- > 0;) order.push_back(i);
  order.push_back(4);  // a frame twice is read twice
  FramePrefetcher pf(**r, order, 2);
  std::vector<size_t> got;
  while (auto* f = pf.next()) {
    REQUIRE(f->status);
    got.push_back(f->index);
    REQUIRE(f->records.size() == 1);
    const RecordView& v = f->records[0];
    CHECK(v.seq == f->index + 1);
    CHECK(v.offset == (f->index + 1) * 4096);
    REQUIRE(v.data_len == 2);
    CHECK(v.data[0] == uint8_t(f->index + 1));
    pf.release(f);
  }
  CHECK(got == order);
}

TEST_CASE("frame prefetcher: a damaged frame is the last one handed out") {
  TempDir d;
  make_journal(d.path, 10);
  auto r = JournalReader::open(d.path);
  REQUIRE(r);
  // Flip the last byte of frame 6's payload: its CRC no longer matches.
  const FrameInfo f6 = (*r)->frames()[6];
  auto bytes = read_bytes(segment_path(d.path, f6.segment));
  bytes[f6.offset + f6.length - 1] ^= 0xff;
  write_bytes(segment_path(d.path, f6.segment), bytes);
  FramePrefetcher pf(**r, {9, 8, 7, 6, 5, 4}, 3);
  std::vector<size_t> good;
  auto* f = pf.next();
  for (; f && f->status; f = pf.next()) {
    good.push_back(f->index);
    pf.release(f);
  }
  REQUIRE(f);
  CHECK(f->index == 6);
  CHECK(f->status.kind() == ErrorKind::kDamaged);
  CHECK(good == std::vector<size_t>{9, 8, 7});
  pf.release(f);
  CHECK(pf.next() == nullptr);
}

TEST_CASE("frame prefetcher: the consumer may stop early") {
  TempDir d;
  make_journal(d.path, 40);
  auto r = JournalReader::open(d.path);
  REQUIRE(r);
  std::vector<size_t> order;
  for (size_t i = 0; i < 40; i++) order.push_back(i);
  size_t taken = 0;
  {
    FramePrefetcher pf(**r, order, 2);
    for (; taken < 3; taken++) {
      auto* f = pf.next();
      REQUIRE(f);
      CHECK(f->index == taken);
      pf.release(f);
    }
  }  // destroyed with frames left: must return, not wait for all 40
  // The reader is usable again once the prefetcher is gone.
  std::vector<uint8_t> raw;
  std::vector<RecordView> recs;
  REQUIRE((*r)->read_frame(39, &raw, &recs));
  CHECK(recs.at(0).seq == 40);
}

}  // namespace kvmcdp::journal
