// Is an image in use?  Two probes, because neither alone sees every holder:
//
//  1. QEMU's image locks.  With locking=auto (the default) QEMU's file
//     driver takes open-file-description locks (F_OFD_SETLK) on bytes of
//     every image it opens, read-only backing files included: a read lock
//     on byte 100+i for each permission bit i it uses and on byte 200+i
//     for each one it does not share (block/file-posix.c,
//     RAW_LOCK_PERM_BASE and RAW_LOCK_SHARED_BASE).  Any holder has at
//     least one of them, so asking F_OFD_GETLK whether a write lock over
//     bytes 100..299 would conflict answers "does any QEMU hold this
//     image", whatever it does with it.  F_OFD_GETLK rather than F_GETLK:
//     it sees classic POSIX locks as well, and it is what QEMU uses.
//     Why not `qemu-img info` without -U (what QEMU's own tools do): it
//     fails only when someone holds the "write" permission, so it misses
//     backing files, which a VM opens read-only.
//  2. The open files of the processes in /proc: holders that take no lock
//     (locking=off, a plain reader).  It also names the holder, which an
//     OFD lock does not (F_OFD_GETLK reports pid -1).
// Both are snapshots: a process may open the image right after.  Callers
// that change a tree hold its lock, which every kvmcdp writer takes; the
// probe is for the processes outside it.
#include "qemu/image_lock.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

namespace kvmcdp {
namespace {

constexpr off_t kQemuLockFirstByte = 100;  // RAW_LOCK_PERM_BASE
constexpr off_t kQemuLockBytes = 200;      // through RAW_LOCK_SHARED_BASE + 99

std::string read_comm(const std::string& pid) {
  std::string comm;
  if (FILE* f = std::fopen(("/proc/" + pid + "/comm").c_str(), "r")) {
    char buf[64] = {};
    if (std::fgets(buf, sizeof buf, f)) comm = buf;
    std::fclose(f);
  }
  while (!comm.empty() && (comm.back() == '\n' || comm.back() == ' ')) comm.pop_back();
  return comm.empty() ? "process" : comm;
}

// The first other process with an fd on the file (dev, ino).
std::optional<std::string> open_by_process(dev_t dev, ino_t ino) {
  DIR* proc = ::opendir("/proc");
  if (!proc) return std::nullopt;
  std::string self = std::to_string(::getpid());
  std::optional<std::string> found;
  while (!found) {
    dirent* e = ::readdir(proc);
    if (!e) break;
    std::string pid = e->d_name;
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos || pid == self)
      continue;
    std::string fddir = "/proc/" + pid + "/fd";
    DIR* fds = ::opendir(fddir.c_str());
    if (!fds) continue;  // gone, or another user's
    while (dirent* f = ::readdir(fds)) {
      if (f->d_name[0] == '.') continue;
      struct stat st;
      if (::stat((fddir + "/" + f->d_name).c_str(), &st) == 0 && st.st_dev == dev &&
          st.st_ino == ino && S_ISREG(st.st_mode)) {
        found = fmt::format("{} pid {}", read_comm(pid), pid);
        break;
      }
    }
    ::closedir(fds);
  }
  ::closedir(proc);
  return found;
}

}  // namespace

int qemu_image_locked(int fd) {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = kQemuLockFirstByte;
  fl.l_len = kQemuLockBytes;
  int rc = ::fcntl(fd, F_OFD_GETLK, &fl);
  if (rc != 0 && errno == EINVAL) {  // a kernel without OFD locks: QEMU uses POSIX ones
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = kQemuLockFirstByte;
    fl.l_len = kQemuLockBytes;
    fl.l_pid = 0;
    rc = ::fcntl(fd, F_GETLK, &fl);
  }
  if (rc != 0) return -1;
  return fl.l_type != F_UNLCK;
}

std::optional<std::string> image_holder(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  bool locked = false;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    locked = qemu_image_locked(fd) == 1;
    ::close(fd);
  }
  auto proc = open_by_process(st.st_dev, st.st_ino);
  if (proc) return proc;
  if (locked) return std::string("a QEMU image lock");
  return std::nullopt;
}

}  // namespace kvmcdp
