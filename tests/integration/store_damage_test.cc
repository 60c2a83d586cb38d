// A store written by a real protect of a real QEMU, then damaged on
// purpose.  Whatever happens to its files (bit flips, cuts, zeroed
// ranges, deleted or swapped files), `journal verify` and `restore` must
// say so or give back the exact disk: never a wrong image with exit 0,
// never a crash or a hang.  The random cases come from a seeded PRNG
// whose seed is printed (KVMCDP_DAMAGE_SEED repeats a run).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <random>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "harness/protect_process.h"
#include "harness/qemu_process.h"
#include "harness/vm_io.h"

namespace kvmcdp::test {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kDiskSize = 16ull << 20;

struct Truth {
  uint64_t seq;
  std::string md5;
};

// A 16 MiB disk (random data and holes) protected through a few rounds of
// writes, 1 MiB of random data each, so the journal has several 1 MiB
// segments; the disk's MD5 after each round.  Protect is stopped at the end.
struct RealStore {
  std::string disk, store;
  std::vector<Truth> truth;
  uint64_t base_seq = 0;

  RealStore(const TempDir& dir, int rounds) : disk(dir.file("disk.raw")), store(dir.file("store")) {
    REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + disk, "bs=1M", "count=4", "seek=2",
                         "status=none"})
                .status == 0);
    REQUIRE(run_command({"truncate", "-s", std::to_string(kDiskSize), disk}).status == 0);
    std::string random = dir.file("random.bin");
    REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + random, "bs=1M", "count=1",
                         "status=none"})
                .status == 0);
    auto vm = start_vm(dir, disk);
    ProtectProcess protect(vm->tool_socket(), "vd0", store, {"--segment-size", "1"});
    REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
    std::mt19937_64 rng(21);
    for (int r = 0; r < rounds; ++r) {
      uint64_t off = (rng() % ((kDiskSize - (1 << 20)) >> 16)) << 16;
      qemu_io(*vm, fmt::format("write -s {} {} {}", random, off, 1 << 20));
      for (int i = 0; i < 6; ++i) {
        uint64_t len = (1 + rng() % 32) * 4096;
        uint64_t o = (rng() % ((kDiskSize - len) / 4096)) * 4096;
        if (rng() % 5 == 0) qemu_io(*vm, fmt::format("write -z {} {}", o, len));
        else qemu_io(*vm, fmt::format("write -P {} {} {}", rng() % 255 + 1, o, len));
      }
      wait_acked(*vm);
      truth.push_back({filter_seq(*vm), md5_of_file(disk)});
    }
    REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
    auto m = nlohmann::json::parse(read_file(store + "/manifest.json"));
    base_seq = m["base_complete_seq"].get<uint64_t>();
  }
};

// The command's exit status under a time limit: 124 if it hung.
CommandOutput run_limited(std::vector<std::string> argv, int seconds) {
  argv.insert(argv.begin(), {"timeout", "-s", "KILL", std::to_string(seconds)});
  return run_command(argv);
}

void flip_bit(const std::string& path, uint64_t off, int bit) {
  int fd = ::open(path.c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  uint8_t b = 0;
  REQUIRE(pread(fd, &b, 1, off_t(off)) == 1);
  b ^= uint8_t(1u << bit);
  REQUIRE(pwrite(fd, &b, 1, off_t(off)) == 1);
  ::close(fd);
}

void zero_range(const std::string& path, uint64_t off, uint64_t len) {
  int fd = ::open(path.c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  std::vector<uint8_t> z(len, 0);
  REQUIRE(pwrite(fd, z.data(), len, off_t(off)) == ssize_t(len));
  ::close(fd);
}

uint64_t size_of(const std::string& path) { return fs::file_size(path); }

// The journal's files.
struct StoreFiles {
  std::vector<std::string> segments, indexes;
};
StoreFiles files_of(const std::string& store) {
  StoreFiles f;
  for (const auto& e : fs::directory_iterator(store + "/journal")) {
    std::string p = e.path().string();
    if (p.size() > 4 && p.substr(p.size() - 4) == ".seg") f.segments.push_back(p);
    if (p.size() > 4 && p.substr(p.size() - 4) == ".idx") f.indexes.push_back(p);
  }
  std::sort(f.segments.begin(), f.segments.end());
  std::sort(f.indexes.begin(), f.indexes.end());
  return f;
}

// Exit statuses kvmcdp documents (man/kvmcdp.1, EXIT STATUS).
bool documented(int status) { return status >= 0 && status <= 9; }

}  // namespace

TEST_CASE("base checksums: a real store's base, bit-flipped or cut, is refused by verify and restore") {
  TempDir dir;
  RealStore rs(dir, 2);
  auto ok = run_command({KVMCDP_BINARY, "journal", "verify", "--store", rs.store});
  REQUIRE_MESSAGE(ok.status == 0, ok.output);
  CHECK_MESSAGE(ok.output.find("base: 256 blocks checked") != std::string::npos, ok.output);
  std::string out = dir.file("out.raw");
  std::string seq = std::to_string(rs.base_seq);

  SUBCASE("a bit flip in the base's data") {
    // In the random data the base copy holds at 2-6 MiB, which no record
    // up to base_complete_seq covers.
    flip_bit(rs.store + "/base.raw", (3 << 20) + 12345, 3);
    auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", rs.store});
    CHECK_MESSAGE(verify.status == 4, verify.output);
    CHECK_MESSAGE(verify.output.find("1 block of 256 bad, the first at byte offset 3145728") !=
                      std::string::npos,
                  verify.output);
    auto js = run_command({KVMCDP_BINARY, "journal", "verify", "--json", "--store", rs.store});
    CHECK(js.status == 4);
    auto j = nlohmann::json::parse(js.output.substr(js.output.find('{')), nullptr, false);
    REQUIRE_MESSAGE(j.is_object(), js.output);
    CHECK(j["ok"] == false);
    CHECK(j["base"]["bad_blocks"] == 1);
    CHECK(j["base"]["first_bad_offset"] == 3145728);
    for (const std::string& s : {seq, std::to_string(rs.truth.back().seq)}) {
      auto r = run_command({KVMCDP_BINARY, "restore", "--quiet", "--store", rs.store, "--seq", s,
                            "-o", out});
      CHECK_MESSAGE(r.status == 4, r.output);
      CHECK_MESSAGE(r.output.find("byte offset 3145728") != std::string::npos, r.output);
      CHECK_FALSE(fs::exists(out));
    }
    auto q = run_command({KVMCDP_BINARY, "restore", "--quiet", "--format", "qcow2", "--store",
                          rs.store, "--seq", seq, "-o", dir.file("out.qcow2")});
    CHECK_MESSAGE(q.status == 4, q.output);
    CHECK_FALSE(fs::exists(dir.file("out.qcow2")));
  }
  SUBCASE("the base cut short") {
    fs::resize_file(rs.store + "/base.raw", kDiskSize - 65536);
    auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", rs.store});
    CHECK_MESSAGE(verify.status == 4, verify.output);
    auto r = run_command({KVMCDP_BINARY, "restore", "--quiet", "--store", rs.store, "--seq", seq,
                          "-o", out});
    CHECK_MESSAGE(r.status == 4, r.output);
    CHECK_FALSE(fs::exists(out));
  }
}

TEST_CASE("store damage: random damage to a real store never restores a wrong image") {
  TempDir dir;
  RealStore rs(dir, 5);
  const std::string out = dir.file("out.raw");
  // Undamaged, every recorded point restores exactly.
  for (const auto& t : rs.truth) check_restore(dir, rs.store, t.seq, t.md5);
  fs::remove(dir.file("restored.raw"));
  StoreFiles pristine = files_of(rs.store);
  REQUIRE(pristine.segments.size() >= 4);
  REQUIRE(pristine.indexes.size() >= 3);

  uint64_t seed = std::random_device{}();
  if (const char* s = getenv("KVMCDP_DAMAGE_SEED")) seed = std::stoull(s);
  MESSAGE("store damage seed: ", seed, " (KVMCDP_DAMAGE_SEED=", seed, " repeats it)");
  std::mt19937_64 rng(seed);

  const std::vector<std::string> kinds = {"bit flip",        "truncate",     "zero range",
                                          "delete",          "swap segments", "swap indexes",
                                          "extend"};
  std::map<std::string, int> per_kind, per_target, verify_codes, restore_codes;
  int wrong = 0, crashes = 0, cases = 0, exact = 0;
  auto started = std::chrono::steady_clock::now();
  const std::string copy = dir.file("case");
  for (; cases < 150; ++cases) {
    if (std::chrono::steady_clock::now() - started > std::chrono::seconds(120)) break;
    run_command({"rm", "-rf", copy});
    REQUIRE(run_command({"cp", "-a", "--sparse=always", rs.store, copy}).status == 0);
    StoreFiles f = files_of(copy);
    std::string kind = kinds[rng() % kinds.size()];
    // Each kind of file as often as the others, whatever their numbers.
    std::vector<std::string> singles;
    for (const char* n : {"base.raw", "base.raw.crc", "manifest.json"})
      if (fs::exists(copy + "/" + n)) singles.push_back(copy + "/" + n);
    size_t which = rng() % (2 + singles.size());
    std::string target = which == 0   ? f.segments[rng() % f.segments.size()]
                         : which == 1 ? f.indexes[rng() % f.indexes.size()]
                                     : singles[which - 2];
    std::string what;
    if (kind == "swap segments" || kind == "swap indexes") {
      auto& v = kind == "swap segments" ? f.segments : f.indexes;
      size_t a = rng() % v.size(), b = (a + 1 + rng() % (v.size() - 1)) % v.size();
      fs::rename(v[a], copy + "/tmp-swap");
      fs::rename(v[b], v[a]);
      fs::rename(copy + "/tmp-swap", v[b]);
      target = v[a];
      what = fmt::format("{} <-> {}", fs::path(v[a]).filename().string(),
                         fs::path(v[b]).filename().string());
    } else {
      uint64_t size = size_of(target);
      if (kind == "delete" || size == 0) {
        kind = "delete";
        fs::remove(target);
        what = "deleted";
      } else if (kind == "bit flip") {
        uint64_t off = rng() % size;
        int bit = int(rng() % 8);
        flip_bit(target, off, bit);
        what = fmt::format("bit {} of byte {}", bit, off);
      } else if (kind == "truncate") {
        uint64_t to = rng() % size;
        fs::resize_file(target, to);
        what = fmt::format("cut to {} of {} bytes", to, size);
      } else if (kind == "zero range") {
        uint64_t off = rng() % size, len = std::min<uint64_t>(size - off, 1 + rng() % 65536);
        zero_range(target, off, len);
        what = fmt::format("{} bytes zeroed at {}", len, off);
      } else {  // extend
        uint64_t len = 1 + rng() % 8192;
        fs::resize_file(target, size + len);
        what = fmt::format("{} zero bytes appended", len);
      }
    }
    std::string role = fs::path(target).extension().string();
    if (role.empty() || role == ".json") role = fs::path(target).filename().string();
    per_kind[kind]++;
    per_target[role]++;
    const Truth& t = rs.truth[rng() % rs.truth.size()];
    std::string label =
        fmt::format("case {}: {} in {} ({}), restore --seq {}", cases, kind,
                    fs::path(target).filename().string(), what, t.seq);

    auto verify = run_limited({KVMCDP_BINARY, "journal", "verify", "--store", copy}, 60);
    verify_codes[verify.status == 0 ? "0 ok" : verify.status == 4 ? "4 damaged"
                                                                  : std::to_string(verify.status)]++;
    CHECK_MESSAGE(documented(verify.status), label, ": verify: ", verify.output);
    CHECK_MESSAGE(verify.output.find("terminate called") == std::string::npos, label);

    fs::remove(out);
    auto restore = run_limited({KVMCDP_BINARY, "restore", "--quiet", "--store", copy, "--seq",
                                std::to_string(t.seq), "-o", out},
                               120);
    std::string outcome;
    if (!documented(restore.status)) {
      crashes++;
      outcome = fmt::format("crash/hang {}", restore.status);
    } else if (restore.status == 0) {
      bool same = md5_of_file(out) == t.md5;
      if (!same) wrong++;
      else exact++;
      outcome = same ? "0 exact image" : "0 WRONG IMAGE";
    } else {
      outcome = fmt::format("{} refused", restore.status);
      CHECK_MESSAGE(!fs::exists(out), label, ": a refused restore left its output");
    }
    restore_codes[outcome]++;
    CHECK_MESSAGE(documented(restore.status), label, ": restore: ", restore.output);
    CHECK_MESSAGE(outcome != "0 WRONG IMAGE", label, ": restore exited 0 with a wrong image",
                  " (verify said ", verify.status, ": ", verify.output, ")");
  }
  run_command({"rm", "-rf", copy});

  std::string tally = fmt::format("store damage: {} cases, seed {}\n", cases, seed);
  for (const auto& [k, n] : per_kind) tally += fmt::format("  kind   {:<14} {}\n", k, n);
  for (const auto& [k, n] : per_target) tally += fmt::format("  file   {:<14} {}\n", k, n);
  for (const auto& [k, n] : verify_codes) tally += fmt::format("  verify {:<14} {}\n", k, n);
  for (const auto& [k, n] : restore_codes) tally += fmt::format("  restore {:<16} {}\n", k, n);
  MESSAGE(tally);
  CHECK(wrong == 0);
  CHECK(crashes == 0);
}

}  // namespace kvmcdp::test
