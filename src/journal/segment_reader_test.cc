// Byte-level damage tests: flip every byte, cut at every length, and check
// exactly what the reader, the verifier and writer recovery report.
#include "journal/segment_reader.h"

#include <doctest/doctest.h>

#include <filesystem>

#include "base/crc32c.h"
#include "store/journal_reader.h"
#include "store/journal_test_util.h"
#include "journal/journal_writer.h"
#include "journal/segment_list.h"
#include "journal/segment_name.h"

namespace kvmcdp::journal {
using namespace testing;

namespace {

// A one-segment store of 3 frames; returns the frames the writer made.
std::vector<FrameInfo> make_small(const std::string& store) {
  WriterOptions o;
  o.stream_id = 7;
  o.frame_raw_bytes = 100;
  auto w = JournalWriter::open(store, o);
  REQUIRE(w);
  for (uint64_t s = 1; s <= 3; s++) {
    REQUIRE((*w)->append(write_rec(s, s * 10, {uint8_t(s), 2, 3, 4, 5})));
    REQUIRE((*w)->commit());
  }
  REQUIRE((*w)->close());
  auto r = JournalReader::open(store);
  REQUIRE(r);
  REQUIRE((*r)->frames().size() == 3);
  return (*r)->frames();
}

// Index of the frame containing byte `i`, or -1 for the segment header.
int frame_of(const std::vector<FrameInfo>& frames, uint64_t i) {
  for (size_t k = 0; k < frames.size(); k++)
    if (i >= frames[k].offset && i < frames[k].offset + frames[k].length) return int(k);
  return -1;
}

}  // namespace

TEST_CASE("segment names: fixed width, exact inverse") {
  CHECK(segment_file_name(42) == "000000000042.seg");
  CHECK(index_file_name(1) == "000000000001.idx");
  for (uint64_t n : {uint64_t{1}, uint64_t{9}, uint64_t{10}, uint64_t{123456789012}, kMaxSegmentNumber})
    CHECK(*parse_segment_file_name(segment_file_name(n)) == n);
  for (const char* bad : {"42.seg", "000000000042.idx", "0000000000042.seg",
                          "00000000004a.seg", "000000000000.seg", "+00000000042.seg",
                          "000000000042.seg.tmp", ""})
    CHECK_MESSAGE(!parse_segment_file_name(bad), bad);
  CHECK(*parse_index_file_name("000000000042.idx") == 42);
}

TEST_CASE("flip each byte: verify names segment and offset, reader stops before") {
  TempDir src;
  auto frames = make_small(src.path);
  std::string seg_name = segment_file_name(1);
  auto bytes = read_bytes(segment_path(src.path, 1));
  REQUIRE(bytes.size() == frames.back().offset + frames.back().length);
  for (size_t i = 0; i < bytes.size(); i++) {
    CAPTURE(i);
    TempDir d;
    std::filesystem::create_directory(journal_dir(d.path));
    auto b = bytes;
    b[i] ^= 0x40;
    write_bytes(segment_path(d.path, 1), b);
    int k = frame_of(frames, i);
    uint64_t bad_off = k < 0 ? 0 : frames[size_t(k)].offset;
    auto v = verify_journal(d.path);
    REQUIRE(v);
    REQUIRE(v->damage);
    CHECK(v->damage->path == segment_path(d.path, 1));
    CHECK(v->damage->offset == bad_off);
    CHECK(v->damage->bytes_dropped == b.size() - bad_off);
    auto r = JournalReader::open(d.path);
    REQUIRE(r);
    REQUIRE((*r)->damage());
    CHECK((*r)->damage()->offset == bad_off);
    CHECK((*r)->frames().size() == size_t(k < 0 ? 0 : k));
  }
}

TEST_CASE("cut at every length: writer recovers to the last whole frame") {
  TempDir src;
  auto frames = make_small(src.path);
  auto bytes = read_bytes(segment_path(src.path, 1));
  for (size_t len = 0; len <= bytes.size(); len++) {
    CAPTURE(len);
    TempDir d;
    std::filesystem::create_directory(journal_dir(d.path));
    write_bytes(segment_path(d.path, 1),
                std::vector<uint8_t>(bytes.begin(), bytes.begin() + long(len)));
    uint64_t good = kSegmentHeaderSize, last = 0;
    for (const auto& f : frames)
      if (f.offset + f.length <= len) good = f.offset + f.length, last = f.last_seq;
    if (len < kSegmentHeaderSize) good = 0;
    auto w = JournalWriter::open(d.path, {});
    REQUIRE(w);
    CHECK((*w)->last_durable_seq() == last);
    bool boundary = len == good && len >= kSegmentHeaderSize;
    CHECK(bool((*w)->recovered()) == !boundary);
    if ((*w)->recovered()) {
      CHECK((*w)->recovered()->offset == good);
      CHECK((*w)->recovered()->bytes_dropped == len - good);
    }
    // The journal goes on where the recovered one ends.
    REQUIRE((*w)->append(write_rec(last + 1, 0, {9})));
    CHECK(*(*w)->commit() == last + 1);
    REQUIRE((*w)->close());
    auto v = verify_journal(d.path);
    REQUIRE(v);
    CHECK(v->ok());
    CHECK(v->last_seq == last + 1);
  }
}

TEST_CASE("unknown format version is an error, never truncated") {
  TempDir d;
  make_small(d.path);
  std::string p = segment_path(d.path, 1);
  auto b = read_bytes(p);
  put32(b.data() + 4, 2);
  put32(b.data() + 60, crc32c(b.data(), 60));
  write_bytes(p, b);
  std::filesystem::remove(index_path(d.path, 1));
  auto v = verify_journal(d.path);
  REQUIRE(!v);
  CHECK(v.status().message().find("unknown journal format version 2") != std::string::npos);
  CHECK(!JournalWriter::open(d.path, {}));
  CHECK(read_bytes(p) == b);
}

TEST_CASE("index: rebuilt by scanning when missing or damaged") {
  TempDir d;
  auto frames = make_small(d.path);
  std::string idx = index_path(d.path, 1);
  std::filesystem::remove(idx);
  {
    auto r = JournalReader::open(d.path);
    REQUIRE(r);
    CHECK((*r)->frames() == frames);
    CHECK((*r)->index_problems().empty());
  }
  // The writer closes the segment again, with a fresh index.
  { REQUIRE(JournalWriter::open(d.path, {})); }
  REQUIRE(std::filesystem::exists(idx));
  auto ib = read_bytes(idx);
  ib[kIndexHeaderSize + 1] ^= 1;
  write_bytes(idx, ib);
  auto r = JournalReader::open(d.path);
  REQUIRE(r);
  CHECK((*r)->frames() == frames);
  CHECK((*r)->index_problems().size() == 1);
  auto v = verify_journal(d.path);
  REQUIRE(v);
  CHECK(!v->damage);
  CHECK(v->index_problems.size() == 1);
  CHECK(!v->ok());
}

TEST_CASE("damage in a middle segment makes later segments unreachable") {
  TempDir d;
  WriterOptions o;
  o.segment_max_bytes = 1;  // one frame per segment
  {
    auto w = JournalWriter::open(d.path, o);
    for (uint64_t s = 1; s <= 4; s++) {
      REQUIRE((*w)->append(write_rec(s, 0, {1, 2, 3})));
      REQUIRE((*w)->commit());
    }
  }
  auto b = read_bytes(segment_path(d.path, 2));
  b.back() ^= 1;
  write_bytes(segment_path(d.path, 2), b);
  auto v = verify_journal(d.path);
  REQUIRE(v);
  REQUIRE(v->damage);
  CHECK(v->damage->path == segment_path(d.path, 2));
  CHECK(v->damage->offset == kSegmentHeaderSize);
  CHECK(v->unreachable_segments == std::vector<uint64_t>{3, 4});
  CHECK(v->last_seq == 1);
}

}  // namespace kvmcdp::journal
