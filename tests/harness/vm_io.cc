#include "harness/vm_io.h"

#include <chrono>
#include <ctime>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>

namespace kvmcdp::test {

std::unique_ptr<QemuProcess> start_vm(const TempDir& dir, const std::string& disk) {
  return QemuProcess::start_system(
      dir, {"-S", "-blockdev",
            fmt::format("driver=file,filename={},node-name=disk0-file,discard=unmap", disk),
            "-blockdev", "driver=raw,file=disk0-file,node-name=disk0,discard=unmap", "-device",
            "virtio-blk-pci,drive=disk0,id=vd0"});
}

std::unique_ptr<QemuProcess> start_vm_with_monitor(const TempDir& dir, const std::string& disk,
                                                   const std::string& monitor) {
  return QemuProcess::start_system(
      dir, {"-S", "-blockdev", fmt::format("driver=file,filename={},node-name=disk0-file", disk),
            "-blockdev", "driver=raw,file=disk0-file,node-name=disk0", "-device",
            "virtio-blk-pci,drive=disk0,id=vd0", "-chardev",
            fmt::format("socket,id=m3,path={},server=on,wait=off", monitor), "-mon",
            "chardev=m3,mode=control"});
}

SmallFs::SmallFs(const std::string& where, const std::string& size) : path(where) {
  REQUIRE(run_command({"mkdir", "-p", path}).status == 0);
  auto m = run_command({"mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", path});
  REQUIRE_MESSAGE(m.status == 0, "cannot mount a tmpfs (root needed): ", m.output);
}

void SmallFs::grow(const std::string& size) {
  REQUIRE(run_command({"mount", "-o", "remount,size=" + size, path}).status == 0);
}

SmallFs::~SmallFs() { run_command({"umount", "-l", path}); }

void qemu_io(QemuProcess& vm, const std::string& cmd) {
  QmpReply r = vm.qmp().execute(
      "human-monitor-command",
      {{"command-line",
        fmt::format("qemu-io -d /machine/peripheral/vd0/virtio-backend \"{}\"", cmd)}});
  REQUIRE_MESSAGE(r.ok(), r.message);
  // HMP returns some of qemu-io's output and QEMU prints the rest on its
  // stdout (the console log, which tests check too).
  std::string out = r.value.get<std::string>();
  REQUIRE_MESSAGE(out.find("rror") == std::string::npos, cmd, ": ", out);
}

uint64_t filter_seq(QemuProcess& vm) {
  QmpReply r = vm.qmp().execute("query-cdp");
  REQUIRE(r.ok());
  REQUIRE(r.value.size() == 1);
  return r.value[0]["seq"].get<uint64_t>();
}

void wait_acked(QemuProcess& vm) {
  for (int i = 0; i < 500; ++i) {
    QmpReply r = vm.qmp().execute("query-cdp");
    REQUIRE(r.ok());
    REQUIRE(r.value.size() == 1);
    if (r.value[0]["acked-seq"] == r.value[0]["seq"] && r.value[0]["connected"] == true) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  FAIL("the filter's records were not acknowledged in 10 s");
}

std::string iso_now() {
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                std::chrono::system_clock::now().time_since_epoch())
                .count();
  time_t s = ns / 1000000000;
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", gmtime(&s));
  return fmt::format("{}.{:09}Z", buf, ns % 1000000000);
}

void check_restore(const TempDir& dir, const std::string& store, uint64_t seq,
                   const std::string& md5) {
  std::string out = dir.file("restored.raw");
  auto r = run_command({KVMCDP_BINARY, "restore", "--force", "--quiet", "--store", store, "--seq",
                        std::to_string(seq), "-o", out});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  CHECK_MESSAGE(md5_of_file(out) == md5, "seq ", seq);
}

}  // namespace kvmcdp::test
