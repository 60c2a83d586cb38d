#include "subprocess.h"

#include <fcntl.h>
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

Status run_process(const std::vector<std::string>& argv, bool show_output) {
  int err_pipe[2] = {-1, -1};
  if (!show_output && pipe2(err_pipe, O_CLOEXEC) < 0)
    return {ErrorKind::kFailure, fmt::format("pipe: {}", std::strerror(errno))};
  pid_t pid = fork();
  if (pid < 0) return {ErrorKind::kFailure, fmt::format("fork: {}", std::strerror(errno))};
  if (pid == 0) {
    if (!show_output) {
      int null = open("/dev/null", O_WRONLY);
      dup2(null, 1);
      dup2(err_pipe[1], 2);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    fprintf(stderr, "cannot run %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  std::string err;
  if (!show_output) {
    close(err_pipe[1]);
    char buf[4096];
    ssize_t n;
    while ((n = read(err_pipe[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
      if (n > 0) err.append(buf, static_cast<size_t>(n));
    close(err_pipe[0]);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::ok();
  while (!err.empty() && err.back() == '\n') err.pop_back();
  if (auto nl = err.rfind('\n'); nl != std::string::npos) err = err.substr(nl + 1);
  return {ErrorKind::kFailure,
          fmt::format("{} failed{}{}", argv[0], err.empty() ? "" : ": ", err)};
}

}  // namespace kvmcdp
