// QMP client: see qmp_client.h for the contract.  The socket stays
// blocking-free: every read waits in poll() against a deadline, so a peer
// that stops talking costs a timeout, not a hang.
#include "qemu/qmp_client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "base/fd_pass.h"
#include "base/fsutil.h"
#include "qemu/libvirt_monitor.h"

namespace kvmcdp {
namespace {

using Clock = std::chrono::steady_clock;

// A QMP message larger than this is treated as hostile (query-block of a
// very large VM stays far below it).
constexpr size_t kMaxMessage = 64u << 20;

int remaining_ms(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
  return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

}  // namespace

const char* qmp_failure_name(QmpFailure failure) {
  switch (failure) {
    case QmpFailure::kNone: return "ok";
    case QmpFailure::kCommand: return "command error";
    case QmpFailure::kTransport: return "transport failure";
    case QmpFailure::kTimeout: return "timeout";
    case QmpFailure::kProtocol: return "protocol error";
  }
  return "?";
}

Status QmpReply::status() const {
  if (ok()) return Status::ok();
  if (failure == QmpFailure::kCommand)
    return Status(ErrorKind::kQemu, fmt::format("{}: {}", error_class, message));
  return Status(ErrorKind::kQemu,
                fmt::format("QMP {}: {}", qmp_failure_name(failure), message));
}

Result<std::unique_ptr<QmpClient>> QmpClient::connect(
    const std::string& socket_path, Millis timeout, bool* gone) {
  if (gone) *gone = false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  // A path longer than sun_path is reached through its directory's fd.
  fsutil::Fd dir;
  std::string path = socket_path;
  if (path.size() >= sizeof(addr.sun_path)) {
    size_t slash = path.rfind('/');
    if (slash != std::string::npos && slash > 0)
      dir = fsutil::Fd(::open(path.substr(0, slash).c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (dir.valid()) path = fmt::format("/proc/self/fd/{}{}", dir.get(), path.substr(slash));
  }
  if (path.size() >= sizeof(addr.sun_path))
    return Result<std::unique_ptr<QmpClient>>(
        ErrorKind::kUsage, fmt::format("QMP socket path too long: {}", socket_path));
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    int err = errno;
    if (fd >= 0) close(fd);
    if (gone) *gone = err == ENOENT || err == ECONNREFUSED;
    return Result<std::unique_ptr<QmpClient>>(
        ErrorKind::kQemu, fmt::format("cannot connect to QMP socket {}: {}",
                                      socket_path, std::strerror(err)));
  }
  std::unique_ptr<QmpClient> client(new QmpClient(fd));

  auto deadline = Clock::now() + timeout;
  json greeting;
  QmpReply r = client->read_message(&greeting, deadline);
  if (gone) *gone = r.failure == QmpFailure::kTransport;
  if (r.ok() && !greeting.contains("QMP"))
    r = client->fail(QmpFailure::kProtocol, "the peer's first message is not a QMP greeting");
  if (r.ok()) {
    client->greeting_ = std::move(greeting);
    r = client->execute("qmp_capabilities", nullptr, remaining_ms(deadline) > 0
                                                         ? Millis(remaining_ms(deadline))
                                                         : Millis(1));
  }
  if (!r.ok())
    return Result<std::unique_ptr<QmpClient>>(
        ErrorKind::kQemu,
        fmt::format("QMP handshake with {} failed: {}", socket_path, r.status().message()));
  return client;
}

Result<std::unique_ptr<QmpClient>> QmpClient::connect(const QemuTarget& target,
                                                     Millis timeout, bool* gone) {
  if (!target.is_libvirt()) return connect(target.socket, timeout, gone);
  auto monitor = LibvirtMonitor::open(target.uri, target.domain, gone);
  if (!monitor.is_ok()) return Result<std::unique_ptr<QmpClient>>(monitor.status());
  std::unique_ptr<QmpClient> client(new QmpClient(-1));
  client->libvirt_ = std::move(monitor.value());
  return client;
}

QmpClient::QmpClient(int fd) : fd_(fd) {}

QmpClient::~QmpClient() {
  if (fd_ >= 0) close(fd_);
}

std::optional<std::string> QmpClient::libvirt_disk_alias(const std::string& target) {
  if (!libvirt_) return std::nullopt;
  return libvirt_->disk_alias(target);
}

QmpReply QmpClient::fail(QmpFailure failure, std::string message) {
  if (failure == QmpFailure::kTransport || failure == QmpFailure::kProtocol)
    broken_ = true;
  QmpReply r;
  r.failure = failure;
  r.message = std::move(message);
  return r;
}

QmpReply QmpClient::execute(const std::string& command, const json& arguments,
                            Millis timeout) {
  return execute_with_fd(command, arguments, -1, timeout);
}

QmpReply QmpClient::execute_with_fd(const std::string& command, const json& arguments,
                                    int fd, Millis timeout) {
  json request = {{"execute", command}, {"id", next_id_++}};
  if (!arguments.is_null()) request["arguments"] = arguments;
  return send_and_wait(request, fd, timeout);
}

QmpReply QmpClient::send_and_wait(const json& request, int pass_fd, Millis timeout) {
  if (broken_) return fail(QmpFailure::kTransport, "connection already failed");
  if (libvirt_) {
    // libvirt waits for the reply itself (its own monitor timeout).
    bool transport = false;
    auto reply = libvirt_->command(request, pass_fd, &transport);
    if (!reply.is_ok())
      return fail(transport ? QmpFailure::kTransport : QmpFailure::kCommand,
                  reply.status().message());
    return reply_from(std::move(reply.value()));
  }
  std::string text = request.dump() + "\n";

  // The fd (if any) rides along with the command's first chunk.
  size_t sent = 0;
  while (sent < text.size()) {
    ssize_t n = send_with_fd(fd_, text.data() + sent, text.size() - sent,
                             sent == 0 ? pass_fd : -1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return fail(QmpFailure::kTransport,
                  fmt::format("cannot send to QEMU: {}", std::strerror(errno)));
    sent += static_cast<size_t>(n);
  }

  auto deadline = Clock::now() + timeout;
  const json& id = request["id"];
  for (;;) {
    json message;
    QmpReply r = read_message(&message, deadline);
    if (!r.ok()) return r;
    if (message.contains("event")) {
      events_.push_back(std::move(message));
      continue;
    }
    // A late reply to an earlier command that timed out: not ours.
    if (!message.contains("id") || message["id"] != id) continue;
    return reply_from(std::move(message));
  }
}

QmpReply QmpClient::reply_from(json message) {
  if (message.contains("return")) {
    QmpReply ok;
    ok.value = std::move(message["return"]);
    return ok;
  }
  if (message.contains("error") && message["error"].is_object()) {
    const json& e = message["error"];
    // The peer chose these: value() would throw on a non-string.
    auto text = [&](const char* key, const char* otherwise) {
      auto it = e.find(key);
      return it != e.end() && it->is_string() ? it->get<std::string>() : std::string(otherwise);
    };
    QmpReply err;
    err.failure = QmpFailure::kCommand;
    err.error_class = text("class", "GenericError");
    err.message = text("desc", "(no description)");
    return err;
  }
  return fail(QmpFailure::kProtocol, "reply has neither 'return' nor 'error'");
}

QmpReply QmpClient::read_message(json* out, Clock::time_point deadline) {
  if (libvirt_) {
    // Through libvirt only events arrive this way.
    auto e = libvirt_->next_event(Millis(remaining_ms(deadline)));
    if (!e && libvirt_->stopped())
      return fail(QmpFailure::kTransport, "the libvirt domain stopped (QEMU is gone)");
    if (!e) return fail(QmpFailure::kTimeout, "no event from QEMU in time");
    *out = std::move(*e);
    return {};
  }
  for (;;) {
    size_t nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      if (line.find_first_not_of(" \r\t") == std::string::npos) continue;
      json parsed = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (parsed.is_discarded() || !parsed.is_object())
        return fail(QmpFailure::kProtocol,
                    fmt::format("peer sent something that is not a JSON object: {:.60}",
                                line));
      *out = std::move(parsed);
      return {};
    }
    if (buffer_.size() > kMaxMessage)
      return fail(QmpFailure::kProtocol, "peer sent a message larger than 64 MiB");

    pollfd p{fd_, POLLIN, 0};
    int ready = poll(&p, 1, remaining_ms(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) return fail(QmpFailure::kTimeout, "no answer from QEMU in time");
    char chunk[65536];
    ssize_t n = read(fd_, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return fail(QmpFailure::kTransport,
                  fmt::format("reading from QEMU: {}", std::strerror(errno)));
    if (n == 0)
      return fail(QmpFailure::kTransport,
                  buffer_.empty() ? "QEMU closed the connection"
                                  : "QEMU closed the connection in the middle of a message");
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

std::optional<json> QmpClient::next_event(Millis timeout) {
  auto deadline = Clock::now() + timeout;
  while (events_.empty()) {
    if (broken_) return std::nullopt;
    json message;
    QmpReply r = read_message(&message, deadline);
    if (!r.ok()) return std::nullopt;
    if (message.contains("event")) events_.push_back(std::move(message));
  }
  json e = std::move(events_.front());
  events_.pop_front();
  return e;
}

std::optional<json> QmpClient::wait_event(const std::string& name, Millis timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    for (auto it = events_.begin(); it != events_.end(); ++it) {
      if ((*it)["event"] == name) {
        json e = std::move(*it);
        events_.erase(it);
        return e;
      }
    }
    if (broken_ || Clock::now() >= deadline) return std::nullopt;
    json message;
    QmpReply r = read_message(&message, deadline);
    if (!r.ok()) return std::nullopt;
    if (message.contains("event")) events_.push_back(std::move(message));
  }
}

}  // namespace kvmcdp
