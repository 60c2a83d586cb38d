// A `kvmcdp protect` running in the background of a test, killed and
// reaped with the test like QemuProcess.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

namespace kvmcdp::test {

class ProtectProcess {
 public:
  ProtectProcess(const std::string& qmp_socket, const std::string& drive,
                 const std::string& store, std::vector<std::string> extra = {});
  ~ProtectProcess();

  // Waits until protect's output contains `text` (false if it exited or
  // the time ran out).
  bool wait_output(const std::string& text, std::chrono::seconds timeout);
  bool wait_base_complete(std::chrono::seconds timeout) {
    return wait_output("base copy complete", timeout);
  }
  // SIGTERM and wait: protect's exit status.
  int stop();
  // Waits for protect to exit by itself: its exit status, or -1 on timeout.
  int wait_exit(std::chrono::seconds timeout);
  // SIGKILL, as a crash.
  void kill9();
  std::string output() const;
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = -1;
  std::string log_;
};

}  // namespace kvmcdp::test
