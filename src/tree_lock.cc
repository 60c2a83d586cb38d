#include "tree_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>

namespace kvmcdp {

Result<TreeLock> TreeLock::acquire(const std::string& tree_dir, bool wait) {
  std::string path = tree_dir + "/lock";
  fsutil::Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid())
    return Status(errno == ENOENT ? ErrorKind::kNotFound : ErrorKind::kFailure,
                  fsutil::errno_message("open", path));
  int r;
  while ((r = ::flock(fd.get(), LOCK_EX | (wait ? 0 : LOCK_NB))) != 0 && errno == EINTR) {
  }
  if (r != 0) {
    if (errno != EWOULDBLOCK) return Status(ErrorKind::kFailure, fsutil::errno_message("flock", path));
    char buf[32] = {};
    ssize_t n = ::pread(fd.get(), buf, sizeof buf - 1, 0);
    std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    return Status(ErrorKind::kBusy, "snapshot tree " + tree_dir + " is locked by " +
                                        (pid.empty() ? std::string("another process") : "pid " + pid) +
                                        " (use --wait to queue)");
  }
  std::string me = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd.get(), 0) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("truncate", path));
  if (auto st = fsutil::pwrite_all(fd.get(), me.data(), me.size(), 0, path); !st) return st;
  TreeLock l;
  l.fd_ = std::move(fd);
  return l;
}

}  // namespace kvmcdp
