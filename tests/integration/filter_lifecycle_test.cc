// The filter never holds QEMU hostage: with a receiver that stops
// acknowledging (as a SIGSTOPped kvmcdp does) or dies, closing, detaching,
// draining, stopping the VM and quitting all end at once, and a dead
// receiver sends the filter to its bitmap without waiting for the timeout.
// Against the real patched qemu-storage-daemon and qemu-system-x86_64.
//
// The bounds below (1 s, 100 ms) are liveness bounds from the issue, with
// the filter's timeout set to 30 s: a wait that depends on the receiver
// shows as 30 s or forever, not as a few hundred milliseconds.
#include <atomic>
#include <chrono>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "harness/filter_rig.h"
#include "harness/monitor_probe.h"

namespace kvmcdp::test {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

long ms_since(Clock::time_point t0) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count();
}

// A rig whose receiver never acknowledges, with a 1 MiB queue; with a
// stream to continue, 2 MiB (the resync reads 1 MiB chunks).
FilterOptions stalled(uint64_t stream_id = 0) {
  FilterOptions o;
  o.auto_ack = false;
  o.queue_size = stream_id ? 2 << 20 : 1 << 20;
  o.timeout_ms = 30000;
  o.stream_id = stream_id;
  o.trace = {"cdp_*"};
  return o;
}

// Three 256 KiB records fill the 1 MiB queue, one resync chunk the 2 MiB
// one.
void wait_queue_full(FilterRig& rig) {
  for (int i = 0; i < 500 && rig.cdp()["queued-bytes"].get<uint64_t>() < (3u << 18); ++i)
    std::this_thread::sleep_for(milliseconds(20));
  REQUIRE(rig.cdp()["queued-bytes"].get<uint64_t>() >= (3u << 18));
  // Let the writers reach their wait for queue space.
  std::this_thread::sleep_for(milliseconds(300));
}

// Guest writes that fill the queue and then wait for space, in the
// background; joined before the rig goes away.
struct BackgroundWrites {
  CommandOutput out;
  std::atomic<bool> done{false};
  std::thread thread;
  BackgroundWrites(FilterRig& rig, int count) {
    std::vector<std::string> cmds;
    for (int i = 0; i < count; ++i)
      cmds.push_back(fmt::format("aio_write -P {} {} 262144", i % 200 + 1, i * 262144));
    cmds.push_back("aio_flush");
    auto argv = rig.qemu_io_argv(cmds);
    thread = std::thread([this, argv] {
      out = run_command(argv);
      done = true;
    });
  }
  ~BackgroundWrites() {
    if (thread.joinable()) thread.join();
  }
};

}  // namespace

TEST_CASE("filter lifecycle: cdp-detach during a stalled resync ends at once") {
  // Continuing a stream marks the whole disk dirty: the resync fills the
  // queue, then waits for space that a stalled receiver never frees.
  FilterRig rig(stalled(0x1234));
  wait_queue_full(rig);
  CHECK(rig.cdp()["gap"] == true);
  int timeout_ms = 0;
  SUBCASE("timeout 0") { timeout_ms = 0; }
  SUBCASE("timeout 100 ms") { timeout_ms = 100; }
  MonitorProbe probe(rig.qsd->tool_socket());
  auto t0 = Clock::now();
  // Before the fix this never returned: the QMP timeout ends the test.
  QmpReply d = rig.qsd->qmp().execute("cdp-detach", {{"node-name", "cdp0"}, {"timeout", timeout_ms}},
                                      milliseconds(20000));
  long took = ms_since(t0);
  REQUIRE_MESSAGE(d.ok(), d.message);
  std::this_thread::sleep_for(milliseconds(100));
  long worst = probe.finish();
  INFO("cdp-detach took " << took << " ms; longest answer of the other monitor " << worst << " ms");
  CHECK(took < 1000);
  CHECK(worst < 100 + timeout_ms);
  CHECK(rig.qsd->qmp().execute("query-cdp").value.empty());
  // The disk is the export's again and takes writes.
  CHECK(rig.qemu_io({"write -P 9 0 65536"}).status == 0);
}

TEST_CASE("filter lifecycle: a drain lets go of waiting requests, their ranges are resent exactly") {
  FilterRig rig(stalled());
  BackgroundWrites writes(rig, 16);
  wait_queue_full(rig);
  CHECK_FALSE(writes.done.load());
  // A transaction drains every node before it runs (QEMU's own rule).
  MonitorProbe probe(rig.qsd->tool_socket());
  auto t0 = Clock::now();
  QmpReply tr = rig.qsd->qmp().execute(
      "transaction",
      {{"actions",
        json::array({{{"type", "block-dirty-bitmap-add"},
                      {"data", {{"node", "f0"}, {"name", "drain-probe"}}}}})}},
      milliseconds(60000));
  long took = ms_since(t0);
  REQUIRE_MESSAGE(tr.ok(), tr.message);
  long worst = probe.finish();
  INFO("the drained transaction took " << took << " ms; other monitor " << worst << " ms");
  CHECK(took < 1000);
  CHECK(worst < 100);
  // The released writes went to the bitmap: a gap the filter resends.
  CHECK(rig.cdp()["gap"] == true);
  // Once the receiver acknowledges again, everything arrives: the queued
  // records, then the gap's ranges read back from the disk.
  for (int i = 0; i < 1500 && (!writes.done || rig.cdp()["gap"] == true ||
                               rig.cdp()["acked-seq"] != rig.cdp()["seq"]);
       ++i) {
    rig.rx->ack_all();
    std::this_thread::sleep_for(milliseconds(20));
  }
  writes.thread.join();
  REQUIRE_MESSAGE(writes.out.status == 0, writes.out.output);
  CHECK(rig.cdp()["gap"] == false);
  bool resent = false;
  for (const auto& r : rig.rx->records()) resent |= (r.flags & wire::kFlagResync) != 0;
  CHECK(resent);
  rig.rx->replay_onto(rig.base);
  CHECK(md5_of_file(rig.base) == md5_of_file(rig.disk));
}

TEST_CASE("filter lifecycle: a receiver that dies with the queue full: the bitmap at once") {
  FilterRig rig(stalled());
  BackgroundWrites writes(rig, 16);
  wait_queue_full(rig);
  CHECK_FALSE(writes.done.load());
  auto t0 = Clock::now();
  rig.rx->hang_up();
  while (!writes.done && ms_since(t0) < 30000) std::this_thread::sleep_for(milliseconds(5));
  long took = ms_since(t0);
  INFO("the waiting writes completed " << took << " ms after the receiver died");
  CHECK(writes.done.load());
  CHECK(took < 1000);
  writes.thread.join();
  CHECK_MESSAGE(writes.out.status == 0, writes.out.output);
  json st = rig.cdp();
  CHECK(st["connected"] == false);
  CHECK(st["gap"] == true);
  CHECK(st["dirty-bytes"].get<uint64_t>() >= 16u * 262144 - (1u << 20));
  // The trace events say why.
  std::string log = rig.qsd->console();
  CHECK(log.find("cdp_receiver_gone node cdp0 why eof") != std::string::npos);
  CHECK(log.find("cdp_drop node cdp0 why queue-full-without-receiver") != std::string::npos);
  CHECK(log.find("cdp_queue_full_wait") != std::string::npos);
}

TEST_CASE("filter lifecycle: a receiver that dies with a flush waiting: no wait, no gap") {
  FilterOptions o = stalled();
  o.queue_size = 0;  // the default 64 MiB: room for everything below
  FilterRig rig(o);
  std::atomic<bool> done{false};
  CommandOutput io;
  std::thread writer([&] {
    io = rig.qemu_io({"write -P 5 0 1M", "flush"});
    done = true;
  });
  for (int i = 0; i < 500 && rig.rx->last_seq() < 2; ++i) std::this_thread::sleep_for(milliseconds(20));
  std::this_thread::sleep_for(milliseconds(300));
  CHECK_FALSE(done.load());  // the flush waits for its acknowledgement
  auto t0 = Clock::now();
  rig.rx->hang_up();
  while (!done && ms_since(t0) < 30000) std::this_thread::sleep_for(milliseconds(5));
  long took = ms_since(t0);
  writer.join();
  INFO("the flush completed " << took << " ms after the receiver died");
  CHECK(took < 1000);
  CHECK_MESSAGE(io.status == 0, io.output);
  // The records wait in the queue for the next receiver: no gap.
  json st = rig.cdp();
  CHECK(st["gap"] == false);
  CHECK(st["acked-seq"].get<uint64_t>() < st["seq"].get<uint64_t>());
  TestReceiver again(rig.dir.file("recv2.sock"), true);
  QmpReply c = rig.qsd->qmp().execute(
      "cdp-connect", {{"node-name", "cdp0"},
                      {"addr", {{"type", "unix"}, {"path", rig.dir.file("recv2.sock")}}}});
  REQUIRE_MESSAGE(c.ok(), c.message);
  for (int i = 0; i < 500 && again.last_seq() < st["seq"].get<uint64_t>(); ++i)
    std::this_thread::sleep_for(milliseconds(20));
  CHECK(rig.cdp()["gap"] == false);
  auto recs = again.records();
  REQUIRE_FALSE(recs.empty());
  CHECK(recs.front().seq == 1);
  CHECK(recs.back().seq == st["seq"].get<uint64_t>());
  again.replay_onto(rig.base);
  CHECK(md5_of_file(rig.base) == md5_of_file(rig.disk));
}

TEST_CASE("filter lifecycle: stopping the VM does not wait for a stalled receiver") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  std::string nbd = dir.file("nbd.sock");
  REQUIRE(run_command({"truncate", "-s", "16M", disk}).status == 0);
  auto vm = QemuProcess::start_system(
      dir, {"-blockdev", fmt::format("driver=file,filename={},node-name=disk0", disk)});
  export_over_nbd(*vm, nbd, "disk0");
  TestReceiver rx(dir.file("recv.sock"), false);
  QmpReply a = vm->qmp().execute(
      "cdp-attach", {{"node", "disk0"},
                     {"node-name", "cdp0"},
                     {"timeout", 30000},
                     {"addr", {{"type", "unix"}, {"path", dir.file("recv.sock")}}}});
  REQUIRE_MESSAGE(a.ok(), a.message);
  for (int i = 0; i < 250 && !rx.connected(); ++i) std::this_thread::sleep_for(milliseconds(20));
  REQUIRE(rx.connected());
  // A write, then the client's flush at exit: that flush waits for an
  // acknowledgement that never comes.
  std::atomic<bool> done{false};
  CommandOutput io;
  std::thread writer([&] {
    io = run_command({qemu_bin("qemu-io"), "-t", "writeback", "-f", "raw",
                      fmt::format("nbd+unix:///e?socket={}", nbd), "-c", "write -P 3 0 65536"});
    done = true;
  });
  std::this_thread::sleep_for(milliseconds(500));
  CHECK_FALSE(done.load());
  // Stopping the VM flushes every disk: neither that flush nor the
  // client's may wait for the receiver while the VM stops.
  auto t0 = Clock::now();
  QmpReply stop = vm->qmp().execute("stop", json::object(), milliseconds(60000));
  long took = ms_since(t0);
  REQUIRE_MESSAGE(stop.ok(), stop.message);
  while (!done && ms_since(t0) < 30000) std::this_thread::sleep_for(milliseconds(5));
  long released = ms_since(t0);
  writer.join();
  INFO("stop took " << took << " ms; the client's flush ended after " << released << " ms");
  CHECK(took < 1000);
  CHECK(released < 1000);
  CHECK_MESSAGE(io.status == 0, io.output);
  t0 = Clock::now();
  vm->qmp().execute("quit", json::object(), milliseconds(2000));
  REQUIRE(vm->wait_exit(milliseconds(30000)).has_value());
  CHECK(ms_since(t0) < 1000);
}


TEST_CASE("filter lifecycle: a resync waiting for queue space survives a move to an iothread") {
  // The resync coroutine waits for room while the node moves to another
  // AioContext (the move drains it): it must park and go on in the new
  // context, and the disk must still arrive whole.
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  std::string base = dir.file("base.raw");
  REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + disk, "bs=1M", "count=16"}).status == 0);
  REQUIRE(run_command({"truncate", "-s", "16M", base}).status == 0);
  auto qsd = QemuProcess::start_storage_daemon(
      dir, {"--object", "iothread,id=io0", "--blockdev",
            fmt::format("driver=file,filename={},node-name=f0", disk), "--blockdev",
            "driver=raw,file=f0,node-name=disk0", "--trace", "cdp_drain*"});
  TestReceiver rx(dir.file("recv.sock"), false);
  // Above the file node, below the raw node: disk0 is its user.  A stream
  // to continue: the whole disk is resent, through a 2 MiB queue.
  QmpReply a = qsd->qmp().execute(
      "cdp-attach", {{"node", "f0"},
                     {"node-name", "cdp0"},
                     {"queue-size", 2 << 20},
                     {"timeout", 30000},
                     {"stream-id", 0x9abc},
                     {"addr", {{"type", "unix"}, {"path", dir.file("recv.sock")}}}});
  REQUIRE_MESSAGE(a.ok(), a.message);
  auto cdp = [&] {
    QmpReply r = qsd->qmp().execute("query-cdp");
    REQUIRE(r.ok());
    REQUIRE(r.value.size() == 1);
    return r.value[0];
  };
  for (int i = 0; i < 500 && cdp()["queued-bytes"].get<uint64_t>() < (1u << 20); ++i)
    std::this_thread::sleep_for(milliseconds(20));
  REQUIRE(cdp()["queued-bytes"].get<uint64_t>() >= (1u << 20));
  std::this_thread::sleep_for(milliseconds(300));
  REQUIRE(cdp()["gap"] == true);

  QmpReply mv = qsd->qmp().execute("x-blockdev-set-iothread",
                                   {{"node-name", "disk0"}, {"iothread", "io0"}},
                                   milliseconds(20000));
  REQUIRE_MESSAGE(mv.ok(), mv.message);
  CHECK(qsd->console().find("cdp_drain_begin") != std::string::npos);
  for (int i = 0; i < 1500 && (cdp()["gap"] == true || cdp()["acked-seq"] != cdp()["seq"]); ++i) {
    rx.ack_all();
    std::this_thread::sleep_for(milliseconds(20));
  }
  json st = cdp();
  CHECK(st["gap"] == false);
  CHECK(st["acked-seq"] == st["seq"]);
  bool done = false;
  for (const auto& r : rx.records()) done |= r.type == wire::MsgType::kResyncDone;
  CHECK(done);
  rx.replay_onto(base);
  CHECK(md5_of_file(base) == md5_of_file(disk));
}


TEST_CASE("filter lifecycle: quit while an export's writes wait for queue space") {
  // QEMU closes its exports before it drains, and an export waits for its
  // requests: without the drain that qemu-patch/7.2/0005 (10.0: 0002) adds to that close,
  // quit took the filter's whole timeout (29.7 s here).
  FilterRig rig(stalled());
  BackgroundWrites writes(rig, 16);
  wait_queue_full(rig);
  CHECK_FALSE(writes.done.load());
  auto t0 = Clock::now();
  rig.qsd->qmp().execute("quit", json::object(), milliseconds(2000));
  REQUIRE(rig.qsd->wait_exit(milliseconds(60000)).has_value());
  long took = ms_since(t0);
  writes.thread.join();
  INFO("quit took " << took << " ms");
  CHECK(took < 1000);
}

TEST_CASE("filter lifecycle: removing the export whose writes wait for queue space, then quit") {
  // The guest side goes away (an NBD client's export is removed) while its
  // writes wait for space that a stalled receiver never frees.  QEMU's NBD
  // server does not drain a hard removal: it waits for the requests in
  // flight, as it would for a slow disk, so they end by the filter's
  // timeout (3 s here).
  // Meanwhile every monitor answers, and a quit afterwards is at once.
  FilterOptions o = stalled();
  o.timeout_ms = 3000;
  FilterRig rig(o);
  BackgroundWrites writes(rig, 16);
  wait_queue_full(rig);
  CHECK_FALSE(writes.done.load());
  MonitorProbe probe(rig.qsd->tool_socket());
  auto t0 = Clock::now();
  QmpReply del = rig.qsd->qmp().execute("block-export-del", {{"id", "e"}, {"mode", "hard"}},
                                        milliseconds(60000));
  REQUIRE_MESSAGE(del.ok(), del.message);
  bool gone = false;
  while (!gone && ms_since(t0) < 30000) {
    QmpReply q = rig.qsd->qmp().execute("query-block-exports");
    REQUIRE(q.ok());
    gone = q.value.empty();
    if (!gone) std::this_thread::sleep_for(milliseconds(5));
  }
  long took = ms_since(t0);
  long worst = probe.finish();
  INFO("the export was gone after " << took << " ms; another monitor " << worst << " ms");
  CHECK(gone);
  CHECK(worst < 100);
  // The export was the disk's only user: the filter left with it.
  CHECK(rig.qsd->qmp().execute("query-cdp").value.empty());
  writes.thread.join();  // the client saw its connection close
  t0 = Clock::now();
  rig.qsd->qmp().execute("quit", json::object(), milliseconds(2000));
  REQUIRE(rig.qsd->wait_exit(milliseconds(30000)).has_value());
  INFO("quit took " << ms_since(t0) << " ms");
  CHECK(ms_since(t0) < 1000);
}

TEST_CASE("filter lifecycle: blockdev-del of the filter's parent during a stalled resync") {
  // The filter above the file node, the raw node its parent: deleting the
  // raw node closes the filter while its resync waits for queue space that
  // a stalled receiver never frees (before: closing waited for it forever).
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + disk, "bs=1M", "count=16"}).status == 0);
  auto qsd = QemuProcess::start_storage_daemon(
      dir, {"--blockdev", fmt::format("driver=file,filename={},node-name=f0", disk), "--blockdev",
            "driver=raw,file=f0,node-name=disk0"});
  TestReceiver rx(dir.file("recv.sock"), false);
  QmpReply a = qsd->qmp().execute(
      "cdp-attach", {{"node", "f0"},
                     {"node-name", "cdp0"},
                     {"queue-size", 2 << 20},
                     {"timeout", 30000},
                     {"stream-id", 0xdef0},
                     {"addr", {{"type", "unix"}, {"path", dir.file("recv.sock")}}}});
  REQUIRE_MESSAGE(a.ok(), a.message);
  auto queued = [&] {
    QmpReply r = qsd->qmp().execute("query-cdp");
    REQUIRE(r.ok());
    REQUIRE(r.value.size() == 1);
    return r.value[0]["queued-bytes"].get<uint64_t>();
  };
  for (int i = 0; i < 500 && queued() < (1u << 20); ++i)
    std::this_thread::sleep_for(milliseconds(20));
  REQUIRE(queued() >= (1u << 20));
  std::this_thread::sleep_for(milliseconds(300));

  MonitorProbe probe(qsd->tool_socket());
  auto t0 = Clock::now();
  QmpReply del = qsd->qmp().execute("blockdev-del", {{"node-name", "disk0"}}, milliseconds(20000));
  long took = ms_since(t0);
  long worst = probe.finish();
  REQUIRE_MESSAGE(del.ok(), del.message);
  INFO("blockdev-del took " << took << " ms; another monitor " << worst << " ms");
  CHECK(took < 1000);
  CHECK(worst < 100);
  CHECK(qsd->qmp().execute("query-cdp").value.empty());
}

}  // namespace kvmcdp::test
