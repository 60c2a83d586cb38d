// The compare resync against a real, patched QEMU: protect restarted on a
// store whose filter is gone journals what changed while it was away, not
// the whole disk again (capture/resync_compare.h).  The disk holds 200 MiB
// of random data, so a resync journaled in full would grow the journal by
// about that much, compressed or not.
#include <filesystem>
#include <functional>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "harness/protect_process.h"
#include "harness/qemu_process.h"
#include "harness/vm_io.h"

namespace kvmcdp::test {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kResyncDisk = 256 * kMiB;

struct Point {
  uint64_t seq;
  std::string md5;
};

// Bytes in the store's journal/ folder (segments and indexes).
uint64_t journal_bytes(const std::string& store) {
  uint64_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(store + "/journal"))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

// Until the filter has resent the whole disk (no gap left) and kvmcdp
// acknowledged all of it.
void wait_resync_done(QemuProcess& vm) {
  bool done = false;
  for (int i = 0; i < 6000 && !done; ++i) {
    QmpReply r = vm.qmp().execute("query-cdp");
    done = r.value.size() == 1 && r.value[0]["gap"] == false &&
           r.value[0]["acked-seq"] == r.value[0]["seq"];
    if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  REQUIRE_MESSAGE(done, "the resync did not end");
  wait_acked(vm);
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) n++;
  return n;
}

// Protect with some writes, stop; restart with nothing written (journal
// growth under 1 MiB); stop, write 1% of the disk, restart (growth about
// that 1%); every point restores exactly.  `vm` has the disk as vd0;
// `disk_md5` reads what the guest sees.
// `before_restart` runs before each restart (the qcow2 case drops QEMU's
// bitmap of the stream there, so that the whole disk is resent and
// compared, as after an unclean shutdown).
void restart_twice(const TempDir& dir, QemuProcess& vm,
                   const std::function<std::string()>& disk_md5,
                   const std::function<void()>& before_restart = [] {}) {
  std::string noise = dir.file("noise");
  REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + noise, "bs=1M", "count=1"}).status == 0);
  std::string store = dir.file("store");

  Point protected_write{};
  {
    ProtectProcess p(vm.tool_socket(), "vd0", store);
    REQUIRE_MESSAGE(p.wait_base_complete(std::chrono::seconds(120)), p.output());
    for (int i = 0; i < 4; ++i)
      qemu_io(vm, fmt::format("write -s {} {} 1M", noise, (10 + 50 * i) * kMiB + 4096));
    wait_acked(vm);
    protected_write = {filter_seq(vm), disk_md5()};
    REQUIRE_MESSAGE(p.stop() == 0, p.output());
  }

  // Restarted with nothing written meanwhile: the resync finds the disk
  // equal to the journal's latest image.
  before_restart();
  const uint64_t before_unchanged = journal_bytes(store);
  Point unchanged{};
  {
    ProtectProcess p(vm.tool_socket(), "vd0", store);
    wait_resync_done(vm);
    unchanged = {filter_seq(vm), disk_md5()};
    REQUIRE_MESSAGE(p.stop() == 0, p.output());
    CHECK_MESSAGE(count(p.output(), "comparing the disk with the journal's latest image") == 1,
                  p.output());
    CHECK_MESSAGE(count(p.output(), "resync done: 0.0 MiB of 256.0 MiB differed") == 1,
                  p.output());
  }
  const uint64_t growth_unchanged = journal_bytes(store) - before_unchanged;
  MESSAGE("journal growth, unchanged 256 MiB disk: ", growth_unchanged, " bytes");
  CHECK(growth_unchanged < kMiB);
  CHECK(protected_write.md5 == unchanged.md5);

  // 1% of the disk (2.5 MiB of random data, 40 blocks of 64 KiB) written
  // while nothing protects it: the filter is detached, qemu-io writes the
  // disk directly.
  for (uint64_t i = 0; i < 5; ++i)
    qemu_io(vm, fmt::format("write -s {} {} 512k", noise, (30 + 45 * i) * kMiB + (i % 2) * kMiB / 2));
  before_restart();
  const uint64_t before_changed = journal_bytes(store);
  Point changed{};
  {
    ProtectProcess p(vm.tool_socket(), "vd0", store);
    wait_resync_done(vm);
    changed = {filter_seq(vm), disk_md5()};
    REQUIRE_MESSAGE(p.stop() == 0, p.output());
    CHECK_MESSAGE(count(p.output(), "resync done: 2.5 MiB of 256.0 MiB differed") == 1,
                  p.output());
  }
  const uint64_t growth_changed = journal_bytes(store) - before_changed;
  MESSAGE("journal growth, 2.5 MiB (1%) changed: ", growth_changed, " bytes");
  CHECK(growth_changed >= 5 * kMiB / 2);
  CHECK(growth_changed < 5 * kMiB);

  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", store});
  CHECK_MESSAGE(verify.status == 0, verify.output);
  std::string out = dir.file("r.raw");
  auto latest = run_command(
      {KVMCDP_BINARY, "restore", "--force", "--quiet", "--store", store, "--latest", "-o", out});
  REQUIRE_MESSAGE(latest.status == 0, latest.output);
  CHECK(md5_of_file(out) == changed.md5);
  for (const Point& c : {protected_write, unchanged, changed}) {
    auto r = run_command({KVMCDP_BINARY, "restore", "--force", "--quiet", "--store", store,
                          "--seq", std::to_string(c.seq), "-o", out});
    REQUIRE_MESSAGE(r.status == 0, r.output);
    CHECK_MESSAGE(md5_of_file(out) == c.md5, "seq ", c.seq);
  }
}

// 200 MiB of random data at the start of a 256 MiB raw file.
void make_random_disk(const std::string& path) {
  REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + path, "bs=1M", "count=200"}).status == 0);
  REQUIRE(run_command({"truncate", "-s", std::to_string(kResyncDisk), path}).status == 0);
}

}  // namespace

TEST_CASE("protect restarted: the resync journals only what changed while it was away") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  make_random_disk(disk);
  auto vm = start_vm(dir, disk);
  restart_twice(dir, *vm, [&] { return md5_of_file(disk); });
}

TEST_CASE("protect restarted on a qcow2 disk without QEMU's bitmap: the resync journals only "
          "what changed") {
  TempDir dir;
  std::string raw = dir.file("data.raw");
  make_random_disk(raw);
  std::string disk = dir.file("disk.qcow2");
  REQUIRE(run_command({qemu_bin("qemu-img"), "convert", "-q", "-f", "raw", "-O", "qcow2", raw,
                       disk})
              .status == 0);
  std::filesystem::remove(raw);
  auto vm = QemuProcess::start_system(
      dir, {"-S", "-blockdev", fmt::format("driver=file,filename={},node-name=disk0-file", disk),
            "-blockdev", "driver=qcow2,file=disk0-file,node-name=disk0", "-device",
            "virtio-blk-pci,drive=disk0,id=vd0"});
  // What the guest sees, through QEMU's own reader once the image's
  // metadata is flushed (the VM holds the image: -U).
  std::string flat = dir.file("flat.raw");
  auto drop_bitmaps = [&] {
    QmpReply r = vm->qmp().execute("query-named-block-nodes", {{"flat", true}});
    REQUIRE(r.ok());
    int dropped = 0;
    for (const auto& n : r.value)
      if (n["node-name"] == "disk0" && n.contains("dirty-bitmaps"))
        for (const auto& b : n["dirty-bitmaps"])
          if (b["name"].get<std::string>().rfind("cdp-", 0) == 0) {
            QmpReply d = vm->qmp().execute("block-dirty-bitmap-remove",
                                           {{"node", "disk0"}, {"name", b["name"]}});
            REQUIRE_MESSAGE(d.ok(), d.message);
            ++dropped;
          }
    CHECK(dropped == 1);  // the filter kept one
  };
  restart_twice(
      dir, *vm,
      [&] {
        qemu_io(*vm, "flush");
        REQUIRE(run_command({qemu_bin("qemu-img"), "convert", "-U", "-O", "raw", disk, flat})
                    .status == 0);
        return md5_of_file(flat);
      },
      drop_bitmaps);
}

}  // namespace kvmcdp::test

namespace kvmcdp::test {

TEST_CASE("protect after a power cycle of a raw disk's VM: the resync journals only what changed") {
  // A raw disk has no place for QEMU's bitmap, so the next boot's filter
  // knows nothing and resends the whole disk; the compare resync journals
  // only what differs from the journal's latest image: here 512 KiB
  // written to the disk while the VM was off.
  TempDir dir;
  std::string disk = dir.file("disk.raw"), store = dir.file("store"), noise = dir.file("noise");
  make_random_disk(disk);
  REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + noise, "bs=1M", "count=1"}).status == 0);
  Point first{}, second{};
  {
    auto vm = start_vm(dir, disk);
    ProtectProcess p(vm->tool_socket(), "vd0", store);
    REQUIRE_MESSAGE(p.wait_base_complete(std::chrono::seconds(120)), p.output());
    qemu_io(*vm, fmt::format("write -s {} {} 1M", noise, 10 * kMiB + 4096));
    wait_acked(*vm);
    first = {filter_seq(*vm), md5_of_file(disk)};
    vm->qmp().execute("quit");
    REQUIRE(vm->wait_exit(std::chrono::milliseconds(30000)).has_value());
    CHECK_MESSAGE(p.wait_exit(std::chrono::seconds(60)) == 0, p.output());
  }
  REQUIRE(run_command({qemu_bin("qemu-io"), "-f", "raw", "-c",
                       fmt::format("write -s {} {} 512k", noise, 30 * kMiB), disk})
              .status == 0);
  const uint64_t before = journal_bytes(store);
  {
    auto vm = start_vm(dir, disk);
    ProtectProcess p(vm->tool_socket(), "vd0", store);
    wait_resync_done(*vm);
    second = {filter_seq(*vm), md5_of_file(disk)};
    REQUIRE_MESSAGE(p.stop() == 0, p.output());
    CHECK_MESSAGE(count(p.output(), "resync done: 0.5 MiB of 256.0 MiB differed") == 1,
                  p.output());
  }
  const uint64_t growth = journal_bytes(store) - before;
  MESSAGE("journal growth after a power cycle, 512 KiB changed offline: ", growth, " bytes");
  CHECK(growth >= kMiB / 2);
  CHECK(growth < 3 * kMiB / 2);
  CHECK(first.md5 != second.md5);
  std::string out = dir.file("r.raw");
  for (const Point& c : {first, second}) {
    auto r = run_command({KVMCDP_BINARY, "restore", "--force", "--quiet", "--store", store,
                          "--seq", std::to_string(c.seq), "-o", out});
    REQUIRE_MESSAGE(r.status == 0, r.output);
    CHECK_MESSAGE(md5_of_file(out) == c.md5, "seq ", c.seq);
  }
}

}  // namespace kvmcdp::test
