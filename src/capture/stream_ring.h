// The shared-memory ring of the filter's stream, protocol version 3
// (layout and rules: kvmcdp/wire_format.h, man/kvmcdp-wire.5).
//
// kvmcdp creates it and hands its fd to the filter with HELLO_REPLY; the
// filter copies each record in and publishes the ring's head, kvmcdp reads
// the records where they lie and publishes its tail.  With a busy stream
// neither side makes a system call per batch: the socket only carries
// wake-ups, and only to a side that said it sleeps.
//
// The data area is mapped twice, back to back, so a message that wraps
// around its end is still contiguous in memory.
#pragma once

#include <cstdint>
#include <memory>

#include "base/status.h"

namespace kvmcdp::wire {

class StreamRing {
 public:
  // A new sealed memfd of `data_size` bytes of data (a power of two
  // between kRingMinData and kRingMaxData), its header written, mapped.
  static Result<std::unique_ptr<StreamRing>> create(uint64_t data_size);
  // Maps a ring made by the other side.  Takes `fd`.  Its seals, size
  // and header are checked first: a ring that could shrink under us or
  // lies about its size is refused.
  static Result<std::unique_ptr<StreamRing>> attach(int fd);
  ~StreamRing();
  StreamRing(const StreamRing&) = delete;
  StreamRing& operator=(const StreamRing&) = delete;

  int fd() const { return fd_; }
  uint64_t data_size() const { return size_; }
  // Stream byte `pos`; data_size() bytes from there are contiguous.
  const uint8_t* at(uint64_t pos) const { return data_ + (pos & (size_ - 1)); }
  uint8_t* at(uint64_t pos) { return data_ + (pos & (size_ - 1)); }

  uint64_t head() const;  // acquire: the bytes before it are there
  uint64_t tail() const;
  void publish_head(uint64_t head);  // release, then a full fence
  void publish_tail(uint64_t tail);  // release, then a full fence

  // The consumer before it waits on the socket: sets its flag, then
  // (after a full fence) whether head moved past `seen` meanwhile.
  bool sleep_unless_moved(uint64_t seen);
  void awake();
  // Swaps a flag to 0: whether the other side asked to be woken.
  bool take_consumer_sleeps();
  bool take_producer_waits();
  void set_producer_waits();

 private:
  StreamRing() = default;
  Status map(int fd, uint64_t size);

  int fd_ = -1;
  uint8_t* header_ = nullptr;
  uint8_t* data_ = nullptr;  // 2 * size_ bytes mapped
  uint64_t size_ = 0;
};

}  // namespace kvmcdp::wire
