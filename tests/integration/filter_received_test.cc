// Protocol version 2: the filter frees queue space when the receiver says
// RECEIVED, and only flushes wait for the ACK that says durable.  A
// receiver that dies between the two loses nothing: the ranges it had
// come back after a GAP.  Against the real patched qemu-storage-daemon.
#include <atomic>
#include <chrono>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "harness/filter_rig.h"

namespace kvmcdp::test {
namespace {

using std::chrono::milliseconds;

// A receiver that reports RECEIVED for everything and acknowledges
// nothing until told to, in front of a 1 MiB queue.
FilterOptions received_only() {
  FilterOptions o;
  o.auto_ack = false;
  o.version = 2;
  o.queue_size = 1 << 20;
  o.timeout_ms = 30000;
  o.trace = {"cdp_*"};
  return o;
}

// qemu-io on its own thread; joined before the rig goes away, also when
// a check fails.
struct BackgroundIo {
  CommandOutput out;
  std::atomic<bool> done{false};
  std::thread thread;
  BackgroundIo(FilterRig& rig, const std::vector<std::string>& cmds)
      : thread([this, argv = rig.qemu_io_argv(cmds)] {
          out = run_command(argv);
          done = true;
        }) {}
  ~BackgroundIo() { join(); }
  void join() {
    if (thread.joinable()) thread.join();
  }
};

std::vector<std::string> writes_256k(int count, int first_pattern) {
  std::vector<std::string> cmds;
  for (int i = 0; i < count; ++i)
    cmds.push_back(fmt::format("aio_write -P {} {} 262144", first_pattern + i, i * 262144));
  return cmds;
}

}  // namespace

TEST_CASE("received acks: queue space frees on RECEIVED, a flush waits for the ACK") {
  FilterRig rig(received_only());
  // 4 MiB of writes through a 1 MiB queue that is never acknowledged:
  // with version 1 the fifth write would wait for queue space (see the
  // filter lifecycle tests); here every write is in the receiver's hands.
  auto cmds = writes_256k(16, 1);
  cmds.push_back("aio_flush");
  BackgroundIo io(rig, cmds);
  rig.wait_received(17);  // 16 writes and the flush
  json st = rig.cdp();
  CHECK(st["received-seq"].get<uint64_t>() >= 17);
  CHECK(st["acked-seq"].get<uint64_t>() == 0);
  CHECK(st["gap"] == false);
  // Of received records only their headers stay queued.
  CHECK(st["queued-bytes"].get<uint64_t>() < 4096);
  // The flush waits for its ACK: nothing acknowledged, it has not come back.
  std::this_thread::sleep_for(milliseconds(300));
  CHECK_FALSE(io.done.load());
  CHECK(rig.cdp()["acked-seq"].get<uint64_t>() == 0);
  rig.rx->ack_all();
  io.join();
  CHECK_MESSAGE(io.out.status == 0, io.out.output);
  CHECK(rig.cdp()["acked-seq"].get<uint64_t>() >= 17);
  rig.rx->replay_onto(rig.base);
  CHECK(md5_of_file(rig.base) == md5_of_file(rig.disk));
}

TEST_CASE("received acks: a receiver that dies after RECEIVED, before the ACK: the ranges come "
          "back after a GAP") {
  FilterOptions o = received_only();
  o.queue_size = 0;  // the default: the queue is not what this is about
  FilterRig rig(o);
  // qemu-io flushes when it ends; the flush waits for an ACK that never
  // comes, until the receiver dies.
  BackgroundIo io(rig, writes_256k(8, 21));
  rig.wait_received(9);
  json st = rig.cdp();
  CHECK(st["received-seq"].get<uint64_t>() >= 9);
  CHECK(st["acked-seq"].get<uint64_t>() == 0);
  // The receiver dies without making any of it durable.
  rig.rx->hang_up();
  io.join();
  REQUIRE_MESSAGE(io.out.status == 0, io.out.output);
  // Nothing was dropped yet: the records wait for the next receiver.
  CHECK(rig.cdp()["gap"] == false);
  TestReceiver again(rig.dir.file("recv2.sock"), true, 2);
  QmpReply c = rig.qsd->qmp().execute(
      "cdp-connect", {{"node-name", "cdp0"},
                      {"addr", {{"type", "unix"}, {"path", rig.dir.file("recv2.sock")}}}});
  REQUIRE_MESSAGE(c.ok(), c.message);
  auto resync_done = [&] {
    for (const auto& r : again.records())
      if (r.type == wire::MsgType::kResyncDone) return true;
    return false;
  };
  for (int i = 0; i < 1500 && !resync_done(); ++i) std::this_thread::sleep_for(milliseconds(20));
  REQUIRE(resync_done());
  auto recs = again.records();
  // The stream says what is missing: a GAP from the first record the new
  // receiver lacks, then the ranges read back from the disk.
  REQUIRE_FALSE(recs.empty());
  CHECK(recs.front().type == wire::MsgType::kGap);
  CHECK(recs.front().offset == 1);
  uint64_t resent = 0;
  for (const auto& r : recs)
    if (r.type == wire::MsgType::kWrite && (r.flags & wire::kFlagResync)) resent += r.length;
  CHECK(resent >= 8u * 262144);
  CHECK(rig.cdp()["gap"] == false);
  again.replay_onto(rig.base);
  CHECK(md5_of_file(rig.base) == md5_of_file(rig.disk));
  CHECK(rig.qsd->console().find("cdp_received_lost node cdp0 seq 1 ") != std::string::npos);
}

TEST_CASE("received acks: a receiver whose version 3 ring is missing or unsealed is refused, the guest goes on") {
  for (BadRing bad : {BadRing::kNoFd, BadRing::kUnsealed}) {
    CAPTURE(static_cast<int>(bad));
    FilterOptions o = received_only();
    o.version = 3;
    o.bad_ring = bad;
    FilterRig rig(o);
    for (int i = 0; i < 250 && rig.qsd->console().find("ring is missing or unusable") ==
                                   std::string::npos;
         ++i)
      std::this_thread::sleep_for(milliseconds(20));
    CHECK(rig.qsd->console().find("ring is missing or unusable") != std::string::npos);
    // QEMU maps nothing it was not sure of: the guest's writes and flush
    // complete, the filter counts the receiver as gone.
    auto out = rig.qemu_io(writes_256k(4, 1));
    CHECK_MESSAGE(out.status == 0, out.output);
    json st = rig.cdp();
    CHECK(st["connected"] == false);
    CHECK(rig.qsd->qmp().execute("query-block-exports").ok());
  }
}

}  // namespace kvmcdp::test
