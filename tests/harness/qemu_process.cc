#include "harness/qemu_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>

namespace kvmcdp::test {
namespace {

std::string required_env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v)
    throw std::runtime_error(fmt::format(
        "{} is not set: run the tests through scripts/test.sh (it runs setup)", name));
  return v;
}

}  // namespace

// The QEMU under test: KVMCDP_QEMU_LINE (set per ctest entry, e.g. "10.0")
// picks that line's build, KVMCDP_QEMU_PREFIX_10_0 (scripts/setup.sh
// exports one per line); without it, KVMCDP_QEMU_PREFIX, the default line.
std::string qemu_prefix() {
  const char* line = std::getenv("KVMCDP_QEMU_LINE");
  if (!line || !*line) return required_env("KVMCDP_QEMU_PREFIX");
  std::string var = fmt::format("KVMCDP_QEMU_PREFIX_{}", line);
  std::replace(var.begin(), var.end(), '.', '_');
  return required_env(var.c_str());
}
std::string kit_dir() { return required_env("KVMCDP_KIT"); }
std::string qemu_bin(const std::string& name) { return qemu_prefix() + "/bin/" + name; }

TempDir::TempDir() {
  char tmpl[] = "/tmp/kvmcdp-test-XXXXXX";
  if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  if (std::getenv("KVMCDP_KEEP_TEMP")) return;
  run_command({"rm", "-rf", path_});
}

std::unique_ptr<QemuProcess> QemuProcess::spawn(const TempDir& dir, const std::string& binary,
                                                std::vector<std::string> args,
                                                const std::string& qmp_socket,
                                                const std::string& tool_socket) {
  std::unique_ptr<QemuProcess> p(new QemuProcess());
  p->qmp_socket_ = qmp_socket;
  p->tool_socket_ = tool_socket;
  p->console_log_ = dir.file(fmt::format("console-{}.log", std::rand()));
  args.insert(args.begin(), binary);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    // Die with the test process, whatever kills it.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    int log = open(p->console_log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(log, 1);
    dup2(log, 2);
    std::vector<char*> cargs;
    for (auto& a : args) cargs.push_back(a.data());
    cargs.push_back(nullptr);
    execv(binary.c_str(), cargs.data());
    _exit(127);
  }
  p->pid_ = pid;

  // QEMU creates the socket early; retry until it accepts or QEMU died.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (;;) {
    auto client = QmpClient::connect(qmp_socket, std::chrono::milliseconds(5000));
    if (client) {
      p->qmp_ = std::move(*client);
      return p;
    }
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      p->reaped_ = true;
      throw std::runtime_error(fmt::format("{} exited at start-up: {}", binary, p->console()));
    }
    if (std::chrono::steady_clock::now() > deadline)
      throw std::runtime_error(fmt::format("{}: QMP did not come up: {}", binary,
                                           client.status().message()));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::unique_ptr<QemuProcess> QemuProcess::start_storage_daemon(const TempDir& dir,
                                                               std::vector<std::string> args) {
  int n = std::rand();
  std::string sock = dir.file(fmt::format("qsd-{}.qmp", n));
  std::string tool = dir.file(fmt::format("qsd-{}-tool.qmp", n));
  for (const auto& [id, path] : {std::pair{"kvmcdp_qmp", sock}, std::pair{"kvmcdp_tool", tool}}) {
    args.push_back("--chardev");
    args.push_back(fmt::format("socket,id={},path={},server=on,wait=off", id, path));
    args.push_back("--monitor");
    args.push_back(fmt::format("chardev={}", id));
  }
  return spawn(dir, qemu_bin("qemu-storage-daemon"), std::move(args), sock, tool);
}

std::unique_ptr<QemuProcess> QemuProcess::start_system(const TempDir& dir,
                                                       std::vector<std::string> args) {
  int n = std::rand();
  std::string sock = dir.file(fmt::format("vm-{}.qmp", n));
  std::string tool = dir.file(fmt::format("vm-{}-tool.qmp", n));
  std::vector<std::string> base = {
      "-accel", "tcg", "-m", "256", "-nodefaults", "-no-user-config", "-display", "none",
      "-serial", "stdio", "-no-reboot", "-qmp", fmt::format("unix:{},server=on,wait=off", sock),
      "-qmp", fmt::format("unix:{},server=on,wait=off", tool)};
  base.insert(base.end(), args.begin(), args.end());
  return spawn(dir, qemu_bin("qemu-system-x86_64"), std::move(base), sock, tool);
}

void export_over_nbd(QemuProcess& qemu, const std::string& socket, const std::string& node) {
  QmpReply srv = qemu.qmp().execute(
      "nbd-server-start", {{"addr", {{"type", "unix"}, {"data", {{"path", socket}}}}}});
  REQUIRE_MESSAGE(srv.ok(), srv.message);
  QmpReply ex = qemu.qmp().execute(
      "block-export-add",
      {{"type", "nbd"}, {"id", "e"}, {"node-name", node}, {"name", "e"}, {"writable", true}});
  REQUIRE_MESSAGE(ex.ok(), ex.message);
}

QemuProcess::~QemuProcess() { kill_and_reap(); }

void QemuProcess::kill_and_reap() {
  if (pid_ <= 0 || reaped_) return;
  qmp_.reset();
  ::kill(pid_, SIGKILL);
  int status;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  reaped_ = true;
}

std::optional<int> QemuProcess::wait_exit(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string QemuProcess::console() const { return read_file(console_log_); }

CommandOutput run_command(const std::vector<std::string>& argv) {
  std::string cmd;
  for (const auto& a : argv) {
    std::string q = "'";
    for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    cmd += q + "' ";
  }
  cmd += "2>&1";
  CommandOutput out;
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.output.append(buf, n);
  int status = pclose(f);
  out.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return out;
}

std::string md5_of_file(const std::string& path) {
  auto r = run_command({"md5sum", path});
  return r.output.substr(0, 32);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary);
  f << content;
}

}  // namespace kvmcdp::test
