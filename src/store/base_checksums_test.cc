// The base copy's block checksums: the file format, and what verify,
// restore and fold do with a base that was changed after they were taken.
#include "store/base_checksums.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include <nlohmann/json.hpp>

#include "cli/cli_test_util.h"
#include "base/crc32c.h"
#include "build/journal_fold.h"
#include "store/journal_test_util.h"
#include "journal/journal_writer.h"
#include "store/manifest.h"

namespace kvmcdp {
using namespace journal;
using namespace journal::testing;
using cli_testing::cli;
namespace fs = std::filesystem;

namespace {

// 5 blocks and a bit: random data, block 2 a hole, a short last block.
constexpr uint64_t kSize = 5 * kBaseBlock + 1000;

std::vector<uint8_t> base_image() {
  std::mt19937_64 rng(9);
  std::vector<uint8_t> img(kSize);
  for (auto& b : img) b = uint8_t(rng());
  std::fill(img.begin() + 2 * kBaseBlock, img.begin() + 3 * kBaseBlock, 0);
  return img;
}

void write_sparse(const std::string& path, const std::vector<uint8_t>& img) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(ftruncate(fd, off_t(img.size())) == 0);
  for (uint64_t b = 0; b < img.size(); b += kBaseBlock) {
    uint64_t n = std::min<uint64_t>(kBaseBlock, img.size() - b);
    bool zero = std::all_of(img.begin() + b, img.begin() + b + n, [](uint8_t x) { return !x; });
    if (!zero) REQUIRE(pwrite(fd, img.data() + b, n, off_t(b)) == ssize_t(n));
  }
  ::close(fd);
}

// A store whose base is base_image(), a few writes after it, and (unless
// `old`) the base's checksums, as protect writes them.
void make_store(const std::string& store, bool old = false) {
  fs::create_directory(store);
  write_sparse(store + "/base.raw", base_image());
  WriterOptions o;
  o.frame_raw_bytes = 2000;
  o.segment_max_bytes = 6000;
  auto w = JournalWriter::open(store, o);
  REQUIRE(w);
  std::mt19937_64 rng(3);
  for (uint64_t s = 1; s <= 40; s++) {
    std::vector<uint8_t> data(512);
    for (auto& b : data) b = uint8_t(rng());
    REQUIRE((*w)->append(write_rec(s, s * 4096, data)));
    if (s % 5 == 0) REQUIRE((*w)->commit());
  }
  REQUIRE((*w)->close());
  Manifest m;
  m.stream_id = 5;
  m.disk_size = kSize;
  m.base_complete = true;
  m.base_complete_time_ns = 1000;
  if (!old) REQUIRE(write_base_checksums(store, m));
  REQUIRE(write_manifest(store, m));
}

void flip_bit(const std::string& path, uint64_t off) {
  auto b = read_bytes(path);
  REQUIRE(off < b.size());
  b[off] ^= 0x10;
  write_bytes(path, b);
}

void check_one_error_line(const cli_testing::CliRun& run) {
  CHECK_MESSAGE(run.err.rfind("kvmcdp: error: ", 0) == 0, run.err);
  CHECK(run.err.find('\n') == run.err.size() - 1);
}

// verify and restore both refuse the store with exit 4; no output is left.
void check_refused(const std::string& store, const std::string& scratch, const std::string& says) {
  auto verify = cli({"journal", "verify", "--store", store}, scratch);
  CHECK_MESSAGE(verify.code == 4, verify.out, verify.err);
  CHECK_MESSAGE(verify.err.find(says) != std::string::npos, verify.err);
  check_one_error_line(verify);
  std::string out = scratch + "/out.raw";
  for (const char* seq : {"0", "40"}) {
    auto run = cli({"restore", "--quiet", "--store", store, "--seq", seq, "-o", out}, scratch);
    CHECK_MESSAGE(run.code == 4, run.err);
    check_one_error_line(run);
    CHECK_FALSE(fs::exists(out));
  }
}

}  // namespace

TEST_CASE("base checksums: the file round-trips, any change to it is damage") {
  BaseChecksums c;
  c.disk_size = 3 * kBaseBlock + 7;
  c.crcs = {1, 2, 3, 0xdeadbeef};
  std::string text = encode_base_checksums(c);
  CHECK(text.size() == 32 + 4 * 4 + 4);
  std::vector<uint8_t> bytes(text.begin(), text.end());
  auto back = decode_base_checksums(bytes, "x");
  REQUIRE_MESSAGE(back, back.status().message());
  CHECK(back->disk_size == c.disk_size);
  CHECK(back->crcs == c.crcs);
  for (size_t i = 0; i < bytes.size(); i++) {
    auto bad = bytes;
    bad[i] ^= 1;
    CAPTURE(i);
    CHECK(decode_base_checksums(bad, "x").status().kind() == ErrorKind::kDamaged);
  }
  for (size_t n : {size_t(0), size_t(10), bytes.size() - 1}) {
    CHECK(decode_base_checksums({bytes.begin(), bytes.begin() + long(n)}, "x").status().kind() ==
          ErrorKind::kDamaged);
  }
  auto longer = bytes;
  longer.push_back(0);
  CHECK(decode_base_checksums(longer, "x").status().kind() == ErrorKind::kDamaged);
}

TEST_CASE("base checksums: computed over holes without reading them, equal to the bytes'") {
  TempDir d;
  auto img = base_image();
  write_sparse(d.path + "/b.raw", img);
  auto c = compute_base_checksums(d.path + "/b.raw", kSize);
  REQUIRE_MESSAGE(c, c.status().message());
  REQUIRE(c->crcs.size() == 6);
  for (size_t i = 0; i < 6; i++) {
    uint64_t b = i * kBaseBlock, n = std::min<uint64_t>(kBaseBlock, kSize - b);
    CHECK(c->crcs[i] == crc32c(img.data() + b, n));
  }
  CHECK(c->crcs[2] == zero_block_crc(kBaseBlock));
  // A base of another size than the disk is refused.
  CHECK(compute_base_checksums(d.path + "/b.raw", kSize + 1).status().kind() ==
        ErrorKind::kDamaged);
}

TEST_CASE("base checksums: verify and restore refuse a changed base, naming the offset") {
  TempDir d;
  const std::string store = d.path + "/store";
  make_store(store);
  auto ok = cli({"journal", "verify", "--store", store}, d.path);
  REQUIRE_MESSAGE(ok.code == 0, ok.err);
  CHECK_MESSAGE(ok.out.find("base: 6 blocks checked") != std::string::npos, ok.out);
  const std::string base = store + "/base.raw";
  SUBCASE("a bit flip") {
    flip_bit(base, 3 * kBaseBlock + 12345);
    check_refused(store, d.path, "1 block of 6 bad, the first at byte offset 196608");
    auto j = cli({"journal", "verify", "--store", store, "--json"}, d.path);
    CHECK(j.code == 4);
    auto v = nlohmann::json::parse(j.out);
    CHECK(v["ok"] == false);
    CHECK(v["base"]["bad_blocks"] == 1);
    CHECK(v["base"]["first_bad_offset"] == 3 * kBaseBlock);
  }
  SUBCASE("two bad blocks, one of them in a hole") {
    flip_bit(base, 2 * kBaseBlock + 5);
    flip_bit(base, 4 * kBaseBlock + 5);
    check_refused(store, d.path, "2 blocks of 6 bad, the first at byte offset 131072");
  }
  SUBCASE("a range punched out (zeroes where data was)") {
    int fd = ::open(base.c_str(), O_WRONLY);
    REQUIRE(fd >= 0);
    REQUIRE(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, kBaseBlock) == 0);
    ::close(fd);
    check_refused(store, d.path, "byte offset 0");
  }
  SUBCASE("cut short or extended") {
    for (uint64_t size : {kSize - 1000, kSize - 1, kSize + 1}) {
      CAPTURE(size);
      fs::resize_file(base, size);
      check_refused(store, d.path, "holds");
    }
  }
  SUBCASE("the checksum file missing or damaged") {
    std::string crc = base_checksums_path(store, "base.raw");
    SUBCASE("missing") {
      fs::remove(crc);
      check_refused(store, d.path, "missing");
    }
    SUBCASE("damaged") {
      flip_bit(crc, 40);
      check_refused(store, d.path, "checksum mismatch");
    }
  }
  SUBCASE("unchanged, it restores") {
    auto run = cli({"restore", "--quiet", "--store", store, "--seq", "0", "-o", d.path + "/o.raw"},
                   d.path);
    CHECK_MESSAGE(run.code == 0, run.err);
    CHECK(read_bytes(d.path + "/o.raw") == base_image());
  }
}

TEST_CASE("base checksums: a store from before them is read, with a note") {
  TempDir d;
  const std::string store = d.path + "/store";
  make_store(store, true);
  auto ok = cli({"journal", "verify", "--store", store}, d.path);
  CHECK_MESSAGE(ok.code == 0, ok.err);
  CHECK_MESSAGE(ok.out.find("base: not checksummed (store predates checksums)") !=
                    std::string::npos,
                ok.out);
  CHECK(ok.err.find("error") == std::string::npos);
  auto run = cli({"restore", "--quiet", "--store", store, "--seq", "0", "-o", d.path + "/o.raw"},
                 d.path);
  CHECK_MESSAGE(run.code == 0, run.err);
  CHECK(read_bytes(d.path + "/o.raw") == base_image());
}

TEST_CASE("base checksums: a fold writes the new base's, and drops the old base's") {
  TempDir d;
  const std::string store = d.path + "/store";
  make_store(store, true);  // even a store from before checksums gets them
  auto plan = plan_fold(store, 30, 1000 + 30 * 10);
  REQUIRE_MESSAGE(plan, plan.status().message());
  REQUIRE_FALSE(plan->empty());
  OpLog log;
  REQUIRE(fold_journal(store, *plan, &log));
  auto m = read_manifest(store);
  REQUIRE(m);
  CHECK(m->extra.value("base_checksums", "") == "crc32c-64k");
  CHECK(fs::exists(base_checksums_path(store, m->base_image)));
  CHECK_FALSE(fs::exists(base_checksums_path(store, "base.raw")));
  auto ok = cli({"journal", "verify", "--store", store}, d.path);
  CHECK_MESSAGE(ok.code == 0, ok.err);
  CHECK_MESSAGE(ok.out.find("base: 6 blocks checked") != std::string::npos, ok.out);
  flip_bit(store + "/" + m->base_image, 5 * kBaseBlock + 3);
  auto verify = cli({"journal", "verify", "--store", store}, d.path);
  CHECK(verify.code == 4);
  CHECK_MESSAGE(verify.err.find("byte offset 327680") != std::string::npos, verify.err);
  auto run = cli({"restore", "--quiet", "--store", store, "--seq", "40", "-o", d.path + "/o.raw"},
                 d.path);
  CHECK(run.code == 4);
  CHECK_FALSE(fs::exists(d.path + "/o.raw"));
}

}  // namespace kvmcdp
