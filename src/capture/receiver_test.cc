#include "capture/receiver.h"

#include <doctest/doctest.h>

#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "store/journal_reader.h"
#include "store/journal_test_util.h"

namespace kvmcdp {
namespace {

using journal::testing::TempDir;
using wire::MsgHeader;
using wire::MsgType;

// The filter's end of the stream, played by the test.
struct FilterEnd {
  int fd;
  uint32_t version = 1;  // what HELLO offers
  uint64_t received = 0;  // the last RECEIVED seen
  int passed_fd = -1;
  std::unique_ptr<wire::StreamRing> ring;  // version 3
  uint64_t head = 0;
  int wakeups = 0;  // bytes sent to a receiver that slept

  void send(MsgType type, uint64_t seq, uint16_t flags = 0, std::vector<uint8_t> payload = {}) {
    MsgHeader h{};
    h.magic = wire::kMagic;
    h.type = static_cast<uint16_t>(type);
    h.flags = flags;
    h.seq = seq;
    h.time_ns = seq * 1000;
    h.offset = type == MsgType::kHello ? 7 : seq * 4096;
    h.length = type == MsgType::kHello ? 1 << 30 : payload.size();
    h.payload_len = uint32_t(payload.size());
    if (type == MsgType::kHello) h.aux = version;
    send_header(h, payload);
  }
  // A GAP record: seqs from `from` on were lost.
  void gap(uint64_t seq, uint64_t from) {
    MsgHeader h{};
    h.magic = wire::kMagic;
    h.type = static_cast<uint16_t>(MsgType::kGap);
    h.seq = seq;
    h.time_ns = seq * 1000;
    h.offset = from;
    send_header(h, {});
  }
  void send_header(const MsgHeader& h, const std::vector<uint8_t>& payload) {
    uint8_t b[wire::kHeaderSize];
    wire::encode_header(h, b);
    if (ring) {
      to_ring(b, payload);
      return;
    }
    REQUIRE(::send(fd, b, sizeof b, MSG_NOSIGNAL) == ssize_t(sizeof b));
    size_t done = 0;
    while (done < payload.size()) {
      ssize_t n = ::send(fd, payload.data() + done, payload.size() - done, MSG_NOSIGNAL);
      REQUIRE(n > 0);
      done += size_t(n);
    }
  }
  void write(uint64_t seq, uint16_t flags = 0) {
    send(MsgType::kWrite, seq, flags, std::vector<uint8_t>(4096, uint8_t(seq)));
  }
  // Version 3: the message goes into the ring as the filter puts it
  // there, waiting for space as long as it takes, and a byte on the socket
  // wakes the receiver if it said it sleeps.
  void to_ring(const uint8_t* header, const std::vector<uint8_t>& payload) {
    uint64_t need = wire::kHeaderSize + payload.size();
    for (int i = 0; ring->data_size() - (head - ring->tail()) < need; ++i) {
      REQUIRE(i < 20000);  // 20 s: a hang detector
      timespec t{0, 1'000'000};
      nanosleep(&t, nullptr);
    }
    std::memcpy(ring->at(head), header, wire::kHeaderSize);
    if (!payload.empty()) std::memcpy(ring->at(head + wire::kHeaderSize), payload.data(), payload.size());
    head += need;
    ring->publish_head(head);
    if (ring->take_consumer_sleeps()) {
      wakeups++;
      REQUIRE(::send(fd, "w", 1, MSG_NOSIGNAL) == 1);
    }
  }
  // The next control message; fails the test if none comes within 20 s
  // (a hang detector, not a speed check).  A passed fd (the ring's, with
  // HELLO_REPLY) is kept in passed_fd.
  MsgHeader receive() {
    uint8_t b[wire::kHeaderSize];
    size_t got = 0;
    while (got < sizeof b) {
      pollfd p{fd, POLLIN, 0};
      REQUIRE(poll(&p, 1, 20000) == 1);
      iovec iov{b + got, sizeof b - got};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
      msghdr m{};
      m.msg_iov = &iov;
      m.msg_iovlen = 1;
      m.msg_control = control;
      m.msg_controllen = sizeof control;
      ssize_t n = ::recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
      REQUIRE(n > 0);
      for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
          std::memcpy(&passed_fd, CMSG_DATA(c), sizeof(int));
      got += size_t(n);
    }
    MsgHeader h{};
    REQUIRE(wire::decode_header(b, &h));
    return h;
  }
  // Reads acks until one covers `seq`; RECEIVED acks on the way are noted.
  uint64_t ack_covering(uint64_t seq) {
    uint64_t last = 0;
    while (last < seq) {
      MsgHeader h = receive();
      if (h.type == static_cast<uint16_t>(MsgType::kReceived)) {
        // With a ring, a RECEIVED may repeat the last one: a wake-up.
        if (ring) CHECK(h.seq >= received);
        else CHECK(h.seq > received);
        received = h.seq;
        continue;
      }
      REQUIRE(h.type == static_cast<uint16_t>(MsgType::kAck));
      CHECK(h.seq > last);  // acks only move forward
      last = h.seq;
    }
    return last;
  }
};

// A receiver on one end of a socketpair, running on its own thread.
struct Rig {
  TempDir dir;
  int sv[2];
  std::unique_ptr<journal::JournalWriter> writer;
  std::unique_ptr<StreamReceiver> rx;
  std::atomic<bool> stop{false};
  std::thread thread;
  Result<StreamReceiver::End> end = Status(ErrorKind::kFailure, "not run");
  FilterEnd filter{-1};

  // `run`: start the receiver's thread now (else start() does).
  explicit Rig(bool every_write_waits, ResyncCompare* compare = nullptr, uint32_t version = 1,
               bool run = true) {
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    filter.fd = sv[1];
    filter.version = version;
    journal::WriterOptions o;
    o.stream_id = 7;
    auto w = journal::JournalWriter::open(dir.path, o);
    REQUIRE(w);
    writer = std::move(*w);
    rx = std::make_unique<StreamReceiver>(sv[0], writer.get());
    rx->set_every_write_waits(every_write_waits);
    rx->set_resync_compare(compare);
    filter.send(MsgType::kHello, 0);
    auto hello = rx->handshake(0, 10000);
    REQUIRE(hello);
    MsgHeader reply = filter.receive();
    CHECK(reply.type == static_cast<uint16_t>(MsgType::kHelloReply));
    // Agreed downwards; a test that makes the ring fail gets version 2.
    const char* fail = std::getenv("KVMCDP_FAIL_AT_STEP");
    uint32_t most = fail && std::string(fail) == "ring:create" ? 2 : wire::kVersion;
    CHECK(reply.aux == std::min(version, most));
    CHECK((filter.passed_fd >= 0) == (reply.aux >= wire::kVersionRing));
    if (filter.passed_fd >= 0) {
      auto ring = wire::StreamRing::attach(filter.passed_fd);
      REQUIRE_MESSAGE(ring, ring.status().message());
      filter.ring = std::move(*ring);
    }
    if (run) start();
  }
  void start() { thread = std::thread([this] { end = rx->run(stop); }); }
  ~Rig() {
    stop = true;
    if (thread.joinable()) thread.join();
    ::close(sv[0]);
    ::close(sv[1]);
  }
  uint64_t journal_records() {
    auto r = journal::JournalReader::open(dir.path);
    REQUIRE(r);
    uint64_t n = 0;
    REQUIRE((*r)->for_each_record(1, [&](const journal::RecordView&) { return ++n, true; }));
    return n;
  }
};

}  // namespace

TEST_CASE("receiver, sync mode: a lone write is committed and acked") {
  Rig rig(true);
  rig.filter.write(1);
  CHECK(rig.filter.ack_covering(1) == 1);
  CHECK(rig.writer->last_durable_seq() >= 1);
}

TEST_CASE("receiver, async mode: writes are acked without a flush, a flush and a FUA write too") {
  Rig rig(false);
  // No flush: the batch's age still commits them, or the filter's queue
  // would never drain.
  for (uint64_t s = 1; s <= 3; s++) rig.filter.write(s);
  CHECK(rig.filter.ack_covering(3) == 3);
  rig.filter.write(4);
  rig.filter.send(MsgType::kFlush, 5);
  CHECK(rig.filter.ack_covering(5) == 5);
  rig.filter.write(6, wire::kFlagFua);
  CHECK(rig.filter.ack_covering(6) == 6);
  // An ack is only sent for what is durable: a fresh reader sees it all.
  CHECK(rig.journal_records() == 6);
}

TEST_CASE("receiver, version 2: RECEIVED once a record is written, ACK only once it is durable") {
  for (bool sync : {true, false}) {
    CAPTURE(sync);
    Rig rig(sync, nullptr, 2);
    rig.filter.write(1);
    // RECEIVED is sent when the frame is written, before its fdatasync
    // ends, so it comes first; the ACK follows the fdatasync.
    MsgHeader first = rig.filter.receive();
    CHECK(first.type == static_cast<uint16_t>(MsgType::kReceived));
    CHECK(first.seq == 1);
    rig.filter.received = first.seq;
    CHECK(rig.filter.ack_covering(1) == 1);
    for (uint64_t s = 2; s <= 40; s++) rig.filter.write(s);
    rig.filter.send(MsgType::kFlush, 41);
    CHECK(rig.filter.ack_covering(41) == 41);
    // Every record was reported received, in order (checked on the way).
    CHECK(rig.filter.received == 41);
    CHECK(rig.journal_records() == 41);
  }
}

TEST_CASE("receiver: a version 1 filter never gets RECEIVED, versions are agreed downwards") {
  {
    Rig rig(false, nullptr, 1);
    for (uint64_t s = 1; s <= 5; s++) rig.filter.write(s);
    rig.filter.send(MsgType::kFlush, 6);
    CHECK(rig.filter.ack_covering(6) == 6);
    CHECK(rig.filter.received == 0);
  }
  {
    Rig rig(false, nullptr, 9);  // a newer filter: HELLO_REPLY says 3 (checked in Rig)
    rig.filter.send(MsgType::kFlush, 1);
    CHECK(rig.filter.ack_covering(1) == 1);
    CHECK(rig.filter.received == 1);
  }
  TempDir dir;
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  journal::WriterOptions o;
  o.stream_id = 7;
  auto w = journal::JournalWriter::open(dir.path, o);
  REQUIRE(w);
  StreamReceiver rx(sv[0], w->get());
  FilterEnd f{sv[1]};
  f.version = 0;
  f.send(MsgType::kHello, 0);
  auto hello = rx.handshake(0, 10000);
  REQUIRE_FALSE(hello);
  CHECK(hello.status().message().find("protocol version 0") != std::string::npos);
  ::close(sv[0]);
  ::close(sv[1]);
}

TEST_CASE("receiver: a long stream with commits running beside it: every record lands, acks in order") {
  for (bool sync : {true, false}) {
    CAPTURE(sync);
    Rig rig(sync);
    // Reads acks while writing, so neither side's socket buffer fills.
    std::atomic<uint64_t> acked{0};
    std::thread acks([&] { acked = rig.filter.ack_covering(3000); });
    for (uint64_t s = 1; s <= 3000; s++) {
      if (s % 500 == 0)
        rig.filter.send(MsgType::kFlush, s);
      else
        rig.filter.write(s);
    }
    acks.join();
    CHECK(acked.load() == 3000);
    rig.stop = true;
    rig.thread.join();
    REQUIRE(rig.end);
    CHECK(*rig.end == StreamReceiver::End::kStopped);
    CHECK(rig.rx->counters().durable_seq == 3000);
    CHECK(rig.journal_records() == 3000);
  }
}

TEST_CASE("receiver: it notices when the filter is ahead of it, and only then") {
  // 20 writes of 4 KiB (~83,000 bytes with their headers) wait on the
  // socket before the receiver first reads: more than kAheadBytes.
  {
    Rig rig(true, nullptr, 1, false);
    for (uint64_t s = 1; s <= 20; s++) rig.filter.write(s);
    rig.start();
    CHECK(rig.filter.ack_covering(20) == 20);
    rig.stop = true;
    rig.thread.join();
    REQUIRE(rig.end);
    CHECK(rig.rx->counters().ahead_reads >= 1);
  }
  // One write at a time, each waiting for its ack: never ahead.
  {
    Rig rig(true);
    for (uint64_t s = 1; s <= 20; s++) {
      rig.filter.write(s);
      CHECK(rig.filter.ack_covering(s) == s);
    }
    rig.stop = true;
    rig.thread.join();
    REQUIRE(rig.end);
    CHECK(rig.rx->counters().records == 20);
    CHECK(rig.rx->counters().ahead_reads == 0);
  }
}

TEST_CASE("receiver: messages that come close together are gathered in async mode only") {
  // A write every ~50 us, well inside kCoalesce: in async mode polls are
  // delayed so that writes gather; in sync mode, where each write waits
  // for its commit, never.  Every record lands either way.
  for (bool sync : {false, true}) {
    CAPTURE(sync);
    Rig rig(sync);
    std::atomic<uint64_t> acked{0};
    std::thread acks([&] { acked = rig.filter.ack_covering(500); });
    for (uint64_t s = 1; s <= 500; s++) {
      if (s == 500)
        rig.filter.send(MsgType::kFlush, s);
      else
        rig.filter.write(s);
      timespec t{0, 50'000};
      ::nanosleep(&t, nullptr);
    }
    acks.join();
    CHECK(acked.load() == 500);
    rig.stop = true;
    rig.thread.join();
    REQUIRE(rig.end);
    CHECK(rig.journal_records() == 500);
    if (sync)
      CHECK(rig.rx->counters().coalesced == 0);
    else
      CHECK(rig.rx->counters().coalesced > 0);
  }
}

// The receiver died after its commit of 406..407 but before the filter saw
// the ack (it last saw 405), and stayed away past the filter's timeout:
// the filter dropped its queue and announces a gap from 406 (its ack + 1),
// while the journal, which is the truth, holds 407.
TEST_CASE("receiver: a gap announced from a seq the journal holds starts after the journal's end") {
  TempDir dir;
  journal::WriterOptions o;
  o.stream_id = 7;
  {
    auto w = journal::JournalWriter::open(dir.path, o);
    REQUIRE(w);
    for (uint64_t s = 400; s <= 407; s++)
      REQUIRE((*w)->append(journal::testing::write_rec(s, s * 4096, std::vector<uint8_t>(4096, 1))));
    REQUIRE((*w)->commit());
    REQUIRE((*w)->close());
  }
  auto w = journal::JournalWriter::open(dir.path, o);
  REQUIRE(w);
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  FilterEnd filter{sv[1]};
  StreamReceiver rx(sv[0], w->get());
  filter.send(MsgType::kHello, 410, wire::kFlagGap);
  REQUIRE(rx.handshake((*w)->last_durable_seq(), 10000));
  MsgHeader reply = filter.receive();
  CHECK(reply.type == static_cast<uint16_t>(MsgType::kHelloReply));
  CHECK(reply.seq == 407);
  std::atomic<bool> stop{false};
  Result<StreamReceiver::End> end = Status(ErrorKind::kFailure, "not run");
  // A receiver that fails hangs up, so the test fails at once.
  std::thread thread([&] {
    end = rx.run(stop);
    if (!end) ::shutdown(sv[0], SHUT_RDWR);
  });
  struct Join {
    std::atomic<bool>& stop;
    std::thread& t;
    int* sv;
    ~Join() {
      stop = true;
      if (t.joinable()) t.join();
      ::close(sv[0]);
      ::close(sv[1]);
    }
  } join{stop, thread, sv};
  filter.write(407);  // a resend of what the journal has: skipped
  filter.gap(411, 406);
  filter.write(412, wire::kFlagResync);
  filter.send(MsgType::kResyncDone, 413);
  filter.write(414);
  uint64_t acked = filter.ack_covering(414);
  stop = true;
  thread.join();
  REQUIRE_MESSAGE(end, end.status().message());
  CHECK(acked == 414);
  REQUIRE(w->get()->close());

  auto r = journal::JournalReader::open(dir.path);
  REQUIRE(r);
  std::vector<uint64_t> seqs;
  uint64_t gap_from = 0;
  REQUIRE((*r)->for_each_record(1, [&](const journal::RecordView& v) {
    seqs.push_back(v.seq);
    if (v.type == RecordType::kGap) gap_from = v.offset;
    return true;
  }));
  CHECK(seqs == std::vector<uint64_t>{400, 401, 402, 403, 404, 405, 406, 407, 411, 412, 413, 414});
  CHECK(gap_from == 408);
}

// Continuing a stream: resync records are trimmed to the blocks that
// differ from the map before they are journaled, and one that matches
// throughout keeps its seq as a WRITE of length 0.
TEST_CASE("receiver: with a resync compare, resent blocks the journal holds are not journaled") {
  constexpr uint64_t kB = BlockFingerprints::kBlockSize;
  const std::vector<uint8_t> zero(kB, 0);
  BlockFingerprints map(4 * kB);  // the journal's image: four zero blocks
  for (uint64_t b = 0; b < 4; b++) map.set(b, BlockFingerprints::digest(zero.data(), kB));
  ResyncCompare compare(std::move(map), nullptr);
  Rig rig(true, &compare);
  auto resync = [&](uint64_t seq, uint64_t off, std::vector<uint8_t> data) {
    MsgHeader h{};
    h.magic = wire::kMagic;
    h.type = static_cast<uint16_t>(MsgType::kWrite);
    h.flags = wire::kFlagResync;
    h.seq = seq;
    h.time_ns = seq * 1000;
    h.offset = off;
    h.length = h.payload_len = uint32_t(data.size());
    rig.filter.send_header(h, data);
  };
  rig.filter.gap(1, 1);
  resync(2, 0, std::vector<uint8_t>(2 * kB, 0));
  std::vector<uint8_t> changed(2 * kB, 0);
  changed[kB + 5] = 1;  // block 3
  resync(3, 2 * kB, changed);
  rig.filter.send(MsgType::kResyncDone, 4);
  CHECK(rig.filter.ack_covering(4) == 4);
  CHECK_FALSE(compare.comparing());
  CHECK(compare.totals().resent_bytes == 4 * kB);
  CHECK(compare.totals().journaled_bytes == kB);

  auto r = journal::JournalReader::open(rig.dir.path);
  REQUIRE(r);
  std::vector<Record> got;
  REQUIRE((*r)->for_each_record(1, [&](const journal::RecordView& v) {
    got.push_back(v.to_record());
    return true;
  }));
  REQUIRE(got.size() == 4);
  CHECK(got[1].type == RecordType::kWrite);
  CHECK(got[1].flags == wire::kFlagResync);
  CHECK(got[1].offset == 0);
  CHECK(got[1].length == 0);
  CHECK(got[1].data.empty());
  CHECK(got[2].offset == 3 * kB);
  CHECK(got[2].length == kB);
  CHECK(got[2].data == std::vector<uint8_t>(changed.begin() + long(kB), changed.end()));
}


TEST_CASE("receiver, version 3: records through the shared ring, exact across its wrap, acks on the socket") {
  for (bool sync : {true, false}) {
    CAPTURE(sync);
    Rig rig(sync, nullptr, 3);
    REQUIRE(rig.filter.ring);
    // A lone write: the receiver sleeps on the socket and is woken.
    rig.filter.write(1);
    CHECK(rig.filter.ack_covering(1) == 1);
    // Writes of 1 MiB and 4 KiB take the 16 MiB ring round several times,
    // with messages that straddle its end.
    std::atomic<uint64_t> acked{0};
    std::thread acks([&] { acked = rig.filter.ack_covering(400); });
    for (uint64_t s = 2; s <= 400; s++) {
      if (s % 100 == 0) {
        rig.filter.send(MsgType::kFlush, s);
        continue;
      }
      size_t n = s % 3 == 0 ? (1u << 20) : 4096;
      std::vector<uint8_t> data(n);
      for (size_t i = 0; i < n; i += 512) data[i] = uint8_t(s + i / 512);
      rig.filter.send(MsgType::kWrite, s, 0, std::move(data));
    }
    acks.join();
    CHECK(acked.load() == 400);
    CHECK(rig.filter.head > 3 * rig.filter.ring->data_size());
    CHECK(rig.filter.wakeups >= 1);
    rig.stop = true;
    rig.thread.join();
    REQUIRE(rig.end);
    auto r = journal::JournalReader::open(rig.dir.path);
    REQUIRE(r);
    uint64_t n = 0, bad = 0;
    REQUIRE((*r)->for_each_record(1, [&](const journal::RecordView& v) {
      ++n;
      if (v.seq >= 2 && v.seq % 100 != 0) {
        size_t len = v.seq % 3 == 0 ? (1u << 20) : 4096;
        bool ok = v.data_len == len;
        for (size_t i = 0; ok && i < len; i += 512)
          ok = v.data[i] == uint8_t(v.seq + i / 512) && (i + 1 >= len || v.data[i + 1] == 0);
        bad += !ok;
      }
      return true;
    }));
    CHECK(n == 400);
    CHECK(bad == 0);
  }
}

TEST_CASE("receiver, version 3: a filter waiting for ring space is woken, a lying head ends the stream") {
  {
    Rig rig(false, nullptr, 3, false);
    // Three 4 MiB writes leave no room for a fourth in 16 MiB.
    for (uint64_t s = 1; s <= 3; s++)
      rig.filter.send(MsgType::kWrite, s, 0, std::vector<uint8_t>(4u << 20, uint8_t(s)));
    rig.filter.ring->set_producer_waits();
    rig.start();
    rig.filter.send(MsgType::kFlush, 4);
    CHECK(rig.filter.ack_covering(4) == 4);
    // The receiver took the flag (and sent a RECEIVED as the wake-up).
    CHECK_FALSE(rig.filter.ring->take_producer_waits());
  }
  {
    Rig rig(false, nullptr, 3, false);
    rig.filter.ring->publish_head(rig.filter.ring->data_size() + 4096);
    rig.start();
    rig.thread.join();
    REQUIRE_FALSE(rig.end);
    CHECK(rig.end.status().message().find("out of bounds") != std::string::npos);
  }
}

TEST_CASE("receiver: without a ring (a test makes its creation fail) a version 3 filter is answered with 2") {
  setenv("KVMCDP_FAIL_AT_STEP", "ring:create", 1);
  {
    Rig rig(false, nullptr, 3);  // checks that no fd came with the reply
    CHECK_FALSE(rig.filter.ring);
    rig.filter.send(MsgType::kFlush, 1);
    CHECK(rig.filter.ack_covering(1) == 1);
  }
  unsetenv("KVMCDP_FAIL_AT_STEP");
}

}  // namespace kvmcdp
