#include "capture/stream_ring.h"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "capture/wire_io.h"
#include "kvmcdp/wire_format.h"

namespace kvmcdp::wire {

TEST_CASE("stream ring: the other side's mapping sees the same bytes, contiguous across the end") {
  auto a = StreamRing::create(kRingMinData);
  REQUIRE_MESSAGE(a, a.status().message());
  auto b = StreamRing::attach(fcntl((*a)->fd(), F_DUPFD_CLOEXEC, 0));
  REQUIRE_MESSAGE(b, b.status().message());
  CHECK((*b)->data_size() == kRingMinData);
  // 100 bytes written from 40 before the end: the first 60 wrap to 0.
  uint64_t pos = 5 * kRingMinData - 40;
  uint8_t msg[100];
  for (int i = 0; i < 100; ++i) msg[i] = uint8_t(i + 1);
  std::memcpy((*a)->at(pos), msg, sizeof msg);
  (*a)->publish_head(pos + sizeof msg);
  CHECK((*b)->head() == pos + sizeof msg);
  CHECK(std::memcmp((*b)->at(pos), msg, sizeof msg) == 0);
  CHECK((*b)->at(0)[59] == 100);
  (*b)->publish_tail(pos + 10);
  CHECK((*a)->tail() == pos + 10);
  // The flags: set by one side, taken once by the other.
  CHECK_FALSE((*a)->take_consumer_sleeps());
  CHECK((*b)->sleep_unless_moved(0));  // head moved: not asleep
  CHECK_FALSE((*a)->take_consumer_sleeps());
  CHECK_FALSE((*b)->sleep_unless_moved(pos + sizeof msg));
  CHECK((*a)->take_consumer_sleeps());
  CHECK_FALSE((*a)->take_consumer_sleeps());
  (*a)->set_producer_waits();
  CHECK((*b)->take_producer_waits());
  CHECK_FALSE((*b)->take_producer_waits());
}

TEST_CASE("stream ring: a ring that could shrink, or whose header lies, is refused") {
  SUBCASE("not sealed") {
    int fd = memfd_create("t", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    REQUIRE(fd >= 0);
    REQUIRE(ftruncate(fd, kRingHeaderSize + kRingMinData) == 0);
    auto r = StreamRing::attach(fd);
    REQUIRE_FALSE(r);
    CHECK(r.status().message().find("sealed") != std::string::npos);
  }
  SUBCASE("a size the file does not have, or no ring at all") {
    for (uint64_t lie : {kRingMinData * 2, kRingMinData + 1, uint64_t{0}}) {
      int fd = memfd_create("t", MFD_CLOEXEC | MFD_ALLOW_SEALING);
      REQUIRE(fd >= 0);
      REQUIRE(ftruncate(fd, kRingHeaderSize + kRingMinData) == 0);
      uint8_t h[16];
      uint32_t magic = lie ? kRingMagic : 0, version = kRingVersion;
      std::memcpy(h, &magic, 4);
      std::memcpy(h + 4, &version, 4);
      std::memcpy(h + 8, &lie, 8);
      REQUIRE(pwrite(fd, h, 16, 0) == 16);
      REQUIRE(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0);
      auto r = StreamRing::attach(fd);
      CHECK_FALSE(r);
    }
  }
  SUBCASE("sizes that are not a power of two in range are not made") {
    CHECK_FALSE(StreamRing::create(kRingMinData / 2));
    CHECK_FALSE(StreamRing::create(kRingMinData + 4096));
  }
}

TEST_CASE("stream ring: records the filter published before the reader took the ring are read") {
  // The filter may publish as soon as it has HELLO_REPLY, before kvmcdp's
  // reader switches to the ring.
  auto ring = StreamRing::create(kRingMinData);
  REQUIRE(ring);
  uint64_t head = 0;
  for (uint64_t seq = 1; seq <= 3; ++seq) {
    MsgHeader h{};
    h.magic = kMagic;
    h.type = static_cast<uint16_t>(MsgType::kFlush);
    h.seq = seq;
    encode_header(h, (*ring)->at(head));
    head += kHeaderSize;
  }
  (*ring)->publish_head(head);
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
  MessageReader reader(sv[0]);
  reader.use_ring(ring->get());
  auto filled = reader.fill();
  REQUIRE(filled);
  CHECK(*filled == MessageReader::Next::kMessage);
  MsgHeader h{};
  const uint8_t* payload = nullptr;
  for (uint64_t seq = 1; seq <= 3; ++seq) {
    auto got = reader.next(&h, &payload);
    REQUIRE(got);
    REQUIRE(*got);
    CHECK(h.seq == seq);
  }
  auto none = reader.next(&h, &payload);
  REQUIRE(none);
  CHECK_FALSE(*none);
  CHECK((*ring)->tail() == head);  // all taken, and said so
  close(sv[0]);
  close(sv[1]);
}

}  // namespace kvmcdp::wire
