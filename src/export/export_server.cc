#include "export/export_server.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "base/wall_clock.h"
#include "capture/nbd_server_wire.h"
#include "kvmcdp/nbd_format.h"

namespace kvmcdp {
namespace {

using nbd::get16;
using nbd::get32;
using nbd::get64;

// Reads of up to this much are answered whole; what clients split at
// (NBD_INFO_BLOCK_SIZE's maximum).
constexpr uint32_t kMaxRead = 32u << 20;
constexpr size_t kMaxConnections = 64;

uint16_t transmission_flags(bool writable) {
  uint16_t f = nbd::kHasFlags | nbd::kSendFlush;
  if (writable) f |= nbd::kSendTrim | nbd::kSendWriteZeroes | nbd::kSendFua;
  else f |= nbd::kReadOnly;
  return f;
}

// Blocking receive of exactly n bytes; false when the peer is gone or
// `stop` was set (the socket is shut down then).
bool recv_all(int fd, uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= size_t(r);
  }
  return true;
}

uint32_t nbd_error_of(const Status& s) {
  return s.kind() == ErrorKind::kUsage ? nbd::kEinval : nbd::kEio;
}

// One structured reply chunk's header.
void chunk_header(std::vector<uint8_t>* b, uint16_t flags, uint16_t type, uint64_t cookie,
                  uint32_t length) {
  nbd::put32(b, nbd::kStructuredReplyMagic);
  nbd::put16(b, flags);
  nbd::put16(b, type);
  nbd::put64(b, cookie);
  nbd::put32(b, length);
}

bool send_error_chunk(int fd, uint64_t cookie, uint32_t error) {
  std::vector<uint8_t> b;
  chunk_header(&b, nbd::kReplyFlagDone, nbd::kReplyError, cookie, 6);
  nbd::put32(&b, error);
  nbd::put16(&b, 0);
  return bool(nbd::send_all(fd, b.data(), b.size()));
}

// The ranges of [offset, offset + length), adjacent ones of the same kind
// joined.
Status merged_extents(PointImage& image, uint64_t offset, uint64_t length,
                      std::vector<std::pair<uint64_t, bool>>* out) {  // (end, zero)
  out->clear();
  return image.extents(offset, length, [&](uint64_t, uint64_t e, bool zero) {
    if (!out->empty() && out->back().second == zero) out->back().first = e;
    else out->emplace_back(e, zero);
  });
}

// READ with structured replies: holes as hole chunks (no bytes sent),
// data as data chunks, then an empty chunk that ends the reply.
bool structured_read(int fd, PointImage& image, uint64_t cookie, uint64_t offset,
                     uint32_t length, std::vector<uint8_t>& buf, ExportServerStats* stats) {
  std::vector<std::pair<uint64_t, bool>> ext;
  if (Status s = merged_extents(image, offset, length, &ext); !s)
    return send_error_chunk(fd, cookie, nbd_error_of(s));
  std::vector<uint8_t> h;
  uint64_t at = offset;
  for (auto [end, zero] : ext) {
    h.clear();
    uint32_t n = uint32_t(end - at);
    if (zero) {
      chunk_header(&h, 0, nbd::kReplyOffsetHole, cookie, 12);
      nbd::put64(&h, at);
      nbd::put32(&h, n);
      if (!nbd::send_all(fd, h.data(), h.size())) return false;
    } else {
      buf.resize(n);
      if (Status s = image.read(at, n, buf.data()); !s)
        return send_error_chunk(fd, cookie, nbd_error_of(s));
      chunk_header(&h, 0, nbd::kReplyOffsetData, cookie, 8 + n);
      nbd::put64(&h, at);
      if (!nbd::send_all(fd, h.data(), h.size()) || !nbd::send_all(fd, buf.data(), n))
        return false;
    }
    at = end;
  }
  stats->bytes_read += length;
  uint64_t none = 0;
  stats->first_read_ns.compare_exchange_strong(none, now_ns());
  h.clear();
  chunk_header(&h, nbd::kReplyFlagDone, nbd::kReplyNone, cookie, 0);
  return bool(nbd::send_all(fd, h.data(), h.size()));
}

// What BLOCK_STATUS says of a range that reads as zeroes: a hole, not
// "hole and zero".  QEMU counts a backing's zero range as allocated there,
// so block-stream (kvmcdp recover) would copy it; a plain hole is not
// allocated anywhere in the chain, so the stream skips it and the image,
// once it stands alone, reads zeroes there too.  Measured: the copy of a
// 16 GiB disk with 12 GiB of holes took 71 s with hole+zero.
constexpr uint32_t kZeroState = nbd::kStateHole;

// BLOCK_STATUS for base:allocation: hole or data, up to kMaxExtents
// descriptors (one with REQ_ONE).
bool block_status(int fd, PointImage& image, uint64_t cookie, uint16_t flags, uint64_t offset,
                  uint32_t length) {
  constexpr size_t kMaxExtents = 4096;
  std::vector<std::pair<uint64_t, bool>> ext;
  if (Status s = merged_extents(image, offset, length, &ext); !s)
    return send_error_chunk(fd, cookie, nbd_error_of(s));
  size_t n = std::min(ext.size(), (flags & nbd::kCmdFlagReqOne) ? size_t(1) : kMaxExtents);
  std::vector<uint8_t> b;
  chunk_header(&b, nbd::kReplyFlagDone, nbd::kReplyBlockStatus, cookie, uint32_t(4 + 8 * n));
  nbd::put32(&b, 1);
  uint64_t at = offset;
  for (size_t i = 0; i < n; i++) {
    nbd::put32(&b, uint32_t(ext[i].first - at));
    nbd::put32(&b, ext[i].second ? kZeroState : 0);
    at = ext[i].first;
  }
  return bool(nbd::send_all(fd, b.data(), b.size()));
}

}  // namespace

void serve_nbd_connection(int fd, PointImage& image, const std::string& name,
                          ExportServerStats* stats) {
  nbd::ExportInfo e;
  e.size = image.size();
  e.transmission_flags = transmission_flags(image.writable());
  e.name = name;
  e.max_block = kMaxRead;
  e.structured = true;
  nbd::Negotiated chosen;
  if (!nbd::server_handshake(fd, e, 10000, &chosen)) return;
  std::vector<uint8_t> buf;
  std::vector<uint8_t> reply;
  for (;;) {
    uint8_t h[nbd::kRequestHeaderSize];
    if (!recv_all(fd, h, sizeof h)) return;
    if (get32(h) != nbd::kRequestMagic) return;
    uint16_t cmd_flags = get16(h + 4), type = get16(h + 6);
    uint64_t cookie = get64(h + 8), offset = get64(h + 16);
    uint32_t length = get32(h + 24);
    // A client that ignored the block size (BLOCK_STATUS may ask for more).
    if (length > kMaxRead && type != nbd::kCmdBlockStatus) return;
    if (chosen.structured && type == nbd::kCmdRead) {
      if (offset > image.size() || length > image.size() - offset) {
        if (!send_error_chunk(fd, cookie, nbd::kEinval)) return;
      } else if (!structured_read(fd, image, cookie, offset, length, buf, stats)) {
        return;
      }
      continue;
    }
    if (type == nbd::kCmdBlockStatus && chosen.base_allocation) {
      uint64_t len = std::min<uint64_t>(length, image.size() > offset ? image.size() - offset : 0);
      if (offset >= image.size() || length == 0) {
        if (!send_error_chunk(fd, cookie, nbd::kEinval)) return;
      } else if (!block_status(fd, image, cookie, cmd_flags, offset, uint32_t(len))) {
        return;
      }
      continue;
    }
    uint32_t error = 0;
    bool with_data = false;
    switch (type) {
      case nbd::kCmdRead: {
        buf.resize(length);
        Status s = image.read(offset, length, buf.data());
        if (!s) error = nbd_error_of(s);
        with_data = bool(s);
        if (s) {
          stats->bytes_read += length;
          uint64_t none = 0;
          stats->first_read_ns.compare_exchange_strong(none, now_ns());
        }
        break;
      }
      case nbd::kCmdWrite: {
        buf.resize(length);
        if (!recv_all(fd, buf.data(), length)) return;
        if (!image.writable()) {
          error = nbd::kEperm;
          break;
        }
        if (Status s = image.write(offset, length, buf.data()); !s) error = nbd_error_of(s);
        break;
      }
      case nbd::kCmdWriteZeroes:
      case nbd::kCmdTrim:
        if (!image.writable()) {
          error = nbd::kEperm;
          break;
        }
        if (Status s = image.write_zeroes(offset, length); !s) error = nbd_error_of(s);
        break;
      case nbd::kCmdFlush:
        break;
      case nbd::kCmdDisc:
        return;
      default:
        error = nbd::kEinval;
    }
    reply.clear();
    nbd::put32(&reply, nbd::kSimpleReplyMagic);
    nbd::put32(&reply, error);
    nbd::put64(&reply, cookie);
    if (!nbd::send_all(fd, reply.data(), reply.size())) return;
    if (with_data && !nbd::send_all(fd, buf.data(), length)) return;
  }
}

namespace {

Result<fsutil::Fd> listen_on(int family, const sockaddr* addr, socklen_t len,
                             const std::string& what) {
  fsutil::Fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Status(ErrorKind::kFailure, fsutil::errno_message("socket", what));
  int one = 1;
  if (family != AF_UNIX) ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), addr, len) != 0)
    return Status(errno == EADDRINUSE ? ErrorKind::kBusy : ErrorKind::kFailure,
                  fsutil::errno_message("listen on", what));
  if (::listen(fd.get(), 16) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("listen on", what));
  return fd;
}

}  // namespace

Result<fsutil::Fd> listen_unix(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path)
    return Status(ErrorKind::kUsage, fmt::format("socket path {} is too long", path));
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return Status(ErrorKind::kUsage,
                    fmt::format("{} exists and is not a socket: not replaced", path));
    // A socket nobody accepts on is a leftover of a killed export.
    fsutil::Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0)
      return Status(ErrorKind::kBusy, fmt::format("{} is in use by another server", path));
    ::unlink(path.c_str());
  }
  return listen_on(AF_UNIX, reinterpret_cast<sockaddr*>(&a), sizeof a, path);
}

Result<fsutil::Fd> listen_tcp(const std::string& host_port) {
  auto colon = host_port.rfind(':');
  if (colon == std::string::npos || colon + 1 == host_port.size())
    return Status(ErrorKind::kUsage,
                  fmt::format("--listen {}: expected HOST:PORT (e.g. 127.0.0.1:10809)", host_port));
  std::string host = host_port.substr(0, colon), port = host_port.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res);
      rc != 0)
    return Status(ErrorKind::kUsage, fmt::format("--listen {}: {}", host_port, gai_strerror(rc)));
  auto fd = listen_on(res->ai_family, res->ai_addr, res->ai_addrlen, host_port);
  ::freeaddrinfo(res);
  return fd;
}

Status serve_export(int listen_fd, PointImage& image, const std::string& name,
                    const std::atomic<bool>& stop, ExportServerStats* stats) {
  struct Conn {
    fsutil::Fd fd;
    std::thread t;
    std::atomic<bool> done{false};
  };
  std::list<Conn> conns;
  auto reap = [&](bool all) {
    for (auto it = conns.begin(); it != conns.end();) {
      if (all) ::shutdown(it->fd.get(), SHUT_RDWR);
      if (all || it->done) {
        it->t.join();
        it = conns.erase(it);
      } else {
        ++it;
      }
    }
  };
  while (!stop.load()) {
    pollfd p{listen_fd, POLLIN, 0};
    int r = ::poll(&p, 1, 200);
    reap(false);
    if (r <= 0) continue;
    int c = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    // A thread each: a client that opens connections without end is
    // refused past kMaxConnections, not given a thread each.
    if (conns.size() >= kMaxConnections) {
      ::close(c);
      continue;
    }
    stats->connections++;
    Conn& conn = conns.emplace_back();
    conn.fd = fsutil::Fd(c);
    conn.t = std::thread([&image, &name, stats, &conn] {
      serve_nbd_connection(conn.fd.get(), image, name, stats);
      conn.done = true;
    });
  }
  reap(true);
  return Status::ok();
}

}  // namespace kvmcdp
