// `kvmcdp mark` for a protect in mirror mode.  With the filter, a mark is
// a QMP command to QEMU (cdp-mark) and takes its place in the stream
// there; with a mirror QEMU knows nothing of the stream, so the mark goes
// to protect itself: over an abstract unix socket named after the stream
// (no file in the store, no path length limit), from the same user or
// root only (SO_PEERCRED).  One request per connection:
//
//   client: the mark's name, then "\n"
//   server: "ok SEQ\n" once the mark is durable in the journal, or
//           "error MESSAGE\n"
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include "base/status.h"

namespace kvmcdp {

class MarkServer {
 public:
  using MarkFn = std::function<Result<uint64_t>(const std::string& name)>;
  static Result<std::unique_ptr<MarkServer>> start(uint64_t stream_id, MarkFn fn);
  ~MarkServer();
  MarkServer(const MarkServer&) = delete;
  MarkServer& operator=(const MarkServer&) = delete;

 private:
  MarkServer(int fd, MarkFn fn) : fd_(fd), fn_(std::move(fn)) {}
  void loop();
  void serve(int client);

  int fd_;
  MarkFn fn_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// The client: the mark's seq once durable.
Result<uint64_t> request_mark(uint64_t stream_id, const std::string& name, int timeout_ms);

}  // namespace kvmcdp
