#include "remote/remote_io.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include <fmt/format.h>

#include "kvmcdp/journal_format.h"

namespace kvmcdp::remote {

using journal::get16;
using journal::get32;
using journal::get64;
using journal::put16;
using journal::put32;
using journal::put64;

namespace {

bool known_type(uint16_t t) { return (t >= 1 && t <= 7) || (t >= 64 && t <= 68); }

Status io_error(const char* what, Cause cause = Cause::kNone) {
  return {ErrorKind::kFailure, fmt::format("remote: {}: {}", what, std::strerror(errno)), cause};
}

void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

}  // namespace

std::string Message::reason() const {
  std::string_view t = text().substr(0, 300);
  std::string out(t);
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  return out;
}

void encode_header(const MsgHeader& h, uint8_t out[kHeaderSize]) {
  put32(out + 0, kMagic);
  put16(out + 4, h.type);
  put16(out + 6, 0);
  put32(out + 8, h.payload_len);
  put32(out + 12, 0);
  put64(out + 16, h.a);
  put64(out + 24, h.b);
}

Status decode_header(const uint8_t in[kHeaderSize], MsgHeader* h) {
  if (get32(in) != kMagic)
    return {ErrorKind::kFailure, "remote: the peer does not speak the kvmcdp remote protocol"};
  h->type = get16(in + 4);
  h->payload_len = get32(in + 8);
  h->a = get64(in + 16);
  h->b = get64(in + 24);
  if (!known_type(h->type))
    return {ErrorKind::kFailure, fmt::format("remote: unknown message type {}", h->type)};
  if (h->payload_len > kMaxPayload)
    return {ErrorKind::kFailure,
            fmt::format("remote: a payload of {} bytes exceeds the limit", h->payload_len)};
  return Status::ok();
}

namespace {

class PlainTransport : public Transport {
 public:
  PlainTransport(int in, int out) : in_(in), out_(out) {
    set_nonblocking(in_);
    if (out_ != in_) set_nonblocking(out_);
  }
  ~PlainTransport() override {
    close(in_);
    if (out_ != in_) close(out_);
  }
  Result<size_t> read(uint8_t* p, size_t n) override {
    ssize_t r = ::read(in_, p, n);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return size_t{0};
    if (r < 0) return io_error("read", Cause::kConnectionLost);
    if (r == 0)
      return Status(ErrorKind::kFailure, "remote: the peer closed the connection",
                    Cause::kPeerClosed);
    return static_cast<size_t>(r);
  }
  Result<size_t> write(const uint8_t* p, size_t n) override {
    // write() rather than send(): the far end may be a pipe to ssh.
    ssize_t w = ::write(out_, p, n);
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return size_t{0};
    if (w <= 0) return io_error("send", Cause::kConnectionLost);
    return static_cast<size_t>(w);
  }
  int fd(bool reading) const override { return reading ? in_ : out_; }
  short events(bool reading) const override { return reading ? POLLIN : POLLOUT; }

 private:
  int in_, out_;
};

}  // namespace

std::unique_ptr<Transport> plain_transport(int in, int out) {
  return std::make_unique<PlainTransport>(in, out);
}

// Small: an idle connection costs little, and the buffer grows with what
// arrives.
constexpr size_t kInitialBuffer = 16u << 10;

Conn::Conn(int in, int out) : Conn(plain_transport(in, out)) {}

Conn::Conn(std::unique_ptr<Transport> t) : t_(std::move(t)), buf_(kInitialBuffer) {}

Conn::~Conn() = default;

Status Conn::send(MsgType t, uint64_t a, uint64_t b, const void* payload, size_t n,
                  int timeout_ms) {
  MsgHeader h;
  h.type = static_cast<uint16_t>(t);
  h.payload_len = static_cast<uint32_t>(n);
  h.a = a;
  h.b = b;
  uint8_t head[kHeaderSize];
  encode_header(h, head);
  struct Part {
    const uint8_t* p;
    size_t n;
  } parts[2] = {{head, kHeaderSize}, {static_cast<const uint8_t*>(payload), n}};
  t_->begin_message(kHeaderSize + n);
  for (auto& part : parts) {
    size_t done = 0;
    while (done < part.n) {
      auto w = t_->write(part.p + done, part.n - done);
      if (!w) return w.status();
      if (*w > 0) {
        done += *w;
        continue;
      }
      pollfd p{t_->fd(false), t_->events(false), 0};
      int r = poll(&p, 1, timeout_ms);
      if (r == 0)
        return {ErrorKind::kFailure, "remote: the peer stopped reading", Cause::kTimeout};
      if (r < 0 && errno != EINTR) return io_error("poll");
    }
  }
  return t_->end_message(timeout_ms);
}

bool Conn::buffered() const {
  if (end_ - start_ < kHeaderSize) return false;
  uint32_t len = get32(buf_.data() + start_ + 8);
  return end_ - start_ >= kHeaderSize + size_t{len};
}

Result<bool> Conn::fill(int timeout_ms) {
  if (start_ > 0) {
    std::memmove(buf_.data(), buf_.data() + start_, end_ - start_);
    end_ -= start_;
    start_ = 0;
  }
  if (end_ == buf_.size()) {
    // Full, and the message at its start is not whole: grow by doubling
    // towards the announced length (checked already), never to it at
    // once, so a peer that announces a large message and then sends
    // nothing makes us allocate nothing.
    size_t grow = buf_.size() * 2;
    if (end_ >= kHeaderSize) {
      size_t whole = kHeaderSize + size_t{get32(buf_.data() + 8)};
      grow = std::min(grow, std::max(buf_.size() + 1, whole));
    }
    buf_.resize(grow);
  }
  // Read first and poll only when nothing is there: a message arrives in
  // many reads (one per TLS record), and a poll before each would double
  // the system calls.
  auto n = t_->read(buf_.data() + end_, buf_.size() - end_);
  if (!n) return n.status();
  if (*n == 0) {
    pollfd p{t_->fd(true), t_->events(true), 0};
    int r = poll(&p, 1, timeout_ms);
    if (r < 0 && errno != EINTR) return io_error("poll");
    if (r <= 0) return false;
    n = t_->read(buf_.data() + end_, buf_.size() - end_);
    if (!n) return n.status();
    if (*n == 0) return false;
  }
  end_ += *n;
  return true;
}

Result<bool> Conn::receive(Message* m, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    if (end_ - start_ >= kHeaderSize) {
      // Judge the header as soon as it is here, so a lying length is
      // refused instead of waited for.
      if (Status s = decode_header(buf_.data() + start_, &m->h); !s) return s;
      if (m->h.payload_len > max_payload_)
        return Status(ErrorKind::kFailure,
                      fmt::format("remote: a payload of {} bytes exceeds the limit of {} here",
                                  m->h.payload_len, max_payload_));
      if (end_ - start_ >= kHeaderSize + size_t{m->h.payload_len}) {
        m->payload = buf_.data() + start_ + kHeaderSize;
        start_ += kHeaderSize + m->h.payload_len;
        return true;
      }
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    auto got = fill(static_cast<int>(std::max<long>(left, 0)));
    if (!got) return got.status();
    if (!*got && left <= 0) return false;
  }
}

Result<Message> Conn::expect(MsgType want, int timeout_ms) {
  Message m;
  auto got = receive(&m, timeout_ms);
  if (!got) return got.status();
  if (!*got)
    return Status(ErrorKind::kFailure, "remote: the peer did not answer in time", Cause::kTimeout);
  if (m.h.type == static_cast<uint16_t>(MsgType::kError)) {
    return Status(ErrorKind::kFailure, fmt::format("the server refused: {}", m.reason()),
                  Cause::kRefused);
  }
  if (m.h.type != static_cast<uint16_t>(want))
    return Status(ErrorKind::kFailure,
                  fmt::format("remote: expected message type {}, got {}",
                              static_cast<int>(want), m.h.type));
  return m;
}

}  // namespace kvmcdp::remote
