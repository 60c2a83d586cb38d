// A patched qemu-storage-daemon (or qemu-system-x86_64, as a VM's QEMU)
// with a 16 MiB raw disk behind a writable NBD export (qemu-io writes
// through it, as a guest would) and a cdp filter attached above the disk,
// streaming into a TestReceiver.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "harness/qemu_process.h"
#include "harness/test_receiver.h"

namespace kvmcdp::test {

struct FilterOptions {
  bool auto_ack = true;
  std::string mode = "async";
  uint64_t queue_size = 0;   // 0: the filter's default
  uint32_t timeout_ms = 30000;
  // Continue a stream: the filter then holds the whole disk dirty and
  // resends it after the handshake (a resync).
  uint64_t stream_id = 0;
  // --trace patterns (log backend: to QEMU's stderr).
  std::vector<std::string> trace;
  // qemu-system-x86_64 (no guest: the export stands for it) instead of
  // qemu-storage-daemon.
  bool system = false;
  // The receiver's protocol version (2: RECEIVED for every batch).
  uint32_t version = 1;
  BadRing bad_ring = BadRing::kNone;
};

struct FilterRig {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  std::string base = dir.file("base.raw");
  std::string nbd = dir.file("nbd.sock");
  std::unique_ptr<QemuProcess> qsd;
  std::unique_ptr<TestReceiver> rx;

  explicit FilterRig(bool auto_ack, const std::string& mode = "async")
      : FilterRig(FilterOptions{auto_ack, mode}) {}

  explicit FilterRig(const FilterOptions& o) {
    REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + disk, "bs=1M", "count=16"}).status == 0);
    std::vector<std::string> args = {
        "--blockdev", fmt::format("driver=file,filename={},node-name=f0,discard=unmap", disk),
        "--blockdev", "driver=raw,file=f0,node-name=disk0,discard=unmap"};
    for (const auto& t : o.trace) {
      args.push_back("--trace");
      args.push_back(t);
    }
    if (o.system) {
      for (auto& a : args)
        if (a.rfind("--", 0) == 0) a.erase(0, 1);
      qsd = QemuProcess::start_system(dir, args);
      export_over_nbd(*qsd, nbd, "disk0");
    } else {
      args.insert(args.end(), {"--nbd-server", fmt::format("addr.type=unix,addr.path={}", nbd),
                               "--export", "type=nbd,id=e,node-name=disk0,name=e,writable=on"});
      qsd = QemuProcess::start_storage_daemon(dir, args);
    }
    // The copy "taken at attach time": nothing writes before the attach.
    REQUIRE(run_command({"cp", disk, base}).status == 0);
    rx = std::make_unique<TestReceiver>(dir.file("recv.sock"), o.auto_ack, o.version,
                                        o.bad_ring);
    json attach = {{"node", "disk0"},
                   {"node-name", "cdp0"},
                   {"mode", o.mode},
                   {"timeout", o.timeout_ms},
                   {"addr", {{"type", "unix"}, {"path", dir.file("recv.sock")}}}};
    if (o.queue_size) attach["queue-size"] = o.queue_size;
    if (o.stream_id) attach["stream-id"] = o.stream_id;
    QmpReply r = qsd->qmp().execute("cdp-attach", attach);
    REQUIRE_MESSAGE(r.ok(), r.message);
    for (int i = 0; i < 250 && !rx->accepted(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    REQUIRE(rx->accepted());
  }

  std::vector<std::string> qemu_io_argv(const std::vector<std::string>& cmds) {
    // writeback: qemu-io defaults to writethrough, a flush after every write.
    std::vector<std::string> argv = {qemu_bin("qemu-io"), "-t", "writeback", "-f", "raw",
                                     fmt::format("nbd+unix:///e?socket={}", nbd)};
    for (const auto& c : cmds) {
      argv.push_back("-c");
      argv.push_back(c);
    }
    return argv;
  }

  CommandOutput qemu_io(const std::vector<std::string>& cmds) {
    return run_command(qemu_io_argv(cmds));
  }

  json cdp() {
    QmpReply r = qsd->qmp().execute("query-cdp");
    REQUIRE(r.ok());
    REQUIRE(r.value.size() == 1);
    return r.value[0];
  }

  void wait_received(uint64_t seq) {
    for (int i = 0; i < 500 && rx->last_seq() < seq; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    REQUIRE(rx->last_seq() >= seq);
  }
};

}  // namespace kvmcdp::test
