// The harness itself: QEMU processes never outlive a test, not even one
// that fails or aborts.  The outer test runs a deliberately failing inner
// test (skipped in normal runs) in a child process and checks its QEMU is
// gone afterwards.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "harness/qemu_process.h"

namespace kvmcdp::test {
namespace {

bool process_alive(pid_t pid) {
  // A zombie still answers kill(0); look at its state instead.
  std::string stat = read_file(fmt::format("/proc/{}/stat", pid));
  if (stat.empty()) return false;
  size_t close_paren = stat.rfind(')');
  return close_paren != std::string::npos && stat[close_paren + 2] != 'Z';
}

void start_qemu_and_record_pid(const TempDir& dir) {
  auto qsd = QemuProcess::start_storage_daemon(dir, {});
  write_file(std::getenv("KVMCDP_PID_FILE"), std::to_string(qsd->pid()));
  if (std::getenv("KVMCDP_ABORT")) std::abort();  // no destructor runs
  REQUIRE_MESSAGE(false, "failing on purpose");
}

}  // namespace

TEST_CASE("harness: deliberately failing test" * doctest::skip()) {
  TempDir dir;
  start_qemu_and_record_pid(dir);
}

TEST_CASE("harness: a failing or aborting test leaves no QEMU behind") {
  for (bool abort_instead : {false, true}) {
    TempDir dir;
    std::string pid_file = dir.file("pid");
    std::string self = read_file("/proc/self/cmdline").c_str();
    auto r = run_command({"env", "KVMCDP_PID_FILE=" + pid_file,
                          abort_instead ? "KVMCDP_ABORT=1" : "KVMCDP_NO_ABORT=1", self,
                          "--no-skip", "-tc=harness: deliberately failing test"});
    CHECK(r.status != 0);
    std::string pid_text = read_file(pid_file);
    REQUIRE_MESSAGE(!pid_text.empty(), r.output);
    pid_t pid = std::stoi(pid_text);
    // PDEATHSIG delivery is asynchronous: give the kernel a moment.
    for (int i = 0; i < 100 && process_alive(pid); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK_MESSAGE(!process_alive(pid), "QEMU pid ", pid, " survived its test");
  }
}

}  // namespace kvmcdp::test
