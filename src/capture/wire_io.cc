#include "capture/wire_io.h"

#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "base/fd_pass.h"

namespace kvmcdp::wire {
namespace {

// The format is little-endian and so is every host kvmcdp runs on (x86-64);
// memcpy keeps it free of alignment assumptions.
template <typename T>
void put(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof v);
}
template <typename T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

bool known_type(uint16_t t) {
  return (t >= 1 && t <= 8) || (t >= 64 && t <= 66);
}

}  // namespace

std::string_view type_name(MsgType t) {
  switch (t) {
    case MsgType::kHello: return "hello";
    case MsgType::kWrite: return "write";
    case MsgType::kWriteZeroes: return "write-zeroes";
    case MsgType::kDiscard: return "discard";
    case MsgType::kFlush: return "flush";
    case MsgType::kMark: return "mark";
    case MsgType::kGap: return "gap";
    case MsgType::kResyncDone: return "resync-done";
    case MsgType::kHelloReply: return "hello-reply";
    case MsgType::kAck: return "ack";
    case MsgType::kReceived: return "received";
  }
  return "unknown";
}

void encode_header(const MsgHeader& h, uint8_t out[kHeaderSize]) {
  put(out + 0, h.magic);
  put(out + 4, h.type);
  put(out + 6, h.flags);
  put(out + 8, h.seq);
  put(out + 16, h.time_ns);
  put(out + 24, h.offset);
  put(out + 32, h.length);
  put(out + 40, h.payload_len);
  put(out + 44, h.aux);
}

Status decode_header(const uint8_t in[kHeaderSize], MsgHeader* h) {
  h->magic = get<uint32_t>(in + 0);
  h->type = get<uint16_t>(in + 4);
  h->flags = get<uint16_t>(in + 6);
  h->seq = get<uint64_t>(in + 8);
  h->time_ns = get<uint64_t>(in + 16);
  h->offset = get<uint64_t>(in + 24);
  h->length = get<uint64_t>(in + 32);
  h->payload_len = get<uint32_t>(in + 40);
  h->aux = get<uint32_t>(in + 44);
  if (h->magic != kMagic)
    return {ErrorKind::kFailure, fmt::format("stream: bad magic {:#x}", h->magic)};
  if (!known_type(h->type))
    return {ErrorKind::kFailure, fmt::format("stream: unknown message type {}", h->type)};
  if (h->payload_len > kMaxPayload)
    return {ErrorKind::kFailure,
            fmt::format("stream: payload of {} bytes exceeds the limit", h->payload_len)};
  if (h->type == static_cast<uint16_t>(MsgType::kWrite) && h->payload_len != h->length)
    return {ErrorKind::kFailure, fmt::format("stream: write seq {} carries {} bytes for {}",
                                             h->seq, h->payload_len, h->length)};
  return Status::ok();
}

Status send_control(int fd, MsgType type, uint64_t seq, uint32_t aux, int pass_fd) {
  MsgHeader h{};
  h.magic = kMagic;
  h.type = static_cast<uint16_t>(type);
  h.seq = seq;
  h.aux = aux;
  uint8_t buf[kHeaderSize];
  encode_header(h, buf);
  size_t done = 0;
  while (done < kHeaderSize) {
    ssize_t n = send_with_fd(fd, buf + done, kHeaderSize - done, done == 0 ? pass_fd : -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // A control message is small and the peer reads the socket; wait.
      pollfd p{fd, POLLOUT, 0};
      if (poll(&p, 1, 10000) == 1) continue;
    }
    if (n <= 0)
      return {ErrorKind::kFailure, fmt::format("stream: send: {}", std::strerror(errno)),
              Cause::kConnectionLost};
    done += static_cast<size_t>(n);
  }
  return Status::ok();
}

void MessageReader::use_ring(StreamRing* ring) {
  ring_ = ring;
  // From what nobody has taken yet: the filter may have published records
  // between our HELLO_REPLY and this call.
  ring_start_ = ring_end_ = ring->tail();
}

size_t MessageReader::pending() const {
  if (ring_) return static_cast<size_t>(ring_->head() - ring_start_);
  int n = 0;
  return ::ioctl(fd_, FIONREAD, &n) == 0 && n > 0 ? static_cast<size_t>(n) : 0;
}

bool MessageReader::may_sleep() { return !ring_->sleep_unless_moved(ring_end_); }

Result<MessageReader::Next> MessageReader::fill_from_ring() {
  ring_->awake();
  // The socket carries wake-up bytes (any number, no meaning) and EOF.
  uint8_t sink[512];
  while (!closed_) {
    ssize_t n = read(fd_, sink, sizeof sink);
    if (n > 0) continue;
    if (n == 0) closed_ = true;
    else if (errno == EINTR) continue;
    else if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    else
      return Status(ErrorKind::kFailure, fmt::format("stream: read: {}", std::strerror(errno)),
                    Cause::kConnectionLost);
  }
  uint64_t head = ring_->head();
  if (head < ring_end_ || head - ring_start_ > ring_->data_size())
    return Status(ErrorKind::kFailure,
                  fmt::format("stream: the filter's ring head {} is out of bounds ({} to {})",
                              head, ring_end_, ring_start_ + ring_->data_size()));
  ring_end_ = head;
  if (buffered_message()) return Next::kMessage;
  return closed_ ? Next::kClosed : Next::kNeedMore;
}

Result<bool> MessageReader::next_in_ring(MsgHeader* h, const uint8_t** payload) {
  // The caller is done with the message handed out before: its space goes
  // back to the filter.
  ring_->publish_tail(ring_start_);
  if (ring_end_ - ring_start_ < kHeaderSize) return false;
  const uint8_t* p = ring_->at(ring_start_);
  if (Status s = decode_header(p, h); !s) return s;
  if (ring_end_ - ring_start_ < kHeaderSize + uint64_t{h->payload_len}) return false;
  *payload = p + kHeaderSize;
  ring_start_ += kHeaderSize + h->payload_len;
  return true;
}

Result<MessageReader::Next> MessageReader::fill() {
  if (ring_) return fill_from_ring();
  if (start_ > 0 && (end_ == start_ || buf_.size() - end_ < kHeaderSize + kMaxPayload)) {
    std::memmove(buf_.data(), buf_.data() + start_, end_ - start_);
    end_ -= start_;
    start_ = 0;
  }
  ssize_t n;
  do {
    n = read(fd_, buf_.data() + end_, buf_.size() - end_);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Next::kNeedMore;
  if (n < 0)
    return Status(ErrorKind::kFailure, fmt::format("stream: read: {}", std::strerror(errno)),
                  Cause::kConnectionLost);
  if (n == 0) return Next::kClosed;
  end_ += static_cast<size_t>(n);
  return buffered_message() ? Next::kMessage : Next::kNeedMore;
}

bool MessageReader::buffered_message() const {
  if (ring_) {
    if (ring_end_ - ring_start_ < kHeaderSize) return false;
    uint32_t payload = get<uint32_t>(ring_->at(ring_start_) + 40);
    return payload <= kMaxPayload && ring_end_ - ring_start_ >= kHeaderSize + uint64_t{payload};
  }
  if (end_ - start_ < kHeaderSize) return false;
  uint32_t payload = get<uint32_t>(buf_.data() + start_ + 40);
  return payload <= kMaxPayload && end_ - start_ >= kHeaderSize + size_t{payload};
}

Result<bool> MessageReader::next(MsgHeader* h, const uint8_t** payload) {
  if (ring_) return next_in_ring(h, payload);
  if (end_ - start_ < kHeaderSize) return false;
  const uint8_t* p = buf_.data() + start_;
  // Judge the header as soon as it is here, so a lying length is refused
  // instead of waited for.
  if (Status s = decode_header(p, h); !s) return s;
  if (end_ - start_ < kHeaderSize + size_t{h->payload_len}) return false;
  *payload = p + kHeaderSize;
  start_ += kHeaderSize + h->payload_len;
  return true;
}

Record to_record(const MsgHeader& h, const uint8_t* payload) {
  Record r;
  r.seq = h.seq;
  r.time_ns = h.time_ns;
  r.type = static_cast<MsgType>(h.type);
  r.flags = h.flags;
  r.offset = h.offset;
  r.length = h.length;
  r.data.assign(payload, payload + h.payload_len);
  return r;
}

}  // namespace kvmcdp::wire
