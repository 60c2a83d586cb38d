// A client for QEMU's machine protocol (QMP) over a unix socket, or
// through libvirt for a domain whose monitor libvirt owns (QemuTarget;
// the same calls, see libvirt_monitor.h).
//
// One request at a time: execute() sends a command with a fresh id and
// reads until the reply with that id arrives.  Events that arrive in the
// meantime (before, between or after replies) are queued in arrival order
// and handed out by next_event().  The peer is never trusted: a missing
// greeting, bytes that are not JSON, an oversized message or a connection
// that closes mid-reply become a typed failure, never a hang or a crash.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "qemu/qemu_target.h"

namespace kvmcdp {

class LibvirtMonitor;
using json = nlohmann::json;
using Millis = std::chrono::milliseconds;

enum class QmpFailure {
  kNone,
  kCommand,    // QEMU answered with an error (GenericError, DeviceNotFound..)
  kTransport,  // cannot connect, connection lost, write failed
  kTimeout,    // no (complete) answer in time
  kProtocol,   // the peer sent something that is not QMP
};

struct QmpReply {
  QmpFailure failure = QmpFailure::kNone;
  json value;               // "return" of the command when failure == kNone
  std::string error_class;  // QMP error class when failure == kCommand
  std::string message;      // what went wrong, for a human

  bool ok() const { return failure == QmpFailure::kNone; }
  // The reply as a Status for layers that only care about success.
  Status status() const;
};

class QmpClient {
 public:
  static constexpr Millis kDefaultTimeout{10000};

  // Connects, reads the greeting and negotiates capabilities.  `gone`, if
  // given, says whether a failure means that no QEMU is there any more:
  // the socket is missing, refuses connections, or is closed before the
  // greeting (QEMU exiting).  A QEMU busy with another QMP client is not
  // gone: that is a timeout.
  static Result<std::unique_ptr<QmpClient>> connect(
      const std::string& socket_path, Millis timeout = kDefaultTimeout, bool* gone = nullptr);
  // The same for either kind of target.  Through libvirt `gone` means
  // that the domain does not exist or is not running.
  static Result<std::unique_ptr<QmpClient>> connect(
      const QemuTarget& target, Millis timeout = kDefaultTimeout, bool* gone = nullptr);
  ~QmpClient();
  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;

  QmpReply execute(const std::string& command, const json& arguments = nullptr,
                   Millis timeout = kDefaultTimeout);
  // Like execute(), passing `fd` along with the command (SCM_RIGHTS), as
  // `getfd` and `add-fd` expect.
  QmpReply execute_with_fd(const std::string& command, const json& arguments,
                           int fd, Millis timeout = kDefaultTimeout);

  // The oldest event not yet handed out; waits up to `timeout` for one.
  std::optional<json> next_event(Millis timeout = Millis{0});
  // Waits for an event named `name` (others stay queued, in order).
  std::optional<json> wait_event(const std::string& name, Millis timeout);

  const json& greeting() const { return greeting_; }
  // Through libvirt: the QEMU device id (alias) of the disk the domain
  // names `target` (e.g. vda); otherwise nothing.
  std::optional<std::string> libvirt_disk_alias(const std::string& target);

 private:
  explicit QmpClient(int fd);
  QmpReply send_and_wait(const json& request, int pass_fd, Millis timeout);
  // Reads one message into `out`; kNone on success.
  QmpReply read_message(json* out, std::chrono::steady_clock::time_point deadline);
  QmpReply fail(QmpFailure failure, std::string message);
  // A reply message as a QmpReply: its "return" or its "error".
  QmpReply reply_from(json message);

  int fd_ = -1;
  bool broken_ = false;  // after a transport/protocol failure, stay failed
  uint64_t next_id_ = 1;
  std::string buffer_;
  std::deque<json> events_;
  json greeting_;
  std::unique_ptr<LibvirtMonitor> libvirt_;
};

const char* qmp_failure_name(QmpFailure failure);

}  // namespace kvmcdp
