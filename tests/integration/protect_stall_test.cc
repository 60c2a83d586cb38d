// A protect that stops answering (SIGSTOP) while a flush waits for it and
// writes wait for queue space: `snapshot create` still pauses the VM's I/O
// for milliseconds, not for the filter's timeout, and no monitor of QEMU
// freezes; after SIGCONT the ranges let go during the snapshot are resent
// and restores are exact before and after.  A VM (no guest: -S) whose disk
// is also exported over NBD, so that qemu-io can keep a flush and writes
// in flight while the test runs kvmcdp commands.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <regex>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "harness/monitor_probe.h"
#include "harness/protect_process.h"
#include "harness/qemu_process.h"
#include "harness/vm_io.h"

namespace kvmcdp::test {

TEST_CASE("protect SIGSTOPped with a flush pending: snapshot create pauses I/O for milliseconds") {
  using std::chrono::milliseconds;
  TempDir dir;
  std::string disk = dir.file("disk.qcow2");
  std::string nbd = dir.file("nbd.sock");
  std::string probe_sock = dir.file("probe.qmp");
  REQUIRE(run_command({qemu_bin("qemu-img"), "create", "-q", "-f", "qcow2", disk, "32M"}).status ==
          0);
  auto vm = QemuProcess::start_system(
      dir, {"-S", "-blockdev", fmt::format("driver=file,filename={},node-name=disk0-file", disk),
            "-blockdev", "driver=qcow2,file=disk0-file,node-name=disk0", "-device",
            "virtio-blk-pci,drive=disk0,id=vd0,share-rw=on", "-qmp",
            fmt::format("unix:{},server=on,wait=off", probe_sock)});
  export_over_nbd(*vm, nbd, "disk0");
  auto chain_md5 = [&](const std::string& top) {
    std::string flat = dir.file("flat.raw");
    REQUIRE(run_command({qemu_bin("qemu-img"), "convert", "-U", "-O", "raw", top, flat}).status ==
            0);
    return md5_of_file(flat);
  };

  std::string store = dir.file("store");
  std::string tree = dir.file("tree");
  ProtectProcess protect(vm->tool_socket(), "vd0", store,
                         {"--queue-size", "1", "--filter-timeout", "30000"});
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  REQUIRE(vm->qmp().execute("cont").ok());
  qemu_io(*vm, "write -P 1 0 2M");
  wait_acked(*vm);
  REQUIRE(vm->qmp().execute("stop").ok());
  uint64_t before_seq = filter_seq(*vm);
  std::string before_md5 = chain_md5(disk);
  REQUIRE(vm->qmp().execute("cont").ok());

  // protect stops answering; a client's writes fill the 1 MiB queue, the
  // rest wait for space, its flush waits for an acknowledgement.
  REQUIRE(kill(protect.pid(), SIGSTOP) == 0);
  std::vector<std::string> io = {qemu_bin("qemu-io"), "-t", "writeback", "-f", "raw",
                                 fmt::format("nbd+unix:///e?socket={}", nbd)};
  for (int i = 0; i < 8; ++i) {
    io.push_back("-c");
    io.push_back(fmt::format("aio_write -P {} {} 262144", i + 2, (i + 4) * 262144));
  }
  io.insert(io.end(), {"-c", "aio_flush"});
  std::atomic<bool> done{false};
  CommandOutput io_out;
  std::thread client([&] {
    io_out = run_command(io);
    done = true;
  });
  struct Join {
    std::thread& t;
    ~Join() {
      if (t.joinable()) t.join();
    }
  } join_client{client};
  std::this_thread::sleep_for(milliseconds(1000));
  CHECK_FALSE(done.load());

  MonitorProbe probe(probe_sock);
  auto snap = run_command({KVMCDP_BINARY, "snapshot", "create", "--tree", tree, "--qmp",
                           vm->tool_socket(), "--drive", "disk0", "s1"});
  long worst = probe.finish();
  // A drain ends only when nothing is in flight: the snapshot could pause
  // I/O for milliseconds only because the filter let the waiting writes
  // (into its bitmap: a gap) and the waiting flush go.
  QmpReply during = vm->qmp().execute("query-cdp");
  REQUIRE(during.ok());
  REQUIRE(during.value.size() == 1);
  CHECK(during.value[0]["gap"] == true);
  REQUIRE(kill(protect.pid(), SIGCONT) == 0);
  client.join();
  REQUIRE_MESSAGE(snap.status == 0, snap.output);
  std::smatch m;
  REQUIRE_MESSAGE(std::regex_search(snap.output, m, std::regex(R"(I/O paused for ([0-9.]+) ms)")),
                  snap.output);
  double paused = std::stod(m[1]);
  INFO("I/O paused " << paused << " ms; longest answer of another monitor " << worst << " ms");
  CHECK(paused <= 50);
  CHECK(worst < 100);
  CHECK_MESSAGE(io_out.status == 0, io_out.output);

  // protect runs again: the let-go ranges are resent, the stream goes on.
  for (int i = 0; i < 1500; ++i) {
    QmpReply r = vm->qmp().execute("query-cdp");
    REQUIRE(r.ok());
    REQUIRE(r.value.size() == 1);
    const json& f = r.value[0];
    if (f["connected"] == true && f["gap"] == false && f["acked-seq"] == f["seq"]) break;
    std::this_thread::sleep_for(milliseconds(20));
  }
  wait_acked(*vm);
  REQUIRE(vm->qmp().execute("stop").ok());
  uint64_t after_seq = filter_seq(*vm);
  auto list = run_command({KVMCDP_BINARY, "snapshot", "list", "--tree", tree, "--json"});
  REQUIRE_MESSAGE(list.status == 0, list.output);
  std::string active;
  for (const auto& n : json::parse(list.output))
    if (n.value("active", false)) active = n.value("file", "");
  REQUIRE_MESSAGE(!active.empty(), list.output);
  if (active[0] != '/') active = tree + "/" + active;
  std::string after_md5 = chain_md5(active);
  REQUIRE(vm->qmp().execute("cont").ok());
  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());

  check_restore(dir, store, before_seq, before_md5);
  check_restore(dir, store, after_seq, after_md5);
}

}  // namespace kvmcdp::test
