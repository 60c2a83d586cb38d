#include "capture/resync_compare.h"

#include <doctest/doctest.h>

#include <random>
#include <vector>

namespace kvmcdp {
namespace {

using wire::MsgHeader;
using wire::MsgType;
constexpr uint64_t kB = BlockFingerprints::kBlockSize;

// The journal's image of a 20-block disk (the last block 4000 bytes
// short of full) and its map.
struct Fixture {
  const uint64_t size = 20 * kB - 4000;
  std::vector<uint8_t> image;
  std::vector<ResyncTotals> done;
  ResyncCompare cmp;

  static std::vector<uint8_t> random_image(uint64_t size) {
    std::vector<uint8_t> img(size);
    std::mt19937_64 rng(11);
    for (auto& b : img) b = uint8_t(rng());
    return img;
  }
  static BlockFingerprints map_of(const std::vector<uint8_t>& img) {
    BlockFingerprints m(img.size());
    for (uint64_t b = 0; b < m.block_count(); b++) {
      uint64_t n = std::min<uint64_t>(kB, img.size() - b * kB);
      m.set(b, BlockFingerprints::digest(img.data() + b * kB, n));
    }
    return m;
  }
  Fixture()
      : image(random_image(size)),
        cmp(map_of(image), [this](const ResyncTotals& t) { done.push_back(t); }) {}

  // Passes a record through the compare; returns the header to journal
  // and sets *data to its payload.
  MsgHeader pass(MsgType type, uint16_t flags, uint64_t seq, uint64_t off, uint64_t len,
                 const uint8_t* payload, const uint8_t** data) {
    MsgHeader h{};
    h.magic = wire::kMagic;
    h.type = uint16_t(type);
    h.flags = flags;
    h.seq = seq;
    h.offset = type == MsgType::kGap ? 1 : off;
    h.length = type == MsgType::kGap ? 0 : len;
    h.payload_len = type == MsgType::kWrite ? uint32_t(len) : 0;
    *data = payload;
    cmp.on_record(&h, data);
    return h;
  }
  void gap(uint64_t seq) {
    const uint8_t* d;
    pass(MsgType::kGap, 0, seq, 0, 0, nullptr, &d);
  }
  // A resync record of `disk` (the disk as the filter reads it).
  MsgHeader resync(uint64_t seq, const std::vector<uint8_t>& disk, uint64_t off, uint64_t len,
                   const uint8_t** data) {
    return pass(MsgType::kWrite, wire::kFlagResync, seq, off, len, disk.data() + off, data);
  }
};

}  // namespace

TEST_CASE("resync compare: a resent range the journal holds is a WRITE of length 0") {
  Fixture f;
  f.gap(1);
  const uint8_t* data = nullptr;
  MsgHeader h = f.resync(2, f.image, 4 * kB, 12 * kB, &data);
  CHECK(h.type == uint16_t(MsgType::kWrite));
  CHECK(h.flags == wire::kFlagResync);
  CHECK(h.seq == 2);
  CHECK(h.offset == 4 * kB);  // kept: inside the disk
  CHECK(h.length == 0);
  CHECK(h.payload_len == 0);
  // The short last block is compared too.
  h = f.resync(3, f.image, 16 * kB, f.size - 16 * kB, &data);
  CHECK(h.length == 0);
  CHECK(f.cmp.totals().resent_bytes == 12 * kB + f.size - 16 * kB);
  CHECK(f.cmp.totals().journaled_bytes == 0);
}

TEST_CASE("resync compare: trimmed to the span of the blocks that differ") {
  Fixture f;
  f.gap(1);
  std::vector<uint8_t> disk = f.image;
  disk[5 * kB + 3] ^= 1;   // block 5
  disk[8 * kB - 1] ^= 1;   // block 7
  disk[19 * kB + 1] ^= 1;  // the short last block
  const uint8_t* data = nullptr;
  MsgHeader h = f.resync(2, disk, 4 * kB, 12 * kB, &data);
  CHECK(h.offset == 5 * kB);
  CHECK(h.length == 3 * kB);  // blocks 5..7, the equal block 6 between them too
  CHECK(h.payload_len == 3 * kB);
  CHECK(data == disk.data() + 5 * kB);
  h = f.resync(3, disk, 16 * kB, f.size - 16 * kB, &data);
  CHECK(h.offset == 19 * kB);
  CHECK(h.length == f.size - 19 * kB);
  CHECK(data == disk.data() + 19 * kB);
  CHECK(f.cmp.totals().journaled_bytes == 3 * kB + f.size - 19 * kB);
  // What was journaled is no longer vouched for: resent again (after a
  // reconnect, say), it is journaled again, even though it matches.
  h = f.resync(4, f.image, 4 * kB, 4 * kB, &data);
  CHECK(h.offset == 5 * kB);
  CHECK(h.length == 3 * kB);
}

TEST_CASE("resync compare: a guest write, write-zeroes or discard makes its blocks unknown") {
  Fixture f;
  f.gap(1);
  const uint8_t* data = nullptr;
  std::vector<uint8_t> small(10, 0);
  // The guest writes 10 bytes into block 2, zeroes part of block 9 and
  // discards part of block 12 ... and writes back the same bytes: the
  // journal has a record there that differs from the map either way.
  f.pass(MsgType::kWrite, 0, 2, 2 * kB + 100, 10, f.image.data() + 2 * kB + 100, &data);
  f.pass(MsgType::kWriteZeroes, 0, 3, 9 * kB + 5, 10, nullptr, &data);
  f.pass(MsgType::kDiscard, 0, 4, 12 * kB + kB - 1, 1, nullptr, &data);
  CHECK(f.cmp.map().known_count() == 20 - 3);
  MsgHeader h = f.resync(5, f.image, 0, 16 * kB, &data);
  CHECK(h.offset == 2 * kB);
  CHECK(h.length == 11 * kB);  // blocks 2..12
  CHECK(data == f.image.data() + 2 * kB);
}

TEST_CASE("resync compare: a range not on block boundaries is kept whole") {
  Fixture f;
  f.gap(1);
  const uint8_t* data = nullptr;
  MsgHeader h = f.resync(2, f.image, kB + 512, kB, &data);
  CHECK(h.offset == kB + 512);
  CHECK(h.length == kB);
  CHECK(data == f.image.data() + kB + 512);
  // A range ending inside a block (not at the disk's end) keeps that block.
  h = f.resync(3, f.image, 4 * kB, kB + 512, &data);
  CHECK(h.offset == 5 * kB);
  CHECK(h.length == 512);
}

TEST_CASE("resync compare: RESYNC_DONE ends it and reports once") {
  Fixture f;
  const uint8_t* data = nullptr;
  // Before the continuation's GAP nothing is compared (and the block
  // is then unknown, like any other write's).
  MsgHeader h = f.resync(1, f.image, 10 * kB, kB, &data);
  CHECK(h.length == kB);
  f.gap(2);
  f.gap(2);  // the same GAP resent after a reconnect
  CHECK(f.cmp.comparing());
  std::vector<uint8_t> disk = f.image;
  disk[3 * kB] ^= 1;
  h = f.resync(3, disk, 0, 4 * kB, &data);
  CHECK(h.length == kB);
  f.pass(MsgType::kResyncDone, 0, 4, 0, 0, nullptr, &data);
  CHECK_FALSE(f.cmp.comparing());
  REQUIRE(f.done.size() == 1);
  CHECK(f.done[0].completed);
  CHECK(f.done[0].resent_bytes == 4 * kB);
  CHECK(f.done[0].journaled_bytes == kB);
  // A later resync (of another gap) is journaled whole.
  f.gap(5);
  h = f.resync(6, f.image, 0, 4 * kB, &data);
  CHECK(h.length == 4 * kB);
  CHECK(f.done.size() == 1);
}

TEST_CASE("resync compare: a second GAP (records lost) drops the map") {
  Fixture f;
  f.gap(1);
  const uint8_t* data = nullptr;
  MsgHeader h = f.resync(2, f.image, 0, 4 * kB, &data);
  CHECK(h.length == 0);
  f.gap(7);
  CHECK_FALSE(f.cmp.comparing());
  REQUIRE(f.done.size() == 1);
  CHECK_FALSE(f.done[0].completed);
  h = f.resync(8, f.image, 0, 4 * kB, &data);
  CHECK(h.offset == 0);
  CHECK(h.length == 4 * kB);
  CHECK(data == f.image.data());
}

}  // namespace kvmcdp
