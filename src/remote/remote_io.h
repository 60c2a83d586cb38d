// Framing of the remote protocol (include/kvmcdp/remote_format.h): a
// connection that sends whole messages and hands out whole received ones,
// with timeouts, over a socket or a pipe pair to ssh.
#pragma once

#include <cstdint>
#include <memory>
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

// How the bytes cross: plain descriptors (a socket, the pipes to ssh) or
// a TLS session on a socket (remote_tls.h).  Non-blocking: what would
// wait returns 0 and the caller polls `fd()` for `events()`.
class Transport {
 public:
  virtual ~Transport() = default;
  // Bytes read (> 0), or 0 when none are ready.  The peer closing is an
  // error with Cause::kPeerClosed.
  virtual Result<size_t> read(uint8_t* p, size_t n) = 0;
  // Bytes written (> 0), or 0 when the peer is not taking more right now.
  // After a 0, the next call must repeat the same bytes (TLS wants that).
  virtual Result<size_t> write(const uint8_t* p, size_t n) = 0;
  // Received bytes that read() hands out without waiting for the fd.
  virtual bool pending() const { return false; }
  // What to poll for after read() (`reading`) or write() returned 0.
  virtual int fd(bool reading) const = 0;
  virtual short events(bool reading) const = 0;
  // Brackets the writes of one message of `size` bytes, so the transport
  // may gather them (TLS: small messages in one record, and the records
  // of a large one in few socket writes); end_message() sends what it
  // gathered, waiting at most `timeout_ms` for the peer to take it.
  virtual void begin_message(size_t /*size*/) {}
  virtual Status end_message(int /*timeout_ms*/) { return Status::ok(); }
};

// Owns `in` and `out` (which may be the same fd).
std::unique_ptr<Transport> plain_transport(int in, int out);

// Owns the transport (and so its descriptors).
class Conn {
 public:
  Conn(int in, int out);
  explicit Conn(std::unique_ptr<Transport> t);
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
  int in_fd() const { return t_->fd(true); }

 private:
  Result<bool> fill(int timeout_ms);
  std::unique_ptr<Transport> t_;
  std::vector<uint8_t> buf_;
  size_t start_ = 0, end_ = 0;
  uint32_t max_payload_ = kMaxPayload;
};

}  // namespace kvmcdp::remote
