// Framing of the remote protocol (include/kvmcdp/remote_format.h): a
// connection that sends whole messages and hands out whole received ones,
// with timeouts, over a socket or a pipe pair to ssh.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvmcdp/remote_format.h"
#include "base/status.h"

namespace kvmcdp::remote {

void encode_header(const MsgHeader& h, uint8_t out[kHeaderSize]);
// Refuses a bad magic, an unknown type or an oversized payload.
Status decode_header(const uint8_t in[kHeaderSize], MsgHeader* h);

struct Message {
  MsgHeader h;
  const uint8_t* payload = nullptr;  // valid until the next receive
  std::string_view text() const {
    return {reinterpret_cast<const char*>(payload), h.payload_len};
  }
  // An ERROR's reason, fit for one log or error line: the peer chose
  // these bytes, so control characters become spaces and it is cut short.
  std::string reason() const;
};

// Owns the descriptors (closes them).  `in` and `out` may be the same fd.
class Conn {
 public:
  Conn(int in, int out);
  ~Conn();
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  // Blocks until sent or `timeout_ms` passes without progress.
  Status send(MsgType t, uint64_t a, uint64_t b, const void* payload, size_t n,
              int timeout_ms = 60000);
  Status send(MsgType t, uint64_t a = 0, uint64_t b = 0, std::string_view payload = {},
              int timeout_ms = 60000) {
    return send(t, a, b, payload.data(), payload.size(), timeout_ms);
  }
  // The next message, waiting up to `timeout_ms` (0: only what is already
  // here).  false: none yet.  The peer closing is an error.
  Result<bool> receive(Message* m, int timeout_ms);
  // Waits for a message of type `want`; an ERROR message becomes an error
  // Status carrying the peer's reason.
  Result<Message> expect(MsgType want, int timeout_ms);
  bool buffered() const;
  // Refuses, on its header, any later message with a larger payload (at
  // most kMaxPayload, the default): a stranger may not make us wait for,
  // or hold, more than a login needs.
  void set_max_payload(uint32_t n) { max_payload_ = n; }
  int in_fd() const { return in_; }
  // The last expect() failed because the peer said ERROR (it refused us),
  // not because the connection failed.
  bool peer_refused() const { return refused_; }

 private:
  Result<bool> fill(int timeout_ms);
  int in_, out_;
  std::vector<uint8_t> buf_;
  size_t start_ = 0, end_ = 0;
  uint32_t max_payload_ = kMaxPayload;
  bool refused_ = false;
};

}  // namespace kvmcdp::remote
