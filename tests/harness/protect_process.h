// A `kvmcdp protect` (or another program) running in the background of a
// test, killed and reaped with the test like QemuProcess.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

namespace kvmcdp::test {

// Any long-running program in the background of a test (kvmcdp serve,
// sshd), its stdout and stderr in `log`.
class BackgroundProcess {
 public:
  BackgroundProcess(std::vector<std::string> argv, std::string log);
  ~BackgroundProcess();

  // Waits until the output contains `text` (false if it exited or
  // the time ran out).
  bool wait_output(const std::string& text, std::chrono::seconds timeout);
  bool wait_base_complete(std::chrono::seconds timeout) {
    return wait_output("base copy complete", timeout);
  }
  // SIGTERM and wait: the exit status.
  int stop();
  // Waits for it to exit by itself: its exit status, or -1 on timeout.
  int wait_exit(std::chrono::seconds timeout);
  // SIGKILL, as a crash.
  void kill9();
  std::string output() const;
  pid_t pid() const { return pid_; }

 protected:
  BackgroundProcess() = default;
  void start(std::vector<std::string> argv, std::string log);

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = -1;
  std::string log_;
  size_t log_start_ = 0;  // the log's size when this process started
};

class ProtectProcess : public BackgroundProcess {
 public:
  // `store` "" when `extra` has --spool DIR instead.
  ProtectProcess(const std::string& qmp_socket, const std::string& drive,
                 const std::string& store, std::vector<std::string> extra = {});
};

}  // namespace kvmcdp::test
