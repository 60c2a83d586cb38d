#include "store/store_readers.h"

#include <fcntl.h>
#include <sys/file.h>

#include <cerrno>

namespace kvmcdp {
namespace {

std::string lock_path(const std::string& store) { return store + "/readers.lock"; }

Result<fsutil::Fd> open_lock(const std::string& store, bool may_be_missing) {
  std::string path = lock_path(store);
  fsutil::Fd fd(::open(path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid() && (errno == EROFS || errno == EACCES))
    fd = fsutil::Fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid() && !may_be_missing)
    return Status(ErrorKind::kFailure, fsutil::errno_message("open", path));
  return fd;
}

Status lock(int fd, int how, const std::string& store) {
  while (::flock(fd, how) != 0)
    if (errno != EINTR) return {ErrorKind::kFailure, fsutil::errno_message("lock", lock_path(store))};
  return Status::ok();
}

}  // namespace

Result<StoreReaders> StoreReaders::shared(const std::string& store_dir) {
  auto fd = open_lock(store_dir, true);
  if (!fd) return fd.status();
  if (fd->valid())
    if (auto s = lock(fd->get(), LOCK_SH, store_dir); !s) return s;
  return StoreReaders(std::move(*fd));
}

Result<StoreReaders> StoreReaders::exclusive(const std::string& store_dir, bool* waited) {
  auto fd = open_lock(store_dir, false);
  if (!fd) return fd.status();
  *waited = false;
  if (::flock(fd->get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK)
      return Status(ErrorKind::kFailure, fsutil::errno_message("lock", lock_path(store_dir)));
    *waited = true;
    if (auto s = lock(fd->get(), LOCK_EX, store_dir); !s) return s;
  }
  return StoreReaders(std::move(*fd));
}

}  // namespace kvmcdp
