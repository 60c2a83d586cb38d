#include "capture/nbd_receiver.h"

#include <doctest/doctest.h>

#include <libnbd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "kvmcdp/nbd_format.h"
#include "store/journal_reader.h"
#include "store/journal_test_util.h"

namespace kvmcdp {
namespace {

using journal::testing::TempDir;

constexpr uint64_t kDisk = 64u << 20;

// The receiver on one end of a socketpair, its journal in a temp store.
struct Rig {
  TempDir dir;
  int sv[2];
  std::unique_ptr<journal::JournalWriter> writer;
  std::unique_ptr<NbdReceiver> rx;
  std::atomic<bool> stop{false};
  std::thread thread;
  Result<NbdReceiver::End> end = Status(ErrorKind::kFailure, "not run");
  Status handshake;

  Rig() {
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    journal::WriterOptions o;
    o.stream_id = 9;
    auto w = journal::JournalWriter::open(dir.path, o);
    REQUIRE(w);
    writer = std::move(*w);
    NbdReceiverOptions ro;
    ro.disk_size = kDisk;
    rx = std::make_unique<NbdReceiver>(sv[0], writer.get(), ro);
    rx->start_at(0, false, 0);
  }
  // Handshake, then run, on the receiver's thread.
  void start() {
    thread = std::thread([this] {
      handshake = rx->handshake(10000);
      if (handshake) end = rx->run(stop);
    });
  }
  ~Rig() {
    stop = true;
    ::shutdown(sv[1], SHUT_RDWR);
    if (thread.joinable()) thread.join();
    ::close(sv[0]);
    ::close(sv[1]);
  }
  std::vector<Record> records() {
    auto r = journal::JournalReader::open(dir.path);
    REQUIRE(r);
    std::vector<Record> out;
    REQUIRE((*r)->for_each_record(1, [&](const journal::RecordView& v) {
      out.push_back(v.to_record());
      return true;
    }));
    return out;
  }
};

// libnbd, the client QEMU's own is modelled on, over the test's end.
struct Client {
  nbd_handle* h = nbd_create();
  explicit Client(int fd) {
    REQUIRE(h);
    nbd_set_request_structured_replies(h, false);
    REQUIRE_MESSAGE(nbd_connect_socket(h, fd) == 0, nbd_get_error());
  }
  ~Client() { nbd_close(h); }
};

TEST_CASE("nbd receiver: libnbd writes, zeroes, trims and flushes: each is a record, durable "
          "before its reply") {
  Rig rig;
  rig.start();
  int fd = dup(rig.sv[1]);
  {
    Client c(fd);
    CHECK(nbd_get_size(c.h) == int64_t(kDisk));
    CHECK(nbd_can_flush(c.h) == 1);
    CHECK(nbd_can_trim(c.h) == 1);
    CHECK(nbd_can_zero(c.h) == 1);
    CHECK(nbd_is_read_only(c.h) == 0);
    std::vector<uint8_t> data(65536, 0xab);
    REQUIRE(nbd_pwrite(c.h, data.data(), data.size(), 4096, 0) == 0);
    // Every reply comes after the commit that holds the request.
    CHECK(rig.writer->last_durable_seq() >= 1);
    REQUIRE(nbd_zero(c.h, 1 << 20, 8 << 20, 0) == 0);
    REQUIRE(nbd_zero(c.h, 4096, 0, LIBNBD_CMD_FLAG_NO_HOLE) == 0);
    REQUIRE(nbd_flush(c.h, 0) == 0);
    CHECK(rig.writer->last_durable_seq() >= 4);
    // Reads are refused: the mirror never reads its target.
    std::vector<uint8_t> back(512);
    CHECK(nbd_pread(c.h, back.data(), back.size(), 0, 0) == -1);
    // A write past the disk's end is refused and journals nothing.
    CHECK(nbd_pwrite(c.h, data.data(), 4096, kDisk - 512, 0) == -1);
    // No reader for discards: the range opens a gap and waits for a resync.
    REQUIRE(nbd_trim(c.h, 65536, 16 << 20, 0) == 0);
    nbd_shutdown(c.h, 0);
  }
  rig.thread.join();
  REQUIRE_MESSAGE(rig.handshake, rig.handshake.message());
  REQUIRE_MESSAGE(rig.end, rig.end.status().message());
  CHECK(*rig.end == NbdReceiver::End::kDisconnected);
  auto recs = rig.records();
  REQUIRE(recs.size() == 5);
  CHECK(recs[0].type == RecordType::kWrite);
  CHECK(recs[0].offset == 4096);
  CHECK(recs[0].data == std::vector<uint8_t>(65536, 0xab));
  CHECK(recs[1].type == RecordType::kWriteZeroes);
  CHECK(recs[1].offset == 8u << 20);
  CHECK(recs[1].length == 1u << 20);
  CHECK(recs[2].type == RecordType::kWriteZeroes);
  CHECK(recs[3].type == RecordType::kFlush);
  CHECK(recs[4].type == RecordType::kGap);
  CHECK(rig.rx->in_gap());
  for (size_t i = 0; i < recs.size(); ++i) CHECK(recs[i].seq == i + 1);
}

TEST_CASE("nbd receiver: resync chunks close the gap, and a chunk a guest write overtook is read "
          "again") {
  Rig rig;
  std::vector<std::pair<uint64_t, uint64_t>> asked;
  std::mutex mu;
  rig.rx->set_resync_sink([&](uint64_t off, uint64_t len) {
    std::lock_guard l(mu);
    asked.emplace_back(off, len);
  });
  rig.rx->start_at(0, true, 1);  // a continued stream: GAP first, one range outstanding
  rig.start();
  int fd = dup(rig.sv[1]);
  Client c(fd);
  // The chunk was read when seq 1 was the last; then the guest wrote it.
  REQUIRE(nbd_pwrite(c.h, std::vector<uint8_t>(4096, 1).data(), 4096, 1 << 20, 0) == 0);
  rig.rx->submit(ResyncItem{false, 1 << 20, 4096, std::vector<uint8_t>(4096, 7), 1, true});
  for (int i = 0; i < 500; ++i) {
    std::lock_guard l(mu);
    if (!asked.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  {
    std::lock_guard l(mu);
    REQUIRE(asked.size() == 1);
    CHECK(asked[0] == std::pair<uint64_t, uint64_t>(1 << 20, 4096));
  }
  CHECK(rig.rx->in_gap());
  // Read again after the write: it goes in, and the gap closes.
  rig.rx->submit(ResyncItem{false, 1 << 20, 4096, std::vector<uint8_t>(4096, 1),
                            rig.rx->appended_seq(), true});
  for (int i = 0; i < 500 && rig.rx->in_gap(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK_FALSE(rig.rx->in_gap());
  REQUIRE(nbd_flush(c.h, 0) == 0);
  nbd_shutdown(c.h, 0);
  rig.thread.join();
  auto recs = rig.records();
  REQUIRE(recs.size() == 5);
  CHECK(recs[0].type == RecordType::kGap);
  CHECK(recs[1].type == RecordType::kWrite);
  CHECK(recs[2].type == RecordType::kWrite);
  CHECK((recs[2].flags & wire::kFlagResync));
  CHECK(recs[2].data == std::vector<uint8_t>(4096, 1));
  CHECK(recs[3].type == RecordType::kResyncDone);
  CHECK(recs[4].type == RecordType::kFlush);
}

TEST_CASE("nbd receiver: a resync blocked on a full item queue is let go when the receiver ends") {
  Rig rig;
  rig.rx->start_at(0, true, 1);
  // Nobody runs the receiver yet: the queue fills and the next submit waits.
  std::atomic<int> handed{0};
  std::thread resync([&] {
    for (int i = 0; i < 20; ++i) {
      rig.rx->submit(ResyncItem{true, uint64_t(i) << 20, 4096, {}, 0, false});
      handed++;
    }
  });
  for (int i = 0; i < 200 && handed < 8; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(handed == 8);  // the ninth waits for room
  // The receiver runs and ends at once (its client is gone): the rest is
  // dropped, not waited for.
  ::shutdown(rig.sv[1], SHUT_RDWR);
  rig.thread = std::thread([&] { rig.end = rig.rx->run(rig.stop); });
  resync.join();
  rig.thread.join();
  CHECK(handed == 20);
}

// Raw bytes from a hostile or broken client.
void put32(std::vector<uint8_t>* b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b->push_back(uint8_t(v >> s));
}
void put64(std::vector<uint8_t>* b, uint64_t v) {
  put32(b, uint32_t(v >> 32));
  put32(b, uint32_t(v));
}
// The client side of a fixed newstyle handshake up to NBD_OPT_GO.
void raw_handshake(int fd) {
  std::vector<uint8_t> hello(18);
  REQUIRE(recv(fd, hello.data(), hello.size(), MSG_WAITALL) == 18);
  std::vector<uint8_t> b;
  put32(&b, nbd::kFixedNewstyle | nbd::kNoZeroes);
  // An option the server does not know, then GO.
  put64(&b, nbd::kIHaveOpt);
  put32(&b, 99);
  put32(&b, 3);
  b.insert(b.end(), {1, 2, 3});
  put64(&b, nbd::kIHaveOpt);
  put32(&b, nbd::kOptGo);
  put32(&b, 6);
  put32(&b, 0);
  b.push_back(0);
  b.push_back(0);
  REQUIRE(send(fd, b.data(), b.size(), 0) == ssize_t(b.size()));
  // ERR_UNSUP for 99; INFO(export) and ACK for GO.
  std::vector<uint8_t> r(20 + 20 + 12 + 20);
  REQUIRE(recv(fd, r.data(), r.size(), MSG_WAITALL) == ssize_t(r.size()));
  CHECK(r[12] == 0x80);  // the unsupported option's reply type (ERR_UNSUP)
}

TEST_CASE("nbd receiver: hostile requests end the connection with an error, nothing journaled") {
  SUBCASE("bad request magic") {
    Rig rig;
    rig.start();
    raw_handshake(rig.sv[1]);
    std::vector<uint8_t> b(28, 0xee);
    REQUIRE(send(rig.sv[1], b.data(), b.size(), 0) == 28);
    rig.thread.join();
    REQUIRE_FALSE(rig.end);
    CHECK(rig.end.status().message().find("bad request magic") != std::string::npos);
    CHECK(rig.records().empty());
  }
  SUBCASE("a write larger than any client may send") {
    Rig rig;
    rig.start();
    raw_handshake(rig.sv[1]);
    std::vector<uint8_t> b;
    put32(&b, nbd::kRequestMagic);
    b.push_back(0);
    b.push_back(0);
    b.push_back(0);
    b.push_back(nbd::kCmdWrite);
    put64(&b, 1);
    put64(&b, 0);
    put32(&b, 0xffffffffu);
    REQUIRE(send(rig.sv[1], b.data(), b.size(), 0) == 28);
    rig.thread.join();
    REQUIRE_FALSE(rig.end);
    CHECK(rig.end.status().message().find("a write of") != std::string::npos);
    CHECK(rig.records().empty());
  }
  SUBCASE("a client without fixed newstyle") {
    Rig rig;
    rig.start();
    std::vector<uint8_t> hello(18);
    REQUIRE(recv(rig.sv[1], hello.data(), hello.size(), MSG_WAITALL) == 18);
    std::vector<uint8_t> b;
    put32(&b, 0);
    REQUIRE(send(rig.sv[1], b.data(), b.size(), 0) == 4);
    rig.thread.join();
    REQUIRE_FALSE(rig.handshake);
    CHECK(rig.handshake.message().find("fixed newstyle") != std::string::npos);
  }
  SUBCASE("an option of absurd length") {
    Rig rig;
    rig.start();
    std::vector<uint8_t> hello(18);
    REQUIRE(recv(rig.sv[1], hello.data(), hello.size(), MSG_WAITALL) == 18);
    std::vector<uint8_t> b;
    put32(&b, nbd::kFixedNewstyle);
    put64(&b, nbd::kIHaveOpt);
    put32(&b, nbd::kOptGo);
    put32(&b, 0x7fffffff);
    REQUIRE(send(rig.sv[1], b.data(), b.size(), 0) == ssize_t(b.size()));
    rig.thread.join();
    REQUIRE_FALSE(rig.handshake);
  }
}

}  // namespace
}  // namespace kvmcdp
