// A minimal stream receiver for filter tests: it speaks the real protocol
// (wire_io) over a unix socket the cdp filter connects to, keeps every
// record in memory, and acknowledges only when the test says so, which a
// journal never does on purpose.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "journal/record.h"

namespace kvmcdp::test {

// A receiver that answers HELLO with version 3 and a ring QEMU must
// refuse: none at all, or a memfd without seals (it could shrink under
// QEMU's mapping).
enum class BadRing { kNone, kNoFd, kUnsealed };

class TestReceiver {
 public:
  // Listens on `socket_path`; `auto_ack` acks each batch as it arrives.
  // With protocol `version` 2 every batch is also reported RECEIVED at
  // once, acks or not.
  TestReceiver(const std::string& socket_path, bool auto_ack, uint32_t version = 1,
               BadRing bad_ring = BadRing::kNone);
  ~TestReceiver();

  void ack_all();  // ack everything received so far
  // Closes the connection, as a receiver that dies does (kill -9).
  void hang_up();
  std::vector<Record> records();
  uint64_t last_seq();
  bool connected() const { return connected_; }
  bool accepted() const { return accepted_; }  // the filter connected once
  // Replays every kWrite/kWriteZeroes/kDiscard received onto `image`.
  void replay_onto(const std::string& image);

 private:
  void run();
  std::string path_;
  bool auto_ack_;
  uint32_t version_;
  BadRing bad_ring_;
  int listen_fd_ = -1;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<bool> hang_up_{false};
  std::atomic<bool> connected_{false};
  std::atomic<bool> accepted_{false};
  std::atomic<uint64_t> ack_request_{0};
  std::mutex mu_;
  std::vector<Record> records_;
  std::thread thread_;
};

}  // namespace kvmcdp::test
