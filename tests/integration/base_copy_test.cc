// The base copy next to other users of QEMU's NBD server: QEMU runs one
// server at most, and backup tools or storage migration may own it.  protect
// must then take the base copy another way, exact, without stopping or
// changing that server or its exports; and when it starts a server itself,
// it leaves no server, export, node or job behind.
#include <sys/stat.h>
#include <unistd.h>

#include <random>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "harness/protect_process.h"
#include "harness/qemu_process.h"
#include "harness/vm_io.h"

namespace kvmcdp::test {
namespace {

constexpr uint64_t kDiskSize = 32ull << 20;

std::string random_disk(const TempDir& dir) {
  std::string disk = dir.file("disk.raw");
  // Data and holes, so that a wrong or missing base copy shows.
  REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + disk, "bs=1M", "count=6", "seek=3",
                       "status=none"})
              .status == 0);
  REQUIRE(run_command({"truncate", "-s", std::to_string(kDiskSize), disk}).status == 0);
  return disk;
}

void some_writes(QemuProcess& vm, std::mt19937_64& rng) {
  for (int i = 0; i < 8; ++i) {
    uint64_t len = (1 + rng() % 256) * 512;
    uint64_t off = (rng() % ((kDiskSize - len) / 512)) * 512;
    if (rng() % 4 == 0) qemu_io(vm, fmt::format("write -z -u {} {}", off, len));
    else qemu_io(vm, fmt::format("write -P {} {} {}", rng() % 255 + 1, off, len));
  }
}

// The ids of the exports QEMU serves.
std::vector<std::string> export_ids(QemuProcess& vm) {
  QmpReply r = vm.qmp().execute("query-block-exports");
  REQUIRE_MESSAGE(r.ok(), r.message);
  std::vector<std::string> ids;
  for (const auto& e : r.value) ids.push_back(e.value("id", ""));
  return ids;
}

// Nothing of a base copy is left in QEMU: no job, no node of its copy.
void check_nothing_left(QemuProcess& vm) {
  QmpReply jobs = vm.qmp().execute("query-jobs");
  REQUIRE(jobs.ok());
  CHECK_MESSAGE(jobs.value.empty(), jobs.value.dump());
  QmpReply nodes = vm.qmp().execute("query-named-block-nodes", {{"flat", true}});
  REQUIRE(nodes.ok());
  for (const auto& n : nodes.value)
    CHECK_MESSAGE(n.value("node-name", "").rfind("kvmcdp-base", 0) != 0, n.value("node-name", ""));
  QmpReply fdsets = vm.qmp().execute("query-fdsets");
  REQUIRE(fdsets.ok());
  for (const auto& set : fdsets.value)
    for (const auto& fd : set.value("fds", json::array()))
      CHECK_MESSAGE(fd.value("opaque", "").rfind("kvmcdp-base", 0) != 0, set.dump());
}

// Another tool's server with export "theirs" of the disk on `sock`.
void start_their_server(QemuProcess& vm, const std::string& sock) {
  QmpReply started = vm.qmp().execute(
      "nbd-server-start", {{"addr", {{"type", "unix"}, {"data", {{"path", sock}}}}}});
  REQUIRE_MESSAGE(started.ok(), started.message);
  QmpReply added = vm.qmp().execute("block-export-add", {{"type", "nbd"},
                                                         {"id", "theirs"},
                                                         {"name", "theirs"},
                                                         {"node-name", "disk0"},
                                                         {"writable", false}});
  REQUIRE_MESSAGE(added.ok(), added.message);
}

// The base copy is the disk's size with its holes kept (6 of 32 MiB hold
// data), and no temporary file is left.
void check_base_sparse(const std::string& store) {
  struct stat st {};
  REQUIRE(stat((store + "/base.raw").c_str(), &st) == 0);
  CHECK(uint64_t(st.st_size) == kDiskSize);
  CHECK_MESSAGE(uint64_t(st.st_blocks) * 512 < kDiskSize / 2, st.st_blocks * 512, " bytes used");
  CHECK(access((store + "/base.raw.tmp").c_str(), F_OK) != 0);
}

// What a client of the export `name` on `sock` reads: the MD5 of a copy.
std::string export_md5(const TempDir& dir, const std::string& sock, const std::string& name) {
  std::string out = dir.file("export-copy.raw");
  auto r = run_command({qemu_bin("qemu-img"), "convert", "-f", "raw", "-O", "raw",
                        fmt::format("nbd+unix:///{}?socket={}", name, sock), out});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  std::string md5 = md5_of_file(out);
  unlink(out.c_str());
  return md5;
}

}  // namespace

TEST_CASE("protect: QEMU's NBD server is already running: left alone, base copy exact") {
  TempDir dir;
  std::string disk = random_disk(dir);
  auto vm = start_vm(dir, disk);

  // Running (firmware only: no disk boots), as a protected VM is; QEMU
  // closes a removed fd set only in a running VM.
  REQUIRE(vm->qmp().execute("cont").ok());
  // Another tool's server and export (say, a backup reading the disk).
  std::string sock = dir.file("theirs.sock");
  start_their_server(*vm, sock);
  CHECK(export_md5(dir, sock, "theirs") == md5_of_file(disk));

  // A client of their export the whole time protect starts and copies:
  // every listing must succeed and show their export alone.
  std::string stop_file = dir.file("stop-listing");
  BackgroundProcess lister(
      {"sh", "-c",
       fmt::format("n=0; while :; do "
                   "out=$('{}' --list -k '{}' 2>&1) || {{ echo \"LIST-FAILED: $out\"; exit 1; }}; "
                   "case \"$out\" in *'exports available: 1'*theirs*) ;; "
                   "*) echo \"UNEXPECTED: $out\"; exit 1;; esac; n=$((n+1)); "
                   "[ $n = 1 ] && echo first listing; [ -e '{}' ] && break; done; "
                   "echo listed $n times",
                   qemu_bin("qemu-nbd"), sock, stop_file)},
      dir.file("lister.log"));
  REQUIRE_MESSAGE(lister.wait_output("first listing", std::chrono::seconds(60)), lister.output());

  std::string store = dir.file("store");
  ProtectProcess protect(vm->tool_socket(), "vd0", store);
  std::mt19937_64 rng(15);
  some_writes(*vm, rng);  // may land during the copy: must not matter
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());

  write_file(stop_file, "");
  INFO("lister: ", lister.output());
  CHECK(lister.wait_exit(std::chrono::seconds(60)) == 0);
  CHECK(lister.output().find("listed ") != std::string::npos);

  CHECK(export_ids(*vm) == std::vector<std::string>{"theirs"});
  check_nothing_left(*vm);
  check_base_sparse(store);

  some_writes(*vm, rng);
  wait_acked(*vm);
  uint64_t seq = filter_seq(*vm);
  std::string md5 = md5_of_file(disk);
  CHECK(export_md5(dir, sock, "theirs") == md5);

  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
  check_restore(dir, store, seq, md5);
  auto latest = run_command(
      {KVMCDP_BINARY, "restore", "--quiet", "--store", store, "--latest", "-o", dir.file("l.raw")});
  REQUIRE_MESSAGE(latest.status == 0, latest.output);
  CHECK(md5_of_file(dir.file("l.raw")) == md5);

  // Their server still runs, with their export and nothing else.
  CHECK(export_ids(*vm) == std::vector<std::string>{"theirs"});
  CHECK(export_md5(dir, sock, "theirs") == md5);
  QmpReply again = vm->qmp().execute(
      "nbd-server-start", {{"addr", {{"type", "unix"}, {"data", {{"path", sock + "2"}}}}}});
  CHECK_FALSE(again.ok());
  check_nothing_left(*vm);
  CHECK(vm->console().find("rror") == std::string::npos);
}

TEST_CASE("protect: the copy inside QEMU fails: its job, node and fd go, their server stays") {
  TempDir dir;
  std::string disk = random_disk(dir);
  auto vm = start_vm(dir, disk);
  REQUIRE(vm->qmp().execute("cont").ok());
  std::string sock = dir.file("theirs.sock");
  start_their_server(*vm, sock);
  // 6 MiB of data do not fit.
  SmallFs fs(dir.file("fs"), "4M");
  std::string store = fs.path + "/store";
  {
    ProtectProcess protect(vm->tool_socket(), "vd0", store);
    int rc = protect.wait_exit(std::chrono::seconds(60));
    std::string out = protect.output();
    CHECK_MESSAGE(rc != 0, out);
    CHECK_MESSAGE(out.find("kvmcdp: error: ") != std::string::npos, out);
    CHECK_MESSAGE(out.find("base copy complete") == std::string::npos, out);
  }
  CHECK(access((store + "/base.raw.tmp").c_str(), F_OK) != 0);
  CHECK(access((store + "/base.raw").c_str(), F_OK) != 0);
  check_nothing_left(*vm);
  CHECK(export_ids(*vm) == std::vector<std::string>{"theirs"});
  CHECK(export_md5(dir, sock, "theirs") == md5_of_file(disk));
}

TEST_CASE("protect: its own NBD server for the base copy is gone afterwards") {
  TempDir dir;
  std::string disk = random_disk(dir);
  auto vm = start_vm(dir, disk);
  std::string store = dir.file("store");
  ProtectProcess protect(vm->tool_socket(), "vd0", store);
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());

  // No export, no node, no job; and the server is free for others.
  CHECK(export_ids(*vm).empty());
  check_nothing_left(*vm);
  check_base_sparse(store);
  std::string sock = dir.file("next.sock");
  QmpReply started = vm->qmp().execute(
      "nbd-server-start", {{"addr", {{"type", "unix"}, {"data", {{"path", sock}}}}}});
  CHECK_MESSAGE(started.ok(), started.message);
  if (started.ok()) CHECK(vm->qmp().execute("nbd-server-stop").ok());

  std::mt19937_64 rng(16);
  some_writes(*vm, rng);
  wait_acked(*vm);
  uint64_t seq = filter_seq(*vm);
  std::string md5 = md5_of_file(disk);
  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
  check_restore(dir, store, seq, md5);
}

}  // namespace kvmcdp::test
