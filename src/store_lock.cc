#include "store_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>

namespace kvmcdp {

Result<StoreLock> StoreLock::acquire(const std::string& store_dir) {
  std::string path = store_dir + "/lock";
  fsutil::Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid())
    return Status(errno == ENOENT ? ErrorKind::kNotFound : ErrorKind::kFailure,
                  fsutil::errno_message("open", path));
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK)
      return Status(ErrorKind::kFailure, fsutil::errno_message("flock", path));
    // The holder may not have written its pid yet; say so rather than guess.
    char buf[32] = {};
    ssize_t n = ::pread(fd.get(), buf, sizeof buf - 1, 0);
    std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' '))
      pid.pop_back();
    return Status(ErrorKind::kBusy,
                  "store " + store_dir + " is locked by " +
                      (pid.empty() ? std::string("another process")
                                   : "pid " + pid));
  }
  std::string me = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd.get(), 0) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("truncate", path));
  if (auto st = fsutil::pwrite_all(fd.get(), me.data(), me.size(), 0, path); !st)
    return st;
  StoreLock l;
  l.fd_ = std::move(fd);
  return l;
}

}  // namespace kvmcdp
