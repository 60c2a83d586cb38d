#include "harness/protect_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdexcept>
#include <thread>

#include "harness/qemu_process.h"

namespace kvmcdp::test {

ProtectProcess::ProtectProcess(const std::string& qmp_socket, const std::string& drive,
                               const std::string& store, std::vector<std::string> extra) {
  std::vector<std::string> args = {KVMCDP_BINARY, "protect", "--qmp", qmp_socket, "--drive",
                                   drive, "--store", store};
  // A spool replaces the store: `--spool DIR` in extra, store "".
  if (store.empty()) args.resize(args.size() - 2);
  args.insert(args.end(), extra.begin(), extra.end());
  std::string log = store.empty() ? extra.back() + ".protect.log" : store + ".protect.log";
  for (size_t i = 0; i + 1 < extra.size(); ++i)
    if (extra[i] == "--spool") log = extra[i + 1] + ".protect.log";
  start(std::move(args), log);
}

BackgroundProcess::BackgroundProcess(std::vector<std::string> argv, std::string log) {
  start(std::move(argv), std::move(log));
}

void BackgroundProcess::start(std::vector<std::string> args, std::string log) {
  log_ = std::move(log);
  // A log shared with earlier runs (the same store): only what this one
  // writes is its output.
  struct stat st;
  log_start_ = stat(log_.c_str(), &st) == 0 ? static_cast<size_t>(st.st_size) : 0;
  pid_t parent = getpid();
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    int log = open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(log, 1);
    dup2(log, 2);
    std::vector<char*> cargs;
    for (auto& a : args) cargs.push_back(a.data());
    cargs.push_back(nullptr);
    execvp(cargs[0], cargs.data());
    _exit(127);
  }
}

BackgroundProcess::~BackgroundProcess() {
  if (!reaped_) kill9();
}

std::string BackgroundProcess::output() const {
  std::string all = read_file(log_);
  return all.size() > log_start_ ? all.substr(log_start_) : std::string();
}

bool BackgroundProcess::wait_output(const std::string& text, std::chrono::seconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (output().find(text) != std::string::npos) return true;
    int st;
    if (!reaped_ && waitpid(pid_, &st, WNOHANG) == pid_) {
      reaped_ = true;
      status_ = st;
      return false;
    }
    if (reaped_) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

int BackgroundProcess::stop() {
  if (!reaped_) {
    ::kill(pid_, SIGTERM);
    int st;
    while (waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
    status_ = st;
  }
  return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
}

int BackgroundProcess::wait_exit(std::chrono::seconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!reaped_ && std::chrono::steady_clock::now() < deadline) {
    int st;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      reaped_ = true;
      status_ = st;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!reaped_) return -1;
  return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
}

void BackgroundProcess::kill9() {
  if (reaped_) return;
  ::kill(pid_, SIGKILL);
  int st;
  while (waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
  }
  reaped_ = true;
  status_ = st;
}

}  // namespace kvmcdp::test
