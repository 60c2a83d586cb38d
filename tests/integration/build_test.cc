// kvmcdp build / prune against a real, patched QEMU.  A VM (no guest: -S)
// gets mixed writes through HMP's qemu-io while kvmcdp protect journals
// them; at each checkpoint the disk's MD5 and the filter's seq are kept.
// Then: built nodes hold exactly their points, a restore from a built node
// equals the full replay and reads less of the journal, and prune keeps
// exactly what its policy says with every kept image unchanged.
#include <algorithm>
#include <filesystem>
#include <chrono>
#include <map>
#include <random>
#include <regex>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "harness/protect_process.h"
#include "harness/qemu_process.h"
#include "harness/vm_io.h"

namespace kvmcdp::test {
namespace {

constexpr uint64_t kDiskSize = 32ull << 20;

struct Checkpoint {
  uint64_t seq;
  std::string md5;
  std::string time;  // ISO 8601, taken right after the checkpoint's seq
};

// Writes (hot spots rewritten often, so a full replay reads much more than
// the tail after a node), write-zeroes with and without unmap, discards;
// offsets and lengths are multiples of `align`.
void random_round(QemuProcess& vm, std::mt19937_64& rng, uint64_t align) {
  for (int i = 0; i < 10; ++i) {
    uint64_t len = (1 + rng() % (131072 / align)) * align;
    uint64_t off = (rng() % ((kDiskSize - len) / align)) * align;
    switch (rng() % 8) {
      case 0: qemu_io(vm, fmt::format("write -z {} {}", off, len)); break;
      case 1: qemu_io(vm, fmt::format("write -z -u {} {}", off, len)); break;
      case 2: qemu_io(vm, fmt::format("discard {} {}", off, len)); break;
      default: qemu_io(vm, fmt::format("write -P {} {} {}", rng() % 255 + 1, off, len));
    }
  }
}

// A VM protected into DIR/store.  With `random_mib`, each round also
// writes that many MiB of incompressible data and protect rotates segments
// every MiB, so the journal spans many segments (for folding).
struct ProtectedVm {
  std::string disk, store;
  std::unique_ptr<QemuProcess> vm;
  std::unique_ptr<ProtectProcess> protect;
  std::mt19937_64 rng{5};
  uint64_t random_mib = 0;
  uint64_t align = 512;
  std::string random_file;

  ProtectedVm(TempDir& dir, uint64_t mib) : disk(dir.file("disk.raw")), store(dir.file("store")),
                                            random_mib(mib) {
    REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + disk, "bs=1M", "count=8"}).status == 0);
    REQUIRE(run_command({"truncate", "-s", std::to_string(kDiskSize), disk}).status == 0);
    vm = start_vm(dir, disk);
    std::vector<std::string> extra;
    if (mib) {
      random_file = dir.file("random.bin");
      REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + random_file, "bs=1M",
                           "count=" + std::to_string(mib)}).status == 0);
      extra = {"--segment-size", "1"};
    }
    protect = std::make_unique<ProtectProcess>(vm->tool_socket(), "vd0", store, extra);
    REQUIRE_MESSAGE(protect->wait_base_complete(std::chrono::seconds(60)), protect->output());
  }
  // One round of writes; its checkpoint once protect has acknowledged it.
  Checkpoint round() {
    if (random_mib) {
      uint64_t len = random_mib << 20;
      uint64_t off = (rng() % ((kDiskSize - len) >> 16)) << 16;
      qemu_io(*vm, fmt::format("write -s {} {} {}", random_file, off, len));
    }
    random_round(*vm, rng, align);
    wait_acked(*vm);
    return {filter_seq(*vm), md5_of_file(disk), iso_now()};
  }
};

// A store protected through `rounds` rounds, one checkpoint after each.
struct Protected {
  std::string store;
  std::vector<Checkpoint> points;
};
Protected make_store(TempDir& dir, int rounds, int pause_ms = 0, uint64_t random_mib = 0,
                     uint64_t align = 512) {
  ProtectedVm pv(dir, random_mib);
  pv.align = align;
  Protected p{pv.store, {}};
  for (int round = 0; round < rounds; ++round) {
    p.points.push_back(pv.round());
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
  }
  REQUIRE_MESSAGE(pv.protect->stop() == 0, pv.protect->output());
  return p;
}

// The full image of a node: its chain converted to raw by qemu-img.
std::string node_md5(TempDir& dir, const std::string& qcow2) {
  std::string out = dir.file("node.raw");
  auto r = run_command({qemu_bin("qemu-img"), "convert", "-O", "raw", qcow2, out});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  return md5_of_file(out);
}

struct Restored {
  std::string md5;
  uint64_t journal_read = 0;  // compressed journal bytes read
  uint64_t record_bytes = 0;  // bytes written from journal records
  std::string output;
};
Restored restore_seq(TempDir& dir, const std::string& store, uint64_t seq,
                     std::vector<std::string> extra = {}) {
  std::string out = dir.file(fmt::format("r-{}.raw", seq));
  std::vector<std::string> argv = {KVMCDP_BINARY, "restore", "--force", "--store", store,
                                   "--seq", std::to_string(seq), "-o", out};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto r = run_command(argv);
  REQUIRE_MESSAGE(r.status == 0, r.output);
  std::smatch m;
  REQUIRE_MESSAGE(std::regex_search(r.output, m, std::regex("journal read: (\\d+) bytes")),
                  r.output);
  std::smatch d;
  REQUIRE(std::regex_search(r.output, d, std::regex("\\(raw\\): (\\d+) bytes from the journal")));
  return {md5_of_file(out), std::stoull(m[1]), std::stoull(d[1]), r.output};
}

std::vector<std::string> tree_files(const std::string& store) {
  auto r = run_command({"sh", "-c", "cd " + store + "/tree && ls *.qcow2"});
  std::vector<std::string> out;
  std::string line;
  for (char c : r.output + "\n") {
    if (c != '\n') line += c;
    else if (!line.empty()) out.push_back(std::exchange(line, ""));
  }
  return out;
}

struct JournalSize {
  uint64_t segments = 0, bytes = 0;
  uint64_t first_seq = 0;  // the first recoverable point
};
JournalSize journal_size(const std::string& store) {
  auto r = run_command({KVMCDP_BINARY, "status", "--json", "--store", store});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  auto j = json::parse(r.output);
  return {j["segments"], j["compressed_bytes"], j["recoverable"][0]["first_seq"]};
}

void build_all(const std::string& store, const std::vector<Checkpoint>& pts) {
  std::vector<std::string> argv = {KVMCDP_BINARY, "build", "--store", store};
  for (const auto& c : pts) argv.insert(argv.end(), {"--seq", std::to_string(c.seq)});
  auto b = run_command(argv);
  REQUIRE_MESSAGE(b.status == 0, b.output);
}

// After a fold: no intent left, and the manifest's base is the only base file.
void check_one_base(const std::string& store) {
  CHECK(!std::filesystem::exists(store + "/fold.json"));
  auto m = json::parse(run_command({"cat", store + "/manifest.json"}).output);
  std::string base = m["base_image"];
  // The base and its block checksums, nothing of an older base.
  auto ls = run_command({"sh", "-c", "cd " + store + " && ls base*.raw*"});
  CHECK_MESSAGE(ls.output == base + "\n" + base + ".crc\n", ls.output);
}

}  // namespace

TEST_CASE("build: a restore from a built node equals the full replay and reads less journal") {
  TempDir dir;
  Protected p = make_store(dir, 6);
  const auto& pts = p.points;

  // Full replay first (no tree yet).
  std::map<uint64_t, Restored> full;
  for (const auto& c : pts) {
    full[c.seq] = restore_seq(dir, p.store, c.seq);
    CHECK_MESSAGE(full[c.seq].md5 == c.md5, "seq ", c.seq);
    CHECK(full[c.seq].output.find("the rest from the base") != std::string::npos);
  }

  // --overlay needs a built node to stand on: none yet.
  auto none = run_command({KVMCDP_BINARY, "restore", "--overlay", "--store", p.store, "--latest",
                           "-o", dir.file("none.qcow2")});
  CHECK_MESSAGE(none.status == 7, none.output);
  CHECK(none.output.find("kvmcdp build") != std::string::npos);
  CHECK(!std::filesystem::exists(dir.file("none.qcow2")));

  auto b = run_command({KVMCDP_BINARY, "build", "--store", p.store, "--seq",
                        std::to_string(pts[1].seq), "--seq", std::to_string(pts[3].seq)});
  REQUIRE_MESSAGE(b.status == 0, b.output);
  CHECK(b.output.find("created the tree") != std::string::npos);
  std::string n1 = fmt::format("{}/tree/seq-{}.qcow2", p.store, pts[1].seq);
  std::string n3 = fmt::format("{}/tree/seq-{}.qcow2", p.store, pts[3].seq);
  CHECK(node_md5(dir, n1) == pts[1].md5);
  CHECK(node_md5(dir, n3) == pts[3].md5);
  for (const auto& f : tree_files(p.store)) {
    auto chk = run_command({qemu_bin("qemu-img"), "check", p.store + "/tree/" + f});
    CHECK_MESSAGE(chk.status == 0, f, ": ", chk.output);
  }
  auto info = run_command({qemu_bin("qemu-img"), "info", "--output=json", n3});
  CHECK(info.output.find(fmt::format("\"backing-filename\": \"seq-{}.qcow2\"", pts[1].seq)) !=
        std::string::npos);
  auto check = run_command({KVMCDP_BINARY, "snapshot", "check", "--tree", p.store + "/tree"});
  CHECK_MESSAGE(check.status == 0, check.output);
  // A store's tree has no VM: its newest node is only the newest, and no
  // node is a disk anything writes into or reads through.
  auto listed = run_command({KVMCDP_BINARY, "snapshot", "list", "--tree", p.store + "/tree"});
  CHECK_MESSAGE(listed.output.find(fmt::format("seq-{}", pts[3].seq)) != std::string::npos,
                listed.output);
  CHECK_MESSAGE(listed.output.find("(newest)") != std::string::npos, listed.output);
  CHECK_MESSAGE(listed.output.find("VM") == std::string::npos, listed.output);
  CHECK_MESSAGE(listed.output.find("current disk") == std::string::npos, listed.output);
  CHECK_MESSAGE(listed.output.find("in use") == std::string::npos, listed.output);
  // Building the same point again changes nothing.
  auto again = run_command({KVMCDP_BINARY, "build", "--store", p.store, "--seq",
                            std::to_string(pts[3].seq)});
  CHECK(again.status == 0);
  CHECK(again.output.find("already node") != std::string::npos);

  // By default a raw restore starts from a node only when that reads less
  // than the journal back to the base; here the journal is a few KiB and
  // the node's chain some MiB, so the base it is.
  for (size_t i = 0; i < pts.size(); ++i) {
    Restored r = restore_seq(dir, p.store, pts[i].seq);
    CHECK_MESSAGE(r.md5 == pts[i].md5, "seq ", pts[i].seq);
    CHECK_MESSAGE(r.output.find("the rest from the base") != std::string::npos, r.output);
  }

  // --from-node: every point again, same MD5; from a node, less of the
  // journal is read.
  for (size_t i = 0; i < pts.size(); ++i) {
    Restored r = restore_seq(dir, p.store, pts[i].seq, {"--from-node"});
    CHECK_MESSAGE(r.md5 == pts[i].md5, "seq ", pts[i].seq);
    if (i >= 1) {
      size_t node = i >= 3 ? 3 : 1;
      CHECK_MESSAGE(r.output.find(fmt::format("restore point seq-{}", pts[node].seq)) !=
                        std::string::npos, r.output);
      CHECK_MESSAGE(r.journal_read < full[pts[i].seq].journal_read, r.output);
      CHECK(r.record_bytes < full[pts[i].seq].record_bytes);
      MESSAGE("seq ", pts[i].seq, ": full replay read ", full[pts[i].seq].journal_read,
              " journal bytes (", full[pts[i].seq].record_bytes, " bytes of records); from node seq-",
              pts[node].seq, ": ", r.journal_read, " (", r.record_bytes, ")");
    }
    if (i == 1 || i == 3) CHECK(r.journal_read == 0);
  }

  // --overlay: a qcow2 on the nearest node with only the journal after it.
  for (size_t i = 0; i < pts.size(); ++i) {
    std::string out = dir.file(fmt::format("o-{}.qcow2", pts[i].seq));
    auto r = run_command({KVMCDP_BINARY, "restore", "--overlay", "--store", p.store, "--seq",
                          std::to_string(pts[i].seq), "-o", out});
    REQUIRE_MESSAGE(r.status == 0, r.output);
    // Before the first built point, the tree's root (the base) serves.
    std::string node = i >= 3 ? fmt::format("seq-{}", pts[3].seq)
                       : i >= 1 ? fmt::format("seq-{}", pts[1].seq)
                                : std::string("base");
    CHECK_MESSAGE(r.output.find("restore point " + node + " ") != std::string::npos, r.output);
    CHECK(node_md5(dir, out) == pts[i].md5);
    auto chk = run_command({qemu_bin("qemu-img"), "check", out});
    CHECK_MESSAGE(chk.status == 0, chk.output);
    auto oi = run_command({qemu_bin("qemu-img"), "info", "--output=json", out});
    CHECK(oi.output.find("/tree/" + node + ".qcow2") != std::string::npos);
    if (i == 1 || i == 3) CHECK(r.output.find(": 0 bytes from the journal") != std::string::npos);
  }
}

TEST_CASE("restore --overlay of whole 4 KiB clusters: a packed qcow2 written directly, exact") {
  // Guests write whole 4 KiB blocks: then kvmcdp writes the overlay itself
  // (4 KiB clusters, data packed, zero clusters for write-zeroes and
  // discards) instead of going through qemu-nbd.  QEMU must read it as the
  // disk at that point, and qemu-img check must find nothing.
  TempDir dir;
  Protected p = make_store(dir, 5, 0, 0, 4096);
  const auto& pts = p.points;
  auto b = run_command({KVMCDP_BINARY, "build", "--store", p.store, "--seq",
                        std::to_string(pts[1].seq), "--seq", std::to_string(pts[3].seq)});
  REQUIRE_MESSAGE(b.status == 0, b.output);
  // build takes the same path for its nodes: packed, 4 KiB clusters, on
  // their parent by a relative name, exact.
  CHECK_MESSAGE(b.output.find("written directly") != std::string::npos, b.output);
  CHECK(b.output.find("through qemu-nbd") == std::string::npos);
  for (size_t i : {1, 3}) {
    std::string node = fmt::format("{}/tree/seq-{}.qcow2", p.store, pts[i].seq);
    CHECK(node_md5(dir, node) == pts[i].md5);
    auto chk = run_command({qemu_bin("qemu-img"), "check", node});
    CHECK_MESSAGE(chk.output.find("No errors were found") != std::string::npos, chk.output);
    auto ni = run_command({qemu_bin("qemu-img"), "info", "--output=json", node});
    CHECK_MESSAGE(ni.output.find("\"cluster-size\": 4096") != std::string::npos, ni.output);
    std::string parent = i == 1 ? "base.qcow2" : fmt::format("seq-{}.qcow2", pts[1].seq);
    CHECK_MESSAGE(ni.output.find("\"backing-filename\": \"" + parent + "\"") != std::string::npos,
                  ni.output);
  }
  auto tree_check = run_command({KVMCDP_BINARY, "snapshot", "check", "--tree", p.store + "/tree"});
  CHECK_MESSAGE(tree_check.status == 0, tree_check.output);
  for (size_t i = 1; i < pts.size(); ++i) {
    std::string out = dir.file(fmt::format("a-{}.qcow2", pts[i].seq));
    auto r = run_command({KVMCDP_BINARY, "restore", "--overlay", "--store", p.store, "--seq",
                          std::to_string(pts[i].seq), "-o", out});
    REQUIRE_MESSAGE(r.status == 0, r.output);
    CHECK(node_md5(dir, out) == pts[i].md5);
    auto chk = run_command({qemu_bin("qemu-img"), "check", out});
    CHECK_MESSAGE(chk.status == 0, chk.output);
    CHECK_MESSAGE(chk.output.find("No errors were found") != std::string::npos, chk.output);
    auto oi = run_command({qemu_bin("qemu-img"), "info", "--output=json", out});
    CHECK_MESSAGE(oi.output.find("\"cluster-size\": 4096") != std::string::npos, oi.output);
    uint64_t node_seq = i >= 3 ? pts[3].seq : pts[1].seq;
    CHECK(oi.output.find(fmt::format("/tree/seq-{}.qcow2", node_seq)) != std::string::npos);
    // QEMU can go on writing into it.
    auto w = run_command({qemu_bin("qemu-io"), "-c", "write -P 7 65536 8192", out});
    CHECK_MESSAGE(w.status == 0, w.output);
    auto chk2 = run_command({qemu_bin("qemu-img"), "check", out});
    CHECK_MESSAGE(chk2.status == 0, chk2.output);
  }
  // The 512-byte aligned store of the test above takes the qemu-nbd path
  // (its overlays have 128 KiB clusters); a node's own point, with no
  // tail, is written directly.
  TempDir dir2;
  Protected q = make_store(dir2, 3);
  auto qb = run_command({KVMCDP_BINARY, "build", "--store", q.store, "--seq",
                         std::to_string(q.points[0].seq)});
  REQUIRE_MESSAGE(qb.status == 0, qb.output);
  CHECK_MESSAGE(qb.output.find("through qemu-nbd") != std::string::npos, qb.output);
  std::string out = dir2.file("u.qcow2");
  auto r = run_command({KVMCDP_BINARY, "restore", "--overlay", "--store", q.store, "--seq",
                        std::to_string(q.points[2].seq), "-o", out});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  CHECK(node_md5(dir2, out) == q.points[2].md5);
  auto oi = run_command({qemu_bin("qemu-img"), "info", "--output=json", out});
  CHECK_MESSAGE(oi.output.find("\"cluster-size\": 131072") != std::string::npos, oi.output);
}

TEST_CASE("prune: a policy keeps exactly the expected nodes, their images unchanged") {
  TempDir dir;
  Protected p = make_store(dir, 8);
  const auto& pts = p.points;
  std::vector<std::string> argv = {KVMCDP_BINARY, "build", "--store", p.store};
  for (const auto& c : pts) argv.insert(argv.end(), {"--seq", std::to_string(c.seq)});
  auto b = run_command(argv);
  REQUIRE_MESSAGE(b.status == 0, b.output);
  auto node = [&](size_t i) { return fmt::format("seq-{}.qcow2", pts[i].seq); };
  for (size_t i = 0; i < pts.size(); ++i)
    REQUIRE(node_md5(dir, p.store + "/tree/" + node(i)) == pts[i].md5);
  CHECK(tree_files(p.store).size() == 9);  // base + 8

  // No policy: a usage error, nothing removed.
  auto none = run_command({KVMCDP_BINARY, "prune", "--store", p.store});
  CHECK(none.status == 2);

  // --dry-run prints the plan and changes nothing.
  auto dry = run_command({KVMCDP_BINARY, "prune", "--store", p.store, "--keep-last", "3",
                          "--dry-run"});
  REQUIRE_MESSAGE(dry.status == 0, dry.output);
  CHECK(dry.output.find("would remove 5 of 8 restore points, kept 3") != std::string::npos);
  CHECK(tree_files(p.store).size() == 9);

  // keep-last 5: the three oldest built nodes go (each merged into its child).
  auto pr = run_command({KVMCDP_BINARY, "prune", "--store", p.store, "--keep-last", "5"});
  REQUIRE_MESSAGE(pr.status == 0, pr.output);
  CHECK(pr.output.find("removed 3 of 8 restore points, kept 5") != std::string::npos);
  std::vector<std::string> expect = {"base.qcow2"};
  for (size_t i = 3; i < pts.size(); ++i) expect.push_back(node(i));
  std::sort(expect.begin(), expect.end());
  auto have = tree_files(p.store);
  std::sort(have.begin(), have.end());
  CHECK(have == expect);

  // All in the same hour: keep-hourly 1 keeps the newest; keep-within a
  // day keeps all; together with keep-last 2, the two newest remain.
  auto within = run_command({KVMCDP_BINARY, "prune", "--store", p.store, "--keep-within", "1d"});
  REQUIRE_MESSAGE(within.status == 0, within.output);
  CHECK(within.output.find("removed 0 of 5 restore points, kept 5") != std::string::npos);
  auto two = run_command({KVMCDP_BINARY, "prune", "--store", p.store, "--keep-hourly", "1",
                          "--keep-last", "2"});
  REQUIRE_MESSAGE(two.status == 0, two.output);
  CHECK(two.output.find("removed 3 of 5 restore points, kept 2") != std::string::npos);
  have = tree_files(p.store);
  std::sort(have.begin(), have.end());
  expect = {"base.qcow2", node(6), node(7)};
  std::sort(expect.begin(), expect.end());
  CHECK(have == expect);

  // What remains is unchanged, consistent, and every point still restores.
  CHECK(node_md5(dir, p.store + "/tree/" + node(6)) == pts[6].md5);
  CHECK(node_md5(dir, p.store + "/tree/" + node(7)) == pts[7].md5);
  for (const auto& f : have) {
    auto chk = run_command({qemu_bin("qemu-img"), "check", p.store + "/tree/" + f});
    CHECK_MESSAGE(chk.status == 0, f, ": ", chk.output);
  }
  auto check = run_command({KVMCDP_BINARY, "snapshot", "check", "--tree", p.store + "/tree"});
  CHECK_MESSAGE(check.status == 0, check.output);
  for (const auto& c : pts) CHECK_MESSAGE(restore_seq(dir, p.store, c.seq).md5 == c.md5, c.seq);
}

// A VM runs on a `restore --overlay` image: QEMU reads through the node it
// stands on and every node under it.  prune keeps those, says so (also in
// --dry-run), deletes the rest, and folds the journal no further than the
// oldest of them; once QEMU is gone the next prune deletes them.
TEST_CASE("prune keeps the nodes a running QEMU reads through a restore --overlay image") {
  TempDir dir;
  Protected p = make_store(dir, 6, 0, 1);
  const auto& pts = p.points;
  build_all(p.store, pts);
  auto node = [&](size_t i) { return fmt::format("seq-{}", pts[i].seq); };
  std::string ov = dir.file("vm.qcow2"), nbd = dir.file("nbd.sock");
  auto r = run_command({KVMCDP_BINARY, "restore", "--overlay", "--store", p.store, "--seq",
                        std::to_string(pts[2].seq), "-o", ov});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  auto qsd = QemuProcess::start_storage_daemon(
      dir, {"--blockdev", fmt::format("file,node-name=f0,filename={}", ov), "--blockdev",
            "qcow2,node-name=d,file=f0", "--nbd-server",
            fmt::format("addr.type=unix,addr.path={}", nbd), "--export",
            "nbd,id=e0,node-name=d,name=d,writable=on"});
  std::string uri = fmt::format("nbd+unix:///d?socket={}", nbd);
  auto read_vm = [&]() {
    std::string out = dir.file("vm.raw");
    auto c = run_command({qemu_bin("qemu-img"), "convert", "-f", "raw", "-O", "raw", uri, out});
    REQUIRE_MESSAGE(c.status == 0, c.output);
    return md5_of_file(out);
  };
  REQUIRE(read_vm() == pts[2].md5);
  std::string holder = fmt::format("(in use: qemu-storage-da pid {})", qsd->pid());

  // Policy: only the newest.  seq 0..2 are QEMU's chain, 3 and 4 go.
  for (bool dry : {true, false}) {
    std::vector<std::string> argv = {KVMCDP_BINARY, "prune", "--store", p.store, "--keep-last",
                                     "1"};
    if (dry) argv.push_back("--dry-run");
    auto pr = run_command(argv);
    REQUIRE_MESSAGE(pr.status == 0, pr.output);
    for (size_t i : {0, 1, 2}) {
      std::string line = fmt::format("keep   {} seq {} ", node(i), pts[i].seq);
      auto at = pr.output.find(line);
      REQUIRE_MESSAGE(at != std::string::npos, line, pr.output);
      CHECK_MESSAGE(pr.output.substr(at, pr.output.find('\n', at) - at).find(holder) !=
                        std::string::npos, pr.output);
    }
    for (size_t i : {3, 4})
      CHECK_MESSAGE(pr.output.find(fmt::format("remove {} ", node(i))) != std::string::npos,
                    pr.output);
    CHECK_MESSAGE(pr.output.find(fmt::format("{} 2 of 6 restore points, kept 4 (3 in use)",
                                             dry ? "would remove" : "removed")) !=
                      std::string::npos, pr.output);
  }
  std::vector<std::string> expect = {"base.qcow2"};
  for (size_t i : {0, 1, 2, 5}) expect.push_back(node(i) + ".qcow2");
  std::sort(expect.begin(), expect.end());
  auto have = tree_files(p.store);
  std::sort(have.begin(), have.end());
  CHECK(have == expect);
  // The fold stopped at the oldest node in use: its point still restores.
  CHECK(journal_size(p.store).first_seq <= pts[0].seq);
  CHECK(restore_seq(dir, p.store, pts[0].seq).md5 == pts[0].md5);

  // QEMU still reads the point through the kept chain; the overlay is clean.
  CHECK(read_vm() == pts[2].md5);
  REQUIRE(qsd->qmp().execute("quit").ok());
  REQUIRE(qsd->wait_exit(std::chrono::seconds(20)));
  auto chk = run_command({qemu_bin("qemu-img"), "check", ov});
  CHECK_MESSAGE(chk.status == 0, chk.output);
  CHECK(node_md5(dir, ov) == pts[2].md5);

  // QEMU gone: the same policy removes them now.  --help says that prune
  // deletes history too.
  auto help = run_command({KVMCDP_BINARY, "prune", "--help"});
  CHECK(help.output.find("prune also deletes journal history") != std::string::npos);
  CHECK(help.output.find("A restore point in use") != std::string::npos);
  auto again = run_command({KVMCDP_BINARY, "prune", "--store", p.store, "--keep-last", "1"});
  REQUIRE_MESSAGE(again.status == 0, again.output);
  CHECK_MESSAGE(again.output.find("removed 3 of 4 restore points, kept 1\n") != std::string::npos,
                again.output);
  CHECK(tree_files(p.store).size() == 2);
  CHECK(journal_size(p.store).first_seq > pts[2].seq);
  CHECK(node_md5(dir, p.store + "/tree/" + node(5) + ".qcow2") == pts[5].md5);
}

TEST_CASE("build --at/--every, prune --keep-daily/--dry-run, and --wait on a busy tree") {
  TempDir dir;
  Protected p = make_store(dir, 6, 400);
  const auto& pts = p.points;

  // --every on a copy of the store: each node's image equals a full
  // replay of its point from the original store (which has no tree).
  std::string copy = dir.file("copy");
  REQUIRE(run_command({"cp", "-a", p.store, copy}).status == 0);
  auto every = run_command({KVMCDP_BINARY, "build", "--store", copy, "--every", "1s"});
  REQUIRE_MESSAGE(every.status == 0, every.output);
  auto files = tree_files(copy);
  CHECK_MESSAGE(files.size() >= 3, every.output);  // base, >= 1 timed point, the last
  // The journal's last point is protect's stop mark, one after the last
  // checkpoint.
  auto points = run_command({KVMCDP_BINARY, "points", "--json", "--store", p.store});
  REQUIRE(points.status == 0);
  uint64_t last_seq = json::parse(points.output)["recoverable"].back()["last_seq"];
  CHECK(last_seq >= pts.back().seq);
  CHECK_MESSAGE(std::find(files.begin(), files.end(), fmt::format("seq-{}.qcow2", last_seq)) !=
                    files.end(),
                every.output);
  for (const auto& f : files) {
    std::smatch m;
    if (!std::regex_match(f, m, std::regex("seq-(\\d+)\\.qcow2"))) continue;
    uint64_t seq = std::stoull(m[1]);
    CHECK_MESSAGE(node_md5(dir, copy + "/tree/" + f) == restore_seq(dir, p.store, seq).md5, f);
  }
  auto bad = run_command({KVMCDP_BINARY, "build", "--store", copy, "--every", "soon"});
  CHECK(bad.status == 2);

  // --at: the last record at or before that time.
  auto at = run_command({KVMCDP_BINARY, "build", "--store", p.store, "--at", pts[2].time, "--at",
                         pts[4].time});
  REQUIRE_MESSAGE(at.status == 0, at.output);
  CHECK(node_md5(dir, fmt::format("{}/tree/seq-{}.qcow2", p.store, pts[2].seq)) == pts[2].md5);
  CHECK(node_md5(dir, fmt::format("{}/tree/seq-{}.qcow2", p.store, pts[4].seq)) == pts[4].md5);

  // --keep-daily 1: one day holds both nodes, the newest is kept.
  auto daily = run_command({KVMCDP_BINARY, "prune", "--store", p.store, "--keep-daily", "1",
                            "--dry-run"});
  REQUIRE_MESSAGE(daily.status == 0, daily.output);
  CHECK_MESSAGE(daily.output.find(fmt::format("remove seq-{} seq {}", pts[2].seq, pts[2].seq)) !=
                    std::string::npos, daily.output);
  CHECK(daily.output.find("would remove 1 of 2 restore points, kept 1") != std::string::npos);

  // Someone else holds the tree lock: exit 5 at once, or wait with --wait.
  std::string lock = p.store + "/tree/lock";
  std::thread holder([&] { run_command({"flock", lock, "sleep", "3"}); });
  for (int i = 0; i < 200 && run_command({"flock", "-n", lock, "true"}).status == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // until the holder has it
  auto busy = run_command({KVMCDP_BINARY, "prune", "--store", p.store, "--keep-last", "1"});
  CHECK_MESSAGE(busy.status == 5, busy.output);
  auto busy_build = run_command({KVMCDP_BINARY, "build", "--store", p.store, "--seq",
                                 std::to_string(pts[5].seq)});
  CHECK_MESSAGE(busy_build.status == 5, busy_build.output);
  auto waited = run_command({KVMCDP_BINARY, "prune", "--store", p.store, "--keep-daily", "1",
                             "--wait"});
  holder.join();
  CHECK_MESSAGE(waited.status == 0, waited.output);
  CHECK(waited.output.find("removed 1 of 2 restore points, kept 1") != std::string::npos);
  auto waited_build = run_command({KVMCDP_BINARY, "build", "--store", p.store, "--wait", "--seq",
                                   std::to_string(pts[5].seq)});
  CHECK_MESSAGE(waited_build.status == 0, waited_build.output);
  CHECK(node_md5(dir, fmt::format("{}/tree/seq-{}.qcow2", p.store, pts[5].seq)) == pts[5].md5);
  CHECK(node_md5(dir, fmt::format("{}/tree/seq-{}.qcow2", p.store, pts[4].seq)) == pts[4].md5);
}

TEST_CASE("build and prune killed at each step: the next command finishes, no image changes") {
  TempDir dir;
  Protected p = make_store(dir, 6);
  const auto& pts = p.points;
  auto node = [&](size_t i) { return fmt::format("{}/tree/seq-{}.qcow2", p.store, pts[i].seq); };
  auto consistent = [&]() {
    auto check = run_command({KVMCDP_BINARY, "snapshot", "check", "--tree", p.store + "/tree"});
    CHECK_MESSAGE(check.status == 0, check.output);
  };
  std::vector<std::string> argv = {KVMCDP_BINARY, "build", "--store", p.store};
  for (size_t i = 0; i < 3; ++i) argv.insert(argv.end(), {"--seq", std::to_string(pts[i].seq)});
  REQUIRE(run_command(argv).status == 0);

  // Build killed before the node file is in place, before and after tree.json.
  for (int step = 1; step <= 3; ++step) {
    size_t i = 2 + size_t(step);
    auto killed = run_command({"env", fmt::format("KVMCDP_CRASH_AT_STEP=build:{}", step),
                               KVMCDP_BINARY, "build", "--store", p.store, "--seq",
                               std::to_string(pts[i].seq)});
    CHECK_MESSAGE(killed.status == 9, killed.output);
    consistent();
    auto again = run_command({KVMCDP_BINARY, "build", "--store", p.store, "--seq",
                              std::to_string(pts[i].seq)});
    CHECK_MESSAGE(again.status == 0, again.output);
    CHECK_MESSAGE((again.output.find("already node") != std::string::npos) == (step == 3),
                  again.output);
    CHECK(node_md5(dir, node(i)) == pts[i].md5);
    consistent();
  }

  // Prune killed at each step of a merge; the next prune repairs, then goes on.
  for (int step = 1; step <= 4; ++step) {
    std::string keep = std::to_string(6 - step);
    auto killed = run_command({"env", fmt::format("KVMCDP_CRASH_AT_STEP=merge:{}", step),
                               KVMCDP_BINARY, "prune", "--store", p.store, "--keep-last", keep});
    CHECK_MESSAGE(killed.status == 9, killed.output);
    auto again = run_command({KVMCDP_BINARY, "prune", "--store", p.store, "--keep-last", keep});
    CHECK_MESSAGE(again.status == 0, again.output);
    CHECK_MESSAGE(again.output.find(fmt::format("kept {}", keep)) != std::string::npos,
                  again.output);
    consistent();
    for (size_t i = size_t(step); i < pts.size(); ++i)
      CHECK_MESSAGE(node_md5(dir, node(i)) == pts[i].md5, "step ", step, " node ", i);
  }
  CHECK(tree_files(p.store).size() == 3);  // base and the two newest
  for (const auto& c : pts) CHECK_MESSAGE(restore_seq(dir, p.store, c.seq).md5 == c.md5, c.seq);
}

TEST_CASE("prune folds the journal up to the oldest kept point while protect appends") {
  TempDir dir;
  ProtectedVm pv(dir, 1);
  std::vector<Checkpoint> pts;
  for (int i = 0; i < 12; ++i) pts.push_back(pv.round());
  auto node = [&](size_t i) { return fmt::format("seq-{}.qcow2", pts[i].seq); };

  // Built and pruned while protect still appends to the last segment.
  build_all(pv.store, pts);
  JournalSize before = journal_size(pv.store);
  REQUIRE(before.segments >= 6);
  auto dry = run_command({KVMCDP_BINARY, "prune", "--store", pv.store, "--keep-last", "4",
                          "--dry-run"});
  REQUIRE_MESSAGE(dry.status == 0, dry.output);
  CHECK_MESSAGE(dry.output.find("would merge") != std::string::npos, dry.output);
  CHECK(journal_size(pv.store).segments == before.segments);
  CHECK(tree_files(pv.store).size() == 13);
  auto pr = run_command({KVMCDP_BINARY, "prune", "--store", pv.store, "--keep-last", "4"});
  REQUIRE_MESSAGE(pr.status == 0, pr.output);
  CHECK(pr.output.find("removed 8 of 12 restore points, kept 4") != std::string::npos);
  CHECK_MESSAGE(pr.output.find(fmt::format("merged the journal through seq {}", pts[8].seq)) !=
                    std::string::npos, pr.output);
  JournalSize after = journal_size(pv.store);
  MESSAGE("journal before prune: ", before.segments, " segments, ", before.bytes,
          " bytes; after: ", after.segments, " segments, ", after.bytes, " bytes");
  CHECK(after.segments < before.segments);
  CHECK(after.bytes < before.bytes);
  CHECK(after.first_seq == pts[8].seq);
  check_one_base(pv.store);

  // Exactly the kept nodes, unchanged and consistent.
  std::vector<std::string> expect = {"base.qcow2"};
  for (size_t i = 8; i < pts.size(); ++i) expect.push_back(node(i));
  std::sort(expect.begin(), expect.end());
  auto have = tree_files(pv.store);
  std::sort(have.begin(), have.end());
  CHECK(have == expect);
  for (size_t i = 8; i < pts.size(); ++i)
    CHECK(node_md5(dir, pv.store + "/tree/" + node(i)) == pts[i].md5);
  for (const auto& f : have) {
    auto chk = run_command({qemu_bin("qemu-img"), "check", pv.store + "/tree/" + f});
    CHECK_MESSAGE(chk.status == 0, f, ": ", chk.output);
  }
  auto check = run_command({KVMCDP_BINARY, "snapshot", "check", "--tree", pv.store + "/tree"});
  CHECK_MESSAGE(check.status == 0, check.output);

  // Protect goes on appending after the fold; then it stops.
  for (int i = 0; i < 2; ++i) pts.push_back(pv.round());
  REQUIRE_MESSAGE(pv.protect->stop() == 0, pv.protect->output());
  std::string final_md5 = md5_of_file(pv.disk);
  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", pv.store});
  CHECK_MESSAGE(verify.status == 0, verify.output);
  // The folded base has its own block checksums, all good.
  CHECK_MESSAGE(verify.output.find(fmt::format("base: {} blocks checked", kDiskSize / 65536)) !=
                    std::string::npos,
                verify.output);

  // Every kept point and the latest restore exactly; the older are refused.
  for (size_t i = 8; i < pts.size(); ++i)
    CHECK_MESSAGE(restore_seq(dir, pv.store, pts[i].seq).md5 == pts[i].md5, i);
  std::string latest = dir.file("latest.raw");
  auto lr = run_command({KVMCDP_BINARY, "restore", "--store", pv.store, "--latest", "-o", latest});
  REQUIRE_MESSAGE(lr.status == 0, lr.output);
  CHECK(md5_of_file(latest) == final_md5);
  auto old = run_command({KVMCDP_BINARY, "restore", "--store", pv.store, "--seq",
                          std::to_string(pts[7].seq), "-o", dir.file("old.raw")});
  CHECK_MESSAGE(old.status == 6, old.output);
  // Without the tree: the folded base plus the journal alone.
  std::string bare = dir.file("bare");
  REQUIRE(run_command({"cp", "-a", pv.store, bare}).status == 0);
  REQUIRE(run_command({"rm", "-rf", bare + "/tree"}).status == 0);
  for (size_t i : {size_t(8), size_t(10), pts.size() - 1}) {
    Restored r = restore_seq(dir, bare, pts[i].seq);
    CHECK_MESSAGE(r.md5 == pts[i].md5, i);
    CHECK(r.output.find("the rest from the base") != std::string::npos);
  }
  // Build keeps working on the folded store.
  auto b = run_command({KVMCDP_BINARY, "build", "--store", pv.store, "--seq",
                        std::to_string(pts.back().seq)});
  REQUIRE_MESSAGE(b.status == 0, b.output);
  CHECK(node_md5(dir, pv.store + "/tree/" + node(pts.size() - 1)) == pts.back().md5);
}

TEST_CASE("prune killed at each step of the fold: the next command finishes or rolls it back") {
  TempDir dir;
  Protected p = make_store(dir, 14, 0, 1);
  const auto& pts = p.points;
  build_all(p.store, pts);
  auto node = [&](size_t i) { return fmt::format("{}/tree/seq-{}.qcow2", p.store, pts[i].seq); };
  // The command after the kill: prune, snapshot repair or build.
  const std::vector<std::vector<std::string>> next = {
      {KVMCDP_BINARY, "snapshot", "repair", "--tree", p.store + "/tree"},
      {KVMCDP_BINARY, "build", "--store", p.store, "--seq", std::to_string(pts.back().seq)},
  };
  for (int step = 1; step <= 5; ++step) {
    CAPTURE(step);
    size_t keep = 14 - 2 * size_t(step);
    size_t oldest = pts.size() - keep;
    std::vector<std::string> prune = {KVMCDP_BINARY, "prune", "--store", p.store,
                                      "--keep-last", std::to_string(keep)};
    JournalSize before = journal_size(p.store);
    std::vector<std::string> killed_argv = {"env", fmt::format("KVMCDP_CRASH_AT_STEP=fold:{}", step)};
    killed_argv.insert(killed_argv.end(), prune.begin(), prune.end());
    auto killed = run_command(killed_argv);
    CHECK_MESSAGE(killed.status == 9, killed.output);
    CHECK(std::filesystem::exists(p.store + "/fold.json"));  // killed inside the fold

    auto repaired = run_command(step % 2 ? prune : next[size_t(step / 2 - 1)]);
    CHECK_MESSAGE(repaired.status == 0, repaired.output);
    CHECK_MESSAGE(repaired.output.find(step <= 2 ? "repair: rolled back merging"
                                                 : "repair: merged the journal") !=
                      std::string::npos, repaired.output);
    auto again = run_command(prune);
    CHECK_MESSAGE(again.status == 0, again.output);

    JournalSize after = journal_size(p.store);
    CHECK(after.first_seq == pts[oldest].seq);
    CHECK(after.segments < before.segments);
    check_one_base(p.store);
    auto check = run_command({KVMCDP_BINARY, "snapshot", "check", "--tree", p.store + "/tree"});
    CHECK_MESSAGE(check.status == 0, check.output);
    for (size_t i = oldest; i < pts.size(); ++i)
      CHECK_MESSAGE(node_md5(dir, node(i)) == pts[i].md5, "node ", i);
    for (size_t i : {oldest, oldest + 1, pts.size() - 1})
      CHECK_MESSAGE(restore_seq(dir, p.store, pts[i].seq).md5 == pts[i].md5, i);
  }
  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", p.store});
  CHECK_MESSAGE(verify.status == 0, verify.output);
}

}  // namespace kvmcdp::test
