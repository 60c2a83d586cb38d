// Encoding and decoding the filter's stream messages (wire_format.h), and
// a buffered reader that hands out whole messages from a socket without a
// syscall per message.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvmcdp/wire_format.h"
#include "journal/record.h"
#include "base/status.h"

namespace kvmcdp::wire {

void encode_header(const MsgHeader& h, uint8_t out[kHeaderSize]);
// Checks magic, type and payload bounds; the message is refused, not
// guessed at, if any is wrong.
Status decode_header(const uint8_t in[kHeaderSize], MsgHeader* h);

// Sends a payload-less control message (HELLO_REPLY, ACK).
Status send_control(int fd, MsgType type, uint64_t seq, uint32_t aux = 0);

class MessageReader {
 public:
  // The default holds the largest message twice over.  A smaller buffer
  // (fuzz targets, whose inputs are small) never completes a message
  // longer than itself.
  explicit MessageReader(int fd, size_t buffer_bytes = 8u << 20) : fd_(fd), buf_(buffer_bytes) {}

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
  int fd_;
  std::vector<uint8_t> buf_;
  size_t start_ = 0, end_ = 0;
};

Record to_record(const MsgHeader& h, const uint8_t* payload);

}  // namespace kvmcdp::wire
