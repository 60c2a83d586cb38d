#include "capture/mark_channel.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include <fmt/format.h>

#include "base/fsutil.h"

namespace kvmcdp {
namespace {

socklen_t abstract_address(uint64_t stream_id, sockaddr_un* sa) {
  std::memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  std::string name = fmt::format("kvmcdp-mark-{:016x}", stream_id);
  std::memcpy(sa->sun_path + 1, name.data(), name.size());  // sun_path[0] = 0: abstract
  return socklen_t(offsetof(sockaddr_un, sun_path) + 1 + name.size());
}

// One line of at most `max` bytes within `timeout_ms`.
Result<std::string> read_line(int fd, size_t max, int timeout_ms) {
  std::string line;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || poll(&p, 1, int(left.count())) <= 0)
      return Status(ErrorKind::kFailure, "no answer in time", Cause::kTimeout);
    char c[256];
    ssize_t n = recv(fd, c, sizeof c, 0);
    if (n <= 0) return Status(ErrorKind::kFailure, "the connection closed", Cause::kPeerClosed);
    line.append(c, size_t(n));
    if (auto nl = line.find('\n'); nl != std::string::npos) return line.substr(0, nl);
    if (line.size() > max) return Status(ErrorKind::kUsage, "line too long");
  }
}

void send_line(int fd, const std::string& s) {
  std::string l = s + "\n";
  [[maybe_unused]] ssize_t n = send(fd, l.data(), l.size(), MSG_NOSIGNAL);
}

}  // namespace

Result<std::unique_ptr<MarkServer>> MarkServer::start(uint64_t stream_id, MarkFn fn) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa;
  socklen_t len = abstract_address(stream_id, &sa);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0 || listen(fd, 8) != 0) {
    Status s(ErrorKind::kFailure, fsutil::errno_message("listen", "the mark socket"));
    if (fd >= 0) close(fd);
    return s;
  }
  std::unique_ptr<MarkServer> m(new MarkServer(fd, std::move(fn)));
  m->thread_ = std::thread([p = m.get()] { p->loop(); });
  return m;
}

MarkServer::~MarkServer() {
  stop_ = true;
  shutdown(fd_, SHUT_RDWR);
  if (thread_.joinable()) thread_.join();
  close(fd_);
}

void MarkServer::loop() {
  while (!stop_) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    serve(c);
    close(c);
  }
}

void MarkServer::serve(int c) {
  ucred cred{};
  socklen_t clen = sizeof cred;
  if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 ||
      (cred.uid != 0 && cred.uid != getuid())) {
    send_line(c, "error only the user who runs protect (or root) may mark its stream");
    return;
  }
  auto name = read_line(c, 255, 5000);
  if (!name || name->empty()) {
    send_line(c, "error a mark's name has 1 to 255 bytes");
    return;
  }
  auto seq = fn_(*name);
  send_line(c, seq ? fmt::format("ok {}", *seq) : "error " + seq.status().message());
}

Result<uint64_t> request_mark(uint64_t stream_id, const std::string& name, int timeout_ms) {
  fsutil::Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un sa;
  socklen_t len = abstract_address(stream_id, &sa);
  if (fd.get() < 0 || connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), len) != 0)
    return Status(ErrorKind::kNotFound,
                  fmt::format("protect does not answer on its mark socket ({}): is it running?",
                              std::strerror(errno)));
  send_line(fd.get(), name);
  auto line = read_line(fd.get(), 4096, timeout_ms);
  if (!line) return Status(ErrorKind::kFailure, "protect did not confirm the mark: " +
                                                    line.status().message());
  if (line->rfind("ok ", 0) == 0) return std::stoull(line->substr(3));
  if (line->rfind("error ", 0) == 0) return Status(ErrorKind::kFailure, line->substr(6));
  return Status(ErrorKind::kFailure, "protect answered the mark with: " + *line);
}

}  // namespace kvmcdp
