#include "qemu/subprocess.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

namespace kvmcdp {

std::string qemu_img_binary() {
  const char* env = std::getenv("KVMCDP_QEMU_IMG");
  return env && *env ? env : "qemu-img";
}

std::string qemu_nbd_binary() {
  std::string img = qemu_img_binary();
  auto slash = img.rfind('/');
  if (slash == std::string::npos) return "qemu-nbd";
  return img.substr(0, slash + 1) + "qemu-nbd";
}

namespace {

// In the child after fork(): become argv, or report why not and exit 127.
[[noreturn]] void exec_argv(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  execvp(args[0], args.data());
  fprintf(stderr, "cannot run %s: %s\n", args[0], std::strerror(errno));
  _exit(127);
}

int wait_child(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

}  // namespace

Result<std::string> run_capture(const std::vector<std::string>& argv) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) < 0)
    return {ErrorKind::kFailure, fmt::format("pipe: {}", std::strerror(errno))};
  // stderr goes to an anonymous file so that a chatty child never blocks
  // on a pipe we are not reading yet.
  int err = memfd_create("kvmcdp-stderr", MFD_CLOEXEC);
  pid_t pid = fork();
  if (pid < 0) return {ErrorKind::kFailure, fmt::format("fork: {}", std::strerror(errno))};
  if (pid == 0) {
    int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(out[1], 1);
    if (err >= 0) dup2(err, 2);
    exec_argv(argv);
  }
  close(out[1]);
  std::string text;
  char buf[8192];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
    if (n > 0) text.append(buf, static_cast<size_t>(n));
  close(out[0]);
  int status = wait_child(pid);
  std::string errtext;
  if (err >= 0) {
    off_t off = 0;
    while ((n = pread(err, buf, sizeof buf, off)) > 0) {
      errtext.append(buf, static_cast<size_t>(n));
      off += n;
    }
    close(err);
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return text;
  while (!errtext.empty() && errtext.back() == '\n') errtext.pop_back();
  if (auto nl = errtext.rfind('\n'); nl != std::string::npos) errtext = errtext.substr(nl + 1);
  return {ErrorKind::kFailure,
          fmt::format("{} failed{}{}", argv[0], errtext.empty() ? "" : ": ", errtext)};
}

Status run_process(const std::vector<std::string>& argv, bool show_output) {
  if (!show_output) {
    auto out = run_capture(argv);
    return out ? Status::ok() : out.status();
  }
  pid_t pid = fork();
  if (pid < 0) return {ErrorKind::kFailure, fmt::format("fork: {}", std::strerror(errno))};
  if (pid == 0) {
    exec_argv(argv);
  }
  int status = wait_child(pid);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::ok();
  return {ErrorKind::kFailure, fmt::format("{} failed", argv[0])};
}

}  // namespace kvmcdp
