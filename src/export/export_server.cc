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

void serve_connection(int fd, PointImage& image, const std::string& name,
                      ExportServerStats* stats) {
  nbd::ExportInfo e;
  e.size = image.size();
  e.transmission_flags = transmission_flags(image.writable());
  e.name = name;
  e.max_block = kMaxRead;
  if (!nbd::server_handshake(fd, e, 10000)) return;
  std::vector<uint8_t> buf;
  std::vector<uint8_t> reply;
  for (;;) {
    uint8_t h[nbd::kRequestHeaderSize];
    if (!recv_all(fd, h, sizeof h)) return;
    if (get32(h) != nbd::kRequestMagic) return;
    uint16_t type = get16(h + 6);
    uint64_t cookie = get64(h + 8), offset = get64(h + 16);
    uint32_t length = get32(h + 24);
    if (length > kMaxRead) return;  // a client that ignored the block size
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
    stats->connections++;
    Conn& conn = conns.emplace_back();
    conn.fd = fsutil::Fd(c);
    conn.t = std::thread([&image, &name, stats, &conn] {
      serve_connection(conn.fd.get(), image, name, stats);
      conn.done = true;
    });
  }
  reap(true);
  return Status::ok();
}

}  // namespace kvmcdp
