// Test harness: real QEMU processes for integration tests.
//
// A QemuProcess owns one child (qemu-storage-daemon or qemu-system-x86_64)
// with its QMP socket and console log in a private temp dir.  It is killed
// and reaped when the object dies, and the child is also asked by the
// kernel (PR_SET_PDEATHSIG) to die with the test process, so a failed
// REQUIRE, an exception or even abort() leaves no orphan QEMU behind.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "qemu/qmp_client.h"

namespace kvmcdp::test {

// Where setup.sh put things (exported by scripts/test.sh); a test that
// needs them fails with a clear message if they are missing.
std::string qemu_prefix();
std::string kit_dir();
std::string qemu_bin(const std::string& name);  // $prefix/bin/<name>

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

class QemuProcess {
 public:
  // Starts `binary` with `args` plus the QMP socket option appropriate for
  // it, waits until QMP answers, and connects a client.
  static std::unique_ptr<QemuProcess> start_storage_daemon(const TempDir& dir,
                                                           std::vector<std::string> args);
  static std::unique_ptr<QemuProcess> start_system(const TempDir& dir,
                                                   std::vector<std::string> args);
  ~QemuProcess();

  QmpClient& qmp() { return *qmp_; }
  // The harness's own QMP connection holds qmp_socket(); a QMP socket
  // serves one client at a time, so kvmcdp commands get a second one.
  const std::string& qmp_socket() const { return qmp_socket_; }
  const std::string& tool_socket() const { return tool_socket_; }
  const std::string& console_log() const { return console_log_; }
  pid_t pid() const { return pid_; }
  std::string console() const;  // what the process printed so far

  // Waits for the process to exit by itself; its exit status, or nullopt on
  // timeout.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);
  void kill_and_reap();

 private:
  QemuProcess() = default;
  static std::unique_ptr<QemuProcess> spawn(const TempDir& dir, const std::string& binary,
                                            std::vector<std::string> args,
                                            const std::string& qmp_socket,
                                            const std::string& tool_socket);
  pid_t pid_ = -1;
  bool reaped_ = false;
  std::string qmp_socket_;
  std::string tool_socket_;
  std::string console_log_;
  std::unique_ptr<QmpClient> qmp_;
};

// Starts QEMU's NBD server on unix socket `socket` and exports `node`
// writable under the name "e" (qemu-io's nbd+unix:///e?socket=...), as a
// guest's writes would arrive.
void export_over_nbd(QemuProcess& qemu, const std::string& socket, const std::string& node);

// Runs a command line, returns its exit status and stdout+stderr.
struct CommandOutput {
  int status = -1;
  std::string output;
};
CommandOutput run_command(const std::vector<std::string>& argv);

std::string md5_of_file(const std::string& path);
std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& content);

}  // namespace kvmcdp::test
