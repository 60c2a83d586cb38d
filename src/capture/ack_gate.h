// Which store a flush waits for, when protect ships to a remote server.
//
// The receiver asks the gate how far it may acknowledge the filter, given
// what the local journal (store or spool) holds durably; the shipper
// tells the gate how far the server is.  Either side wakes the other
// through an eventfd, so an ack that waits for the server goes out the
// moment the server's ACK arrives, not on a timer.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace kvmcdp {

class AckGate {
 public:
  enum class Policy {
    kLocal,          // the local store: the server catches up behind it
    kRemote,         // the server (and the local store): both hold it
    kRemoteOrSpool,  // the server; while it is unreachable, the spool
  };
  explicit AckGate(Policy p)
      : policy_(p), to_receiver_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)),
        to_shipper_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~AckGate() {
    close(to_receiver_);
    close(to_shipper_);
  }
  AckGate(const AckGate&) = delete;
  AckGate& operator=(const AckGate&) = delete;

  uint64_t ackable(uint64_t local_durable) const {
    switch (policy_) {
      case Policy::kLocal:
        return local_durable;
      case Policy::kRemote:
        return std::min(local_durable, remote_.load());
      case Policy::kRemoteOrSpool:
        return connected_ ? std::min(local_durable, remote_.load()) : local_durable;
    }
    return 0;
  }
  bool waits_for_remote() const { return policy_ != Policy::kLocal; }

  // Shipper side.
  void set_remote(uint64_t durable_seq) {
    remote_ = durable_seq;
    if (waits_for_remote()) wake(to_receiver_);
  }
  void set_connected(bool c) {
    connected_ = c;
    if (waits_for_remote()) wake(to_receiver_);
  }
  // The spool is over its limit: the receiver lets go of the filter
  // (whose dirty bitmap then takes over) until it is not.
  void set_paused(bool p) {
    paused_ = p;
    wake(to_receiver_);
  }
  bool paused() const { return paused_; }
  int shipper_fd() const { return to_shipper_; }

  // Receiver side.
  int receiver_fd() const { return to_receiver_; }
  void committed() { wake(to_shipper_); }

  static void drain(int fd) {
    uint64_t v;
    while (read(fd, &v, sizeof v) > 0) {
    }
  }

 private:
  static void wake(int fd) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(fd, &one, sizeof one);
  }
  Policy policy_;
  std::atomic<uint64_t> remote_{0};
  std::atomic<bool> connected_{false};
  std::atomic<bool> paused_{false};
  int to_receiver_, to_shipper_;
};

}  // namespace kvmcdp
