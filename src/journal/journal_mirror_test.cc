// The server's mirror against hostile and broken input: it must accept
// exactly the client's bytes, in order, once, and nothing else.
#include "journal/journal_mirror.h"

#include <sys/stat.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include "journal/journal_codec.h"
#include "store/journal_test_util.h"
#include "journal/journal_writer.h"
#include "journal/segment_list.h"

namespace kvmcdp::journal {
namespace {

using testing::read_bytes;
using testing::TempDir;
using testing::write_rec;

constexpr uint64_t kStream = 0x1234;

// A client journal: segment 1 with a few frames (one commit each), sealed.
struct ClientJournal {
  TempDir dir;
  std::vector<FrameInfo> frames;
  ClientJournal() {
    WriterOptions o;
    o.stream_id = kStream;
    auto w = JournalWriter::open(dir.path, o);
    REQUIRE(w);
    for (uint64_t seq = 1; seq <= 6; ++seq) {
      REQUIRE((*w)->append(write_rec(seq, seq * 4096, std::vector<uint8_t>(4096, uint8_t(seq)))));
      REQUIRE((*w)->commit());
    }
    REQUIRE((*w)->close());
    auto sf = load_segment(dir.path, 1);
    REQUIRE(sf);
    frames = sf->frames;
    REQUIRE(frames.size() == 6);
  }
  std::vector<uint8_t> seg() const { return read_bytes(segment_path(dir.path, 1)); }
  std::vector<uint8_t> idx() const { return read_bytes(index_path(dir.path, 1)); }
};

std::unique_ptr<JournalMirror> open_mirror(const std::string& dir) {
  auto m = JournalMirror::open(dir, kStream);
  REQUIRE(m);
  return std::move(*m);
}

}  // namespace

TEST_CASE("mirror: shipped frame by frame, the server's journal is the client's, byte for byte") {
  ClientJournal c;
  TempDir server;
  auto m = open_mirror(server.path);
  CHECK(m->position().segment == 0);
  auto seg = c.seg();
  // The header with the first frame, then each frame alone.
  uint64_t first_end = c.frames[0].offset + c.frames[0].length;
  REQUIRE(m->append(1, 0, seg.data(), first_end));
  for (size_t i = 1; i < c.frames.size(); ++i)
    REQUIRE(m->append(1, c.frames[i].offset, seg.data() + c.frames[i].offset, c.frames[i].length));
  REQUIRE(m->sync());
  CHECK(m->durable_seq() == 6);
  auto idx = c.idx();
  REQUIRE(m->seal(1, seg.size(), idx.data(), idx.size()));
  CHECK(read_bytes(segment_path(server.path, 1)) == seg);
  CHECK(read_bytes(index_path(server.path, 1)) == idx);

  // Reopened, it says where it ends.
  m.reset();
  auto again = open_mirror(server.path);
  CHECK(again->position().segment == 1);
  CHECK(again->position().size == seg.size());
  CHECK(again->position().sealed);
  CHECK(again->position().last_seq == 6);
}

TEST_CASE("mirror: repeats, skips, wrong places and flipped bytes are refused, nothing written") {
  ClientJournal c;
  TempDir server;
  auto m = open_mirror(server.path);
  auto seg = c.seg();
  uint64_t end2 = c.frames[1].offset + c.frames[1].length;
  REQUIRE(m->append(1, 0, seg.data(), end2));  // header + frames 1, 2
  const FrameInfo& f3 = c.frames[2];
  const FrameInfo& f4 = c.frames[3];

  // The same frame again (a resend after a lost ACK must not be stored twice).
  CHECK_FALSE(m->append(1, end2, seg.data() + c.frames[1].offset, c.frames[1].length));
  // Skipping frame 3: seqs 3 would be missing without a gap record.
  CHECK_FALSE(m->append(1, end2, seg.data() + f4.offset, f4.length));
  // At the wrong offset, in the wrong segment, a segment too far.
  CHECK_FALSE(m->append(1, end2 + 1, seg.data() + f3.offset, f3.length));
  CHECK_FALSE(m->append(2, end2, seg.data() + f3.offset, f3.length));
  CHECK_FALSE(m->append(3, 0, seg.data(), kSegmentHeaderSize));
  // Cut short, and every single flipped byte of a frame.
  CHECK_FALSE(m->append(1, end2, seg.data() + f3.offset, f3.length - 1));
  for (uint32_t i = 0; i < f3.length; ++i) {
    std::vector<uint8_t> bad(seg.begin() + f3.offset, seg.begin() + f3.offset + f3.length);
    bad[i] ^= 0x20;
    auto s = m->append(1, end2, bad.data(), bad.size());
    CHECK_MESSAGE(!s, "flipped byte ", i, " was accepted");
  }
  // A seal at the wrong size, or of garbage.
  auto idx = c.idx();
  CHECK_FALSE(m->seal(1, seg.size(), idx.data(), idx.size()));
  std::vector<uint8_t> junk(64, 7);
  CHECK_FALSE(m->seal(1, end2, junk.data(), junk.size()));
  // None of it reached the disk: the right frame still fits.
  REQUIRE(m->sync());
  CHECK(read_bytes(segment_path(server.path, 1)).size() == end2);
  CHECK(m->append(1, end2, seg.data() + f3.offset, f3.length));
  CHECK(m->sync());
  CHECK(m->durable_seq() == 3);
}

TEST_CASE("mirror: another stream's segment is refused") {
  ClientJournal c;
  TempDir server;
  auto m = JournalMirror::open(server.path, 0x9999);
  REQUIRE(m);
  auto seg = c.seg();
  auto s = (*m)->append(1, 0, seg.data(), c.frames[0].offset + c.frames[0].length);
  CHECK_FALSE(s);
  CHECK(s.message().find("stream") != std::string::npos);
}

TEST_CASE("mirror: a torn tail from a server crash is cut back on open, at every length") {
  ClientJournal c;
  auto seg = c.seg();
  const FrameInfo& last = c.frames.back();
  for (uint64_t cut = 0; cut <= seg.size(); cut += (cut < 128 ? 1 : 97)) {
    TempDir server;
    std::string dir = server.path + "/journal";
    mkdir(dir.c_str(), 0755);
    testing::write_bytes(segment_path(server.path, 1),
                         std::vector<uint8_t>(seg.begin(), seg.begin() + cut));
    auto m = open_mirror(server.path);
    // Whole frames survive; a partial one is gone; no header, no segment.
    uint64_t whole = 0, seq = 0;
    for (const auto& f : c.frames)
      if (f.offset + f.length <= cut) {
        whole = f.offset + f.length;
        seq = f.last_seq;
      }
    if (cut < kSegmentHeaderSize) {
      CHECK(m->position().segment == 0);
      CHECK(access(segment_path(server.path, 1).c_str(), F_OK) != 0);
      continue;
    }
    CAPTURE(cut);
    CHECK(m->position().segment == 1);
    CHECK(m->position().size == (whole ? whole : kSegmentHeaderSize));
    CHECK(m->position().last_seq == seq);
    // The client resumes from there and the result is its segment again.
    uint64_t from = m->position().size;
    REQUIRE(m->append(1, from, seg.data() + from, last.offset + last.length - from));
    REQUIRE(m->sync());
    CHECK(read_bytes(segment_path(server.path, 1)) == seg);
  }
}

}  // namespace kvmcdp::journal
