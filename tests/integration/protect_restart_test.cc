// A restart costs what changed, not the disk's size (qcow2: the filter's
// persistent dirty bitmap).  A VM (no guest: -S) on a qcow2 disk full of
// random data: protect, stop, start again with nothing written (the
// journal barely grows, no gap), stop, change 1% of the disk, start again
// (the journal grows by about that), then QEMU quits and a new QEMU on the
// same disk is protected again (the bitmap survived: no gap, no resend).
// Every point restores exact.
#include <filesystem>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "harness/protect_process.h"
#include "harness/qemu_process.h"
#include "harness/vm_io.h"

namespace kvmcdp::test {
namespace {

using std::chrono::milliseconds;

uint64_t journal_bytes(const std::string& store) {
  uint64_t n = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(store + "/journal"))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

// Until the filter has no gap and kvmcdp holds everything.
void wait_in_sync(QemuProcess& vm, BackgroundProcess& protect) {
  for (int i = 0; i < 3000; ++i) {
    QmpReply r = vm.qmp().execute("query-cdp");
    REQUIRE(r.ok());
    REQUIRE_MESSAGE(r.value.size() == 1, protect.output());
    const json& f = r.value[0];
    if (f["connected"] == true && f["gap"] == false && f["acked-seq"] == f["seq"]) return;
    std::this_thread::sleep_for(milliseconds(20));
  }
  FAIL("the filter did not catch up in 60 s");
}

std::unique_ptr<QemuProcess> start(const TempDir& dir, const std::string& disk) {
  return QemuProcess::start_system(
      dir, {"-S", "-blockdev", fmt::format("driver=file,filename={},node-name=disk0-file", disk),
            "-blockdev", "driver=qcow2,file=disk0-file,node-name=disk0", "-device",
            "virtio-blk-pci,drive=disk0,id=vd0"});
}

}  // namespace

TEST_CASE("protect restart on qcow2: only what changed is resent, a clean power cycle is no gap") {
  TempDir dir;
  std::string disk = dir.file("disk.qcow2"), noise = dir.file("noise.bin");
  std::string store = dir.file("store");
  constexpr uint64_t kDisk = 64ull << 20, kData = 48ull << 20, kChange = 640ull << 10;
  REQUIRE(run_command({qemu_bin("qemu-img"), "create", "-q", "-f", "qcow2", disk,
                       std::to_string(kDisk)})
              .status == 0);
  REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + noise, "bs=1M", "count=48"}).status == 0);
  REQUIRE(run_command({qemu_bin("qemu-io"), "-f", "qcow2", "-c",
                       fmt::format("write -s {} 0 {}", noise, kData), disk})
              .status == 0);
  auto flat_md5 = [&] {
    std::string flat = dir.file("flat.raw");
    REQUIRE(run_command({qemu_bin("qemu-img"), "convert", "-U", "-O", "raw", disk, flat}).status ==
            0);
    return md5_of_file(flat);
  };
  std::vector<std::pair<uint64_t, std::string>> points;
  auto checkpoint = [&](QemuProcess& vm) {
    wait_acked(vm);
    REQUIRE(vm.qmp().execute("stop").ok());  // the qcow2 metadata, for qemu-img -U
    points.push_back({filter_seq(vm), flat_md5()});
    REQUIRE(vm.qmp().execute("cont").ok());
  };

  auto vm = start(dir, disk);
  {
    ProtectProcess p(vm->tool_socket(), "vd0", store);
    REQUIRE_MESSAGE(p.wait_base_complete(std::chrono::seconds(120)), p.output());
    qemu_io(*vm, "write -P 3 1M 1M");
    checkpoint(*vm);
    REQUIRE_MESSAGE(p.stop() == 0, p.output());
  }
  // 1. Nothing written while protect was away.
  uint64_t before = journal_bytes(store);
  {
    ProtectProcess p(vm->tool_socket(), "vd0", store);
    REQUIRE_MESSAGE(p.wait_output("protecting", std::chrono::seconds(60)), p.output());
    wait_in_sync(*vm, p);
    uint64_t grew = journal_bytes(store) - before;
    MESSAGE("restart, nothing changed: the journal grew by ", grew, " bytes");
    CHECK(grew < (1u << 20));
    qemu_io(*vm, "write -P 4 2M 64k");
    checkpoint(*vm);
    REQUIRE_MESSAGE(p.stop() == 0, p.output());
  }
  // 2. About 1% of the disk written (random data) while protect was away.
  qemu_io(*vm, fmt::format("write -s {} 8M {}", noise, kChange));
  before = journal_bytes(store);
  {
    ProtectProcess p(vm->tool_socket(), "vd0", store);
    REQUIRE_MESSAGE(p.wait_output("protecting", std::chrono::seconds(60)), p.output());
    wait_in_sync(*vm, p);
    uint64_t grew = journal_bytes(store) - before;
    MESSAGE("restart, ", kChange, " bytes changed: the journal grew by ", grew, " bytes");
    CHECK(grew >= kChange / 2);
    CHECK(grew < 2 * kChange + (256u << 10));
    checkpoint(*vm);
    // 3. The VM powers off while protected.
    vm->qmp().execute("quit");
    REQUIRE(vm->wait_exit(std::chrono::milliseconds(30000)).has_value());
    CHECK(p.wait_exit(std::chrono::seconds(60)) == 0);
  }
  auto info = run_command({qemu_bin("qemu-img"), "info", disk});
  CHECK_MESSAGE(info.output.find("cdp-") != std::string::npos, info.output);
  // The next boot: the bitmap is consistent and empty.
  vm = start(dir, disk);
  before = journal_bytes(store);
  {
    ProtectProcess p(vm->tool_socket(), "vd0", store);
    REQUIRE_MESSAGE(p.wait_output("protecting", std::chrono::seconds(60)), p.output());
    wait_in_sync(*vm, p);
    uint64_t grew = journal_bytes(store) - before;
    MESSAGE("power cycle: the journal grew by ", grew, " bytes");
    CHECK(grew < (1u << 20));
    qemu_io(*vm, "write -P 5 3M 64k");
    checkpoint(*vm);
    REQUIRE_MESSAGE(p.stop() == 0, p.output());
  }
  // One gap only: the 1% written while protect was away.
  auto pj = json::parse(run_command({KVMCDP_BINARY, "points", "--json", "--store", store}).output);
  CHECK_MESSAGE(pj["gaps"].size() == 1, pj.dump());
  for (const auto& [seq, md5] : points) check_restore(dir, store, seq, md5);
}

}  // namespace kvmcdp::test
