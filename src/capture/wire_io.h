// Encoding and decoding the filter's stream messages (wire_format.h), and
// a buffered reader that hands out whole messages from a socket without a
// syscall per message, or from the shared-memory ring of version 3.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "capture/stream_ring.h"
#include "kvmcdp/wire_format.h"
#include "journal/record.h"
#include "base/status.h"

namespace kvmcdp::wire {

void encode_header(const MsgHeader& h, uint8_t out[kHeaderSize]);
// Checks magic, type and payload bounds; the message is refused, not
// guessed at, if any is wrong.
Status decode_header(const uint8_t in[kHeaderSize], MsgHeader* h);

// Sends a payload-less control message (HELLO_REPLY, ACK), with `pass_fd`
// (the ring's memfd) attached if it is not -1.
Status send_control(int fd, MsgType type, uint64_t seq, uint32_t aux = 0, int pass_fd = -1);

class MessageReader {
 public:
  // The default holds the largest message twice over.  A smaller buffer
  // (fuzz targets, whose inputs are small) never completes a message
  // longer than itself.
  explicit MessageReader(int fd, size_t buffer_bytes = 8u << 20) : fd_(fd), buf_(buffer_bytes) {}

  // From now on the messages come from `ring` (which must outlive this
  // reader), and the socket only says "wake up" or "the end".  Messages
  // handed out stay in the ring until the next call of next(): only then
  // does the filter learn that their space is free.
  void use_ring(StreamRing* ring);
  StreamRing* ring() const { return ring_; }
  // Bytes the filter has sent that this reader has not handed out yet
  // (on the socket: what FIONREAD says).
  size_t pending() const;
  // Ring only: before waiting on the socket; false if messages came in
  // meanwhile (then do not wait).
  bool may_sleep();

  enum class Next { kMessage, kNeedMore, kClosed };
  // Reads what the socket has (at most one read()).  kClosed on EOF;
  // a failed read or a malformed message is an error Status.
  Result<Next> fill();
  // The next complete message, if one is buffered (true): header and a
  // pointer to its payload, valid until the next fill().  A malformed
  // header is an error.
  Result<bool> next(MsgHeader* h, const uint8_t** payload);
  bool buffered_message() const;

 private:
  Result<Next> fill_from_ring();
  Result<bool> next_in_ring(MsgHeader* h, const uint8_t** payload);

  int fd_;
  std::vector<uint8_t> buf_;
  size_t start_ = 0, end_ = 0;
  StreamRing* ring_ = nullptr;
  uint64_t ring_start_ = 0, ring_end_ = 0;  // stream positions in the ring
  bool closed_ = false;                      // the socket said EOF
};

Record to_record(const MsgHeader& h, const uint8_t* payload);

}  // namespace kvmcdp::wire
