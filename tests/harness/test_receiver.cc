#include "harness/test_receiver.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <stdexcept>

#include "capture/wire_io.h"

namespace kvmcdp::test {

TestReceiver::TestReceiver(const std::string& socket_path, bool auto_ack, uint32_t version,
                           BadRing bad_ring)
    : path_(socket_path), auto_ack_(auto_ack), version_(version), bad_ring_(bad_ring) {
  listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path_.c_str(), sizeof sa.sun_path - 1);
  unlink(path_.c_str());
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
      listen(listen_fd_, 1) != 0)
    throw std::runtime_error("TestReceiver: cannot listen on " + path_);
  thread_ = std::thread([this] { run(); });
}

TestReceiver::~TestReceiver() {
  stop_ = true;
  thread_.join();
  if (fd_ >= 0) close(fd_);
  close(listen_fd_);
  unlink(path_.c_str());
}

void TestReceiver::run() {
  pollfd lp{listen_fd_, POLLIN, 0};
  while (!stop_ && poll(&lp, 1, 50) == 0) {
  }
  if (stop_) return;
  fd_ = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd_ < 0) return;
  connected_ = true;
  accepted_ = true;
  wire::MessageReader reader(fd_);
  uint64_t acked = 0, received = 0;
  bool greeted = false;
  while (!stop_ && !hang_up_) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, 20) > 0) {
      auto r = reader.fill();
      if (!r || *r == wire::MessageReader::Next::kClosed) break;
    }
    wire::MsgHeader h{};
    const uint8_t* payload = nullptr;
    for (;;) {
      auto got = reader.next(&h, &payload);
      if (!got || !*got) break;
      if (h.type == static_cast<uint16_t>(wire::MsgType::kHello)) {
        // Versions are agreed downwards, as kvmcdp does.
        version_ = std::min(version_, h.aux);
        if (bad_ring_ != BadRing::kNone) {
          int ring = -1;
          if (bad_ring_ == BadRing::kUnsealed) {
            ring = memfd_create("unsealed", MFD_CLOEXEC);
            uint8_t head[16] = {};
            uint32_t magic = wire::kRingMagic, version = wire::kRingVersion;
            uint64_t size = wire::kRingMinData;
            std::memcpy(head, &magic, 4);
            std::memcpy(head + 4, &version, 4);
            std::memcpy(head + 8, &size, 8);
            if (ftruncate(ring, wire::kRingHeaderSize + size) != 0 ||
                pwrite(ring, head, sizeof head, 0) != sizeof head)
              break;
          }
          wire::send_control(fd_, wire::MsgType::kHelloReply, 0, wire::kVersionRing, ring);
          if (ring >= 0) close(ring);
          greeted = true;
          continue;
        }
        wire::send_control(fd_, wire::MsgType::kHelloReply, 0, version_);
        greeted = true;
        continue;
      }
      std::lock_guard l(mu_);
      records_.push_back(wire::to_record(h, payload));
    }
    uint64_t last = last_seq();
    if (greeted && version_ >= wire::kVersionReceived && last > received) {
      wire::send_control(fd_, wire::MsgType::kReceived, last);
      received = last;
    }
    uint64_t want = auto_ack_ ? last : std::min<uint64_t>(ack_request_.load(), last);
    if (greeted && want > acked) {
      wire::send_control(fd_, wire::MsgType::kAck, want);
      acked = want;
    }
  }
  if (hang_up_) {
    close(fd_);
    fd_ = -1;
  }
  connected_ = false;
}

void TestReceiver::ack_all() { ack_request_ = UINT64_MAX; }

void TestReceiver::hang_up() {
  hang_up_ = true;
  while (connected_) std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

std::vector<Record> TestReceiver::records() {
  std::lock_guard l(mu_);
  return records_;
}

uint64_t TestReceiver::last_seq() {
  std::lock_guard l(mu_);
  return records_.empty() ? 0 : records_.back().seq;
}

void TestReceiver::replay_onto(const std::string& image) {
  int fd = open(image.c_str(), O_WRONLY);
  if (fd < 0) throw std::runtime_error("replay: cannot open " + image);
  std::vector<uint8_t> zeroes;
  for (const auto& r : records()) {
    if (r.type == wire::MsgType::kWrite) {
      if (pwrite(fd, r.data.data(), r.data.size(), r.offset) != ssize_t(r.data.size()))
        throw std::runtime_error("replay: short write");
    } else if (r.type == wire::MsgType::kWriteZeroes || r.type == wire::MsgType::kDiscard) {
      zeroes.assign(r.length, 0);
      if (pwrite(fd, zeroes.data(), zeroes.size(), r.offset) != ssize_t(zeroes.size()))
        throw std::runtime_error("replay: short write");
    }
  }
  close(fd);
}

}  // namespace kvmcdp::test
