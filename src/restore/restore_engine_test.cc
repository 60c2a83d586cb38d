// Restore against a naive replay: random base, random overlapping writes,
// write-zeroes and discards; bit-exact at many target seqs.  Plus ranges
// with gaps and resyncs, and the refusals.
#include "restore/restore_engine.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "journal/extent_map.h"
#include "store/journal_ranges.h"
#include "store/journal_test_util.h"
#include "journal/journal_writer.h"
#include "store/manifest.h"

namespace kvmcdp {
using namespace journal;
using namespace journal::testing;

namespace {

// A sparse base image: random data in some 64 KiB chunks, holes elsewhere.
std::vector<uint8_t> make_base(const std::string& path, uint64_t size, std::mt19937_64& rng) {
  std::vector<uint8_t> img(size, 0);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, off_t(size)) == 0);
  for (uint64_t c = 0; c < size; c += 65536) {
    if (rng() % 2) continue;
    for (uint64_t i = c; i < std::min(size, c + 65536); i++) img[i] = uint8_t(rng());
    REQUIRE(::pwrite(fd, img.data() + c, std::min<uint64_t>(65536, size - c), off_t(c)) > 0);
  }
  ::close(fd);
  return img;
}

void replay(std::vector<uint8_t>& img, const Record& r) {
  uint64_t end = std::min<uint64_t>(img.size(), r.offset + r.length);
  for (uint64_t i = r.offset; i < end; i++)
    img[i] = r.type == RecordType::kWrite ? r.data[i - r.offset] : 0;
}

}  // namespace

TEST_CASE("restore equals naive replay at many points") {
  std::mt19937_64 rng(1234);
  for (int round = 0; round < 3; round++) {
    TempDir d;
    const uint64_t size = 300000 + rng() % 100000;
    auto base = make_base(d.path + "/base.raw", size, rng);
    std::vector<Record> recs;
    WriterOptions o;
    o.frame_raw_bytes = 20000;
    o.segment_max_bytes = 60000;
    {
      auto w = JournalWriter::open(d.path, o);
      REQUIRE(w);
      for (uint64_t s = 1; s <= 400; s++) {
        uint64_t off = rng() % size, len = 1 + rng() % 9000;
        if (rng() % 8 == 0) len = 50000 + rng() % 50000;
        len = std::min(len, size - off);  // the filter never writes past the disk
        Record r;
        int kind = int(rng() % 10);
        if (kind < 6) {
          r = write_rec(s, off, std::vector<uint8_t>(len));
          for (auto& b : r.data) b = uint8_t(rng() | 1);
        } else if (kind < 8) {
          r = plain_rec(s, RecordType::kWriteZeroes, off, len);
        } else if (kind < 9) {
          r = plain_rec(s, RecordType::kDiscard, off, len);
        } else {
          r = plain_rec(s, RecordType::kFlush);
        }
        recs.push_back(r);
        REQUIRE((*w)->append(std::move(r)));
        if (rng() % 5 == 0) REQUIRE((*w)->commit());
      }
    }
    const uint64_t base_seq = 20;
    write_store_manifest(d.path, size, base_seq);
    auto img = base;
    size_t next = 0;
    for (uint64_t target : {uint64_t{20}, uint64_t{21}, uint64_t{57}, uint64_t{199},
                            uint64_t{200}, uint64_t{333}, uint64_t{399}, uint64_t{400}}) {
      CAPTURE(target);
      while (next < recs.size() && recs[next].seq <= target) replay(img, recs[next++]);
      std::string out = d.path + "/out.raw";
      auto st = restore(d.path, target, out);
      REQUIRE_MESSAGE(st, st.status().message());
      CHECK(read_bytes(out) == img);
      CHECK(st->journal_bytes + st->zero_bytes <= size);
    }
  }
}

TEST_CASE("recoverable ranges with gaps and resync, refusals") {
  TempDir d;
  const uint64_t size = 4096;
  std::mt19937_64 rng(9);
  make_base(d.path + "/base.raw", size, rng);
  {
    WriterOptions o;
    o.frame_raw_bytes = 200;
    auto w = JournalWriter::open(d.path, o);
    for (uint64_t s = 1; s <= 10; s++) REQUIRE((*w)->append(write_rec(s, s * 8, {1, 2})));
    REQUIRE((*w)->append(plain_rec(15, RecordType::kGap, 11)));
    for (uint64_t s = 16; s <= 18; s++) {
      auto r = write_rec(s, s * 8, {3, 4});
      r.flags = wire::kFlagResync;
      REQUIRE((*w)->append(std::move(r)));
    }
    REQUIRE((*w)->append(plain_rec(19, RecordType::kResyncDone)));
    REQUIRE((*w)->append(write_rec(20, 0, {5})));
    Record mark = plain_rec(21, RecordType::kMark);
    mark.data = {'b', 'o', 'o', 't'};
    REQUIRE((*w)->append(std::move(mark)));
    for (uint64_t s = 22; s <= 25; s++) REQUIRE((*w)->append(write_rec(s, 0, {6})));
    REQUIRE((*w)->commit());
  }
  write_store_manifest(d.path, size, 3);
  auto r = JournalReader::open(d.path);
  REQUIRE(r);
  auto ranges = recoverable_ranges(**r, 3, 1030);
  REQUIRE(ranges);
  REQUIRE(ranges->size() == 2);
  CHECK((*ranges)[0] == RecoverableRange{3, 1030, 10, 1100});
  CHECK((*ranges)[1] == RecoverableRange{19, 1190, 25, 1250});
  // Base before the first record: the base itself is a point.
  auto r0 = recoverable_ranges(**r, 0, 5);
  CHECK((*r0)[0] == RecoverableRange{0, 5, 10, 1100});

  auto marks = list_marks(**r);
  REQUIRE(marks);
  REQUIRE(marks->size() == 1);
  CHECK((*marks)[0].name == "boot");
  CHECK((*marks)[0].seq == 21);

  CHECK((*last_record_at_or_before(**r, 1205))->seq == 20);
  CHECK((*last_record_at_or_before(**r, 1210))->seq == 21);
  CHECK(!*last_record_at_or_before(**r, 999));

  for (uint64_t bad : {uint64_t{2}, uint64_t{11}, uint64_t{15}, uint64_t{18}, uint64_t{26}}) {
    CAPTURE(bad);
    auto st = restore(d.path, bad, d.path + "/out.raw");
    REQUIRE(!st);
    CHECK(st.status().kind() == ErrorKind::kNotRecoverable);
  }
  auto st = restore(d.path, 12, d.path + "/out.raw");
  CHECK(st.status().message().find("seq 10 (before) and seq 19 (after)") != std::string::npos);
  CHECK(restore(d.path, 19, d.path + "/out.raw"));
  CHECK(restore(d.path, 3, d.path + "/out.raw"));
}

TEST_CASE("extent map: covers once, merges") {
  ExtentMap m;
  std::vector<std::pair<uint64_t, uint64_t>> got;
  auto rec = [&](uint64_t b, uint64_t e) { got.push_back({b, e}); };
  m.cover(10, 20, rec);
  m.cover(30, 40, rec);
  got.clear();
  m.cover(5, 45, rec);
  CHECK(got == std::vector<std::pair<uint64_t, uint64_t>>{{5, 10}, {20, 30}, {40, 45}});
  CHECK(m.extent_count() == 1);
  CHECK(m.covered_bytes() == 40);
  got.clear();
  m.cover(45, 50, rec);
  CHECK(m.extent_count() == 1);
  CHECK(!m.covers(50));
  m.cover(0, 5, nullptr);
  CHECK(m.covers(50));
}

TEST_CASE("manifest: round trip, atomic replace, unknown version") {
  TempDir d;
  Manifest m;
  m.stream_id = 0xfedcba9876543210ull;
  m.disk_size = 1ull << 40;
  m.base_complete_seq = 77;
  m.extra["owner"] = "cli";
  REQUIRE(write_manifest(d.path, m));
  m.disk_size = 123;
  REQUIRE(write_manifest(d.path, m));
  CHECK(!std::filesystem::exists(manifest_path(d.path) + ".tmp"));
  auto back = read_manifest(d.path);
  REQUIRE(back);
  CHECK(back->stream_id == m.stream_id);
  CHECK(back->disk_size == 123);
  CHECK(back->base_complete_seq == 77);
  CHECK(back->extra["owner"] == "cli");
  write_bytes(manifest_path(d.path), {'{', '}'});
  CHECK(read_manifest(d.path).status().kind() == ErrorKind::kDamaged);
  std::string v2 = R"({"format_version": 2})";
  write_bytes(manifest_path(d.path), std::vector<uint8_t>(v2.begin(), v2.end()));
  auto r = read_manifest(d.path);
  REQUIRE(!r);
  CHECK(r.status().message().find("unknown manifest format_version 2") != std::string::npos);
  CHECK(read_manifest(d.path + "/nope").status().kind() == ErrorKind::kNotFound);
}

}  // namespace kvmcdp
