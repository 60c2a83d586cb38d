#include "base/pid_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace kvmcdp {

Result<PidLock> PidLock::acquire(const std::string& path, const std::string& what, bool wait,
                                 const std::string& hint) {
  // A holder may delete the file (remove()) between our open and our
  // flock: then we hold a lock on a file nobody else can find, and must
  // start over on the one at the path.
  for (;;) {
    bool created = false;
    fsutil::Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd.valid() && errno == ENOENT) {
      fd = fsutil::Fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
      created = fd.valid();
      if (!fd.valid() && errno == EEXIST) continue;
    }
    if (!fd.valid())
      return Status(errno == ENOENT ? ErrorKind::kNotFound : ErrorKind::kFailure,
                    fsutil::errno_message("open", path));
    int r;
    while ((r = ::flock(fd.get(), LOCK_EX | (wait ? 0 : LOCK_NB))) != 0 && errno == EINTR) {
    }
    if (r != 0) {
      if (errno != EWOULDBLOCK)
        return Status(ErrorKind::kFailure, fsutil::errno_message("flock", path));
      // The holder may not have written its pid yet; say so rather than guess.
      char buf[32] = {};
      ssize_t n = ::pread(fd.get(), buf, sizeof buf - 1, 0);
      std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
      while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
      return Status(ErrorKind::kBusy,
                    what + " is locked by " +
                        (pid.empty() ? std::string("another process") : "pid " + pid) + hint);
    }
    struct stat held, now;
    if (::fstat(fd.get(), &held) != 0)
      return Status(ErrorKind::kFailure, fsutil::errno_message("stat", path));
    if (::stat(path.c_str(), &now) != 0 || now.st_ino != held.st_ino ||
        now.st_dev != held.st_dev)
      continue;
    std::string me = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd.get(), 0) != 0)
      return Status(ErrorKind::kFailure, fsutil::errno_message("truncate", path));
    if (auto st = fsutil::pwrite_all(fd.get(), me.data(), me.size(), 0, path); !st) return st;
    PidLock l;
    l.fd_ = std::move(fd);
    l.path_ = path;
    l.created_ = created;
    return l;
  }
}

void PidLock::remove() {
  if (!fd_.valid()) return;
  ::unlink(path_.c_str());
  fd_ = fsutil::Fd();
}

}  // namespace kvmcdp
