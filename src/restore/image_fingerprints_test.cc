// The fingerprints of a store's image, and the whole compare resync on a
// real journal: a continuation whose resync was trimmed (records of length
// 0 included) restores, verifies and lists its points like one journaled
// in full.
#include "restore/image_fingerprints.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <random>

#include "capture/resync_compare.h"
#include "journal/journal_codec.h"
#include "journal/journal_writer.h"
#include "restore/restore_engine.h"
#include "store/journal_ranges.h"
#include "store/journal_reader.h"
#include "store/journal_test_util.h"

namespace kvmcdp {
using namespace journal;
using namespace journal::testing;
using wire::MsgHeader;
using wire::MsgType;

namespace {

constexpr uint64_t kB = BlockFingerprints::kBlockSize;

// A store of `size` bytes: a base of 0x11 with random data in every third
// block, then `writes` random writes; returns the image at its last seq.
std::vector<uint8_t> make_store(const std::string& dir, uint64_t size, uint64_t writes,
                                std::mt19937_64& rng) {
  std::vector<uint8_t> img(size, 0x11);
  for (uint64_t b = 0; b * kB < size; b += 3)
    for (uint64_t i = b * kB; i < std::min(size, (b + 1) * kB); i++) img[i] = uint8_t(rng());
  write_bytes(dir + "/base.raw", img);
  auto w = JournalWriter::open(dir, segmented_store_options());
  REQUIRE(w);
  for (uint64_t s = 1; s <= writes; s++) {
    uint64_t off = rng() % size, len = std::min<uint64_t>(1 + rng() % 20000, size - off);
    Record r = write_rec(s, off, std::vector<uint8_t>(len));
    for (auto& b : r.data) b = uint8_t(rng());
    std::copy(r.data.begin(), r.data.end(), img.begin() + long(off));
    REQUIRE((*w)->append(std::move(r)));
  }
  REQUIRE((*w)->commit());
  REQUIRE((*w)->close());
  write_store_manifest(dir, size, 1);
  return img;
}

std::vector<uint8_t> restored(const std::string& dir, uint64_t seq) {
  std::string out = dir + "/../restored.raw";
  REQUIRE(restore(dir, seq, out));
  return read_bytes(out);
}

}  // namespace

TEST_CASE("image fingerprints: the blocks of the restored image") {
  TempDir d;
  std::mt19937_64 rng(5);
  const uint64_t size = 12 * kB + 333;
  std::string store = d.path + "/store";
  std::filesystem::create_directory(store);
  auto img = make_store(store, size, 40, rng);
  auto files = [&] {
    size_t n = 0;
    for (auto& e : std::filesystem::recursive_directory_iterator(store)) n += e.is_regular_file();
    return n;
  };
  (void)fingerprint_image(store, 40);  // creates readers.lock, the one file it keeps
  const size_t before = files();
  auto map = fingerprint_image(store, 40);
  REQUIRE(map);
  REQUIRE(map->block_count() == 13);
  CHECK(map->known_count() == 13);
  for (uint64_t b = 0; b < 13; b++) {
    uint64_t n = std::min(kB, size - b * kB);
    CHECK(map->matches(b, img.data() + b * kB, n));
  }
  // Nothing is left in the store (the image was an unnamed temp file).
  CHECK(files() == before);
  // Not a recoverable point: said so, nothing computed.
  auto bad = fingerprint_image(store, 41);
  REQUIRE_FALSE(bad);
  CHECK(bad.status().kind() == ErrorKind::kNotRecoverable);
}

TEST_CASE("image fingerprints: a trimmed continuation restores exactly") {
  TempDir d;
  std::mt19937_64 rng(9);
  const uint64_t size = 56 * kB + 5000;
  std::string store = d.path + "/store";
  std::filesystem::create_directory(store);
  auto img = make_store(store, size, 60, rng);
  auto map = fingerprint_image(store, 60);
  REQUIRE(map);
  std::vector<ResyncTotals> done;
  ResyncCompare cmp(std::move(*map), [&](const ResyncTotals& t) { done.push_back(t); });

  // While protect was away the guest changed blocks 3 and 30; during the
  // resync it writes into block 10 (before its resync record) and 20
  // (after it), and rewrites a part of block 25 with what it holds
  // (before its resync record: the block is journaled all the same).
  std::vector<uint8_t> disk = img;
  disk[3 * kB + 9] ^= 0xff;
  for (uint64_t i = 30 * kB; i < 31 * kB; i++) disk[i] = uint8_t(rng());
  auto w = JournalWriter::open(store, segmented_store_options());
  REQUIRE(w);
  uint64_t seq = 61;
  auto append = [&](MsgHeader h, const uint8_t* payload) {
    h.seq = seq++;
    h.time_ns = 1000 + h.seq * 10;
    cmp.on_record(&h, &payload);
    REQUIRE((*w)->append(view_of(h, payload)));
    return h;
  };
  auto msg = [](MsgType t, uint16_t flags, uint64_t off, uint64_t len) {
    MsgHeader h{};
    h.magic = wire::kMagic;
    h.type = uint16_t(t);
    h.flags = flags;
    h.offset = off;
    h.length = len;
    h.payload_len = t == MsgType::kWrite ? uint32_t(len) : 0;
    return h;
  };
  auto guest_write = [&](uint64_t off, std::vector<uint8_t> bytes) {
    std::copy(bytes.begin(), bytes.end(), disk.begin() + long(off));
    append(msg(MsgType::kWrite, 0, off, bytes.size()), disk.data() + off);
  };
  append(msg(MsgType::kGap, 0, 61, 0), nullptr);
  std::vector<uint64_t> zero_length;
  for (uint64_t off = 0; off < size; off += 16 * kB) {
    if (off == 0) guest_write(10 * kB + 7, {1, 2, 3});
    if (off == 16 * kB)
      guest_write(25 * kB, std::vector<uint8_t>(img.begin() + long(25 * kB),
                                                img.begin() + long(25 * kB + 9)));
    if (off == 32 * kB) guest_write(20 * kB, {4, 5});
    uint64_t len = std::min(16 * kB, size - off);
    MsgHeader h = append(msg(MsgType::kWrite, wire::kFlagResync, off, len), disk.data() + off);
    if (h.length == 0) zero_length.push_back(h.seq);
  }
  uint64_t done_seq = append(msg(MsgType::kResyncDone, 0, 0, 0), nullptr).seq;
  const std::vector<uint8_t> at_done = disk;
  guest_write(33 * kB, {7});
  REQUIRE((*w)->commit());
  REQUIRE((*w)->close());

  // Blocks 3 and 10 differ in the first record (3..10 journaled), 25 and
  // 30 in the second (25..30); the third and the short fourth are equal.
  REQUIRE(done.size() == 1);
  CHECK(done[0].completed);
  CHECK(done[0].resent_bytes == size);
  CHECK(done[0].journaled_bytes == 8 * kB + 6 * kB);
  CHECK(zero_length.size() == 2);

  CHECK(restored(store, done_seq) == at_done);
  CHECK(restored(store, seq - 1) == disk);
  CHECK(restored(store, 60) == img);
  auto report = verify_journal(store);
  REQUIRE(report);
  CHECK(report->ok());
  CHECK(report->last_seq == seq - 1);
  auto reader = JournalReader::open(store);
  REQUIRE(reader);
  auto ranges = recoverable_ranges(**reader, 1, 1010);
  REQUIRE(ranges);
  REQUIRE(ranges->size() == 2);
  CHECK(ranges->front().last_seq == 60);
  CHECK(ranges->back().first_seq == done_seq);
  CHECK(ranges->back().last_seq == seq - 1);
}

}  // namespace kvmcdp
