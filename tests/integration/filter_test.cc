// The cdp filter itself, against a real patched qemu-storage-daemon: a
// test receiver (tests/harness/test_receiver.h) takes the stream and
// qemu-io writes through a writable NBD export, as a guest would.
#include <atomic>
#include <chrono>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "harness/filter_rig.h"

namespace kvmcdp::test {

TEST_CASE("filter: writes, write-zeroes, discards and flushes arrive exactly, in order") {
  FilterRig rig(true);
  auto io = rig.qemu_io({"write -P 0x11 4096 8192", "write -z 65536 4096",
                         "write -z -u 131072 65536", "discard 262144 65536", "flush"});
  REQUIRE_MESSAGE(io.status == 0, io.output);
  rig.wait_received(rig.cdp()["seq"].get<uint64_t>());
  auto recs = rig.rx->records();
  std::string seen;
  for (const auto& r : recs)
    seen += fmt::format("{}:{}@{}+{}/{} ", r.seq, wire::type_name(r.type), r.offset, r.length,
                        r.flags);
  CAPTURE(seen);
  REQUIRE(recs.size() >= 5);

  struct Want {
    wire::MsgType type;
    uint64_t offset, length;
    uint16_t flags;
  };
  const Want want[] = {{wire::MsgType::kWrite, 4096, 8192, 0},
                       {wire::MsgType::kWriteZeroes, 65536, 4096, 0},
                       {wire::MsgType::kWriteZeroes, 131072, 65536, wire::kFlagUnmap},
                       {wire::MsgType::kDiscard, 262144, 65536, 0},
                       {wire::MsgType::kFlush, 0, 0, 0}};
  for (size_t i = 0; i < 5; ++i) {
    CAPTURE(i);
    CHECK(recs[i].seq == i + 1);
    CHECK(recs[i].type == want[i].type);
    if (want[i].type != wire::MsgType::kFlush) {
      CHECK(recs[i].offset == want[i].offset);
      CHECK(recs[i].length == want[i].length);
    }
    CHECK((recs[i].flags & wire::kFlagUnmap) == want[i].flags);
  }
  CHECK(recs[0].data == std::vector<uint8_t>(8192, 0x11));
  for (size_t i = 1; i < recs.size(); ++i) {
    CHECK(recs[i].seq == recs[i - 1].seq + 1);
    CHECK(recs[i].time_ns >= recs[i - 1].time_ns);
  }
  // Anything after our five is the NBD client's own flush at close.
  for (size_t i = 5; i < recs.size(); ++i) CHECK(recs[i].type == wire::MsgType::kFlush);

  rig.rx->replay_onto(rig.base);
  CHECK(md5_of_file(rig.base) == md5_of_file(rig.disk));
}

TEST_CASE("filter: concurrent overlapping writes replay to the exact disk") {
  FilterRig rig(true);
  std::vector<std::string> cmds;
  for (int round = 0; round < 20; ++round) {
    for (int k = 0; k < 8; ++k)
      cmds.push_back(fmt::format("aio_write -P {} {} {}", (round * 8 + k) % 250 + 1,
                                 (k * 24576 + round * 4096) % (1 << 20), 65536 + k * 4096));
    cmds.push_back("aio_flush");
  }
  auto io = rig.qemu_io(cmds);
  REQUIRE_MESSAGE(io.status == 0, io.output);
  rig.wait_received(rig.cdp()["seq"].get<uint64_t>());
  rig.rx->replay_onto(rig.base);
  CHECK(md5_of_file(rig.base) == md5_of_file(rig.disk));
}

TEST_CASE("filter: a guest flush completes only after kvmcdp acknowledged") {
  FilterRig rig(false);
  std::atomic<bool> done{false};
  CommandOutput io;
  std::thread writer([&] {
    io = rig.qemu_io({"write -P 5 0 65536", "flush"});
    done = true;
  });
  // The write is queued, the flush waits: nothing is acked yet.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  CHECK_FALSE(done.load());
  json state = rig.cdp();
  CHECK(state["acked-seq"] == 0);
  CHECK(state["seq"].get<uint64_t>() >= 2);
  rig.rx->ack_all();
  writer.join();
  CHECK(done.load());
  CHECK_MESSAGE(io.status == 0, io.output);
  CHECK(rig.cdp()["acked-seq"] == rig.cdp()["seq"]);
}

TEST_CASE("filter: detach with a live export keeps the data and removes the node") {
  FilterRig rig(true);
  REQUIRE(rig.qemu_io({"write -P 7 0 1M"}).status == 0);
  QmpReply d = rig.qsd->qmp().execute("cdp-detach", {{"node-name", "cdp0"}});
  REQUIRE_MESSAGE(d.ok(), d.message);
  CHECK(rig.qsd->qmp().execute("query-cdp").value.empty());
  // The export keeps working without the filter.
  REQUIRE(rig.qemu_io({"write -P 8 1M 1M"}).status == 0);
  auto read = rig.qemu_io({"read -P 7 0 1M", "read -P 8 1M 1M"});
  CHECK_MESSAGE(read.status == 0, read.output);
  CHECK(read.output.find("Pattern verification failed") == std::string::npos);
}

}  // namespace kvmcdp::test
