#include "base/fsutil.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <vector>

namespace kvmcdp::fsutil {

std::string errno_message(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.release();
  }
  return *this;
}

Fd::~Fd() {
  if (fd_ >= 0) ::close(fd_);
}

Status write_all(int fd, const void* data, size_t n, const std::string& path) {
  auto p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return {ErrorKind::kFailure, errno_message("write", path)};
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return {};
}

Status pwrite_all(int fd, const void* data, size_t n, uint64_t off,
                  const std::string& path) {
  auto p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      return {ErrorKind::kFailure, errno_message("write", path)};
    }
    p += w;
    off += static_cast<uint64_t>(w);
    n -= static_cast<size_t>(w);
  }
  return {};
}

Status pwritev_all(int fd, const struct iovec* iov, size_t iovcnt, uint64_t off,
                   const std::string& path) {
  std::vector<struct iovec> left(iov, iov + iovcnt);
  size_t at = 0;
  while (at < left.size()) {
    int cnt = int(std::min<size_t>(left.size() - at, IOV_MAX));
    ssize_t w = ::pwritev(fd, left.data() + at, cnt, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      return {ErrorKind::kFailure, errno_message("write", path)};
    }
    off += static_cast<uint64_t>(w);
    // Skip what was written, possibly ending inside a piece.
    size_t done = static_cast<size_t>(w);
    while (at < left.size() && done >= left[at].iov_len) done -= left[at++].iov_len;
    if (at < left.size()) {
      left[at].iov_base = static_cast<uint8_t*>(left[at].iov_base) + done;
      left[at].iov_len -= done;
    }
  }
  return {};
}

Result<size_t> pread_full(int fd, void* data, size_t n, uint64_t off,
                          const std::string& path) {
  auto p = static_cast<uint8_t*>(data);
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, p + done, n - done, static_cast<off_t>(off + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return Status(ErrorKind::kFailure, errno_message("read", path));
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return done;
}

Result<std::vector<uint8_t>> read_file(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid())
    return Status(errno == ENOENT ? ErrorKind::kNotFound : ErrorKind::kFailure,
                  errno_message("open", path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0)
    return Status(ErrorKind::kFailure, errno_message("stat", path));
  std::vector<uint8_t> buf(static_cast<size_t>(st.st_size));
  auto n = pread_full(fd.get(), buf.data(), buf.size(), 0, path);
  if (!n) return n.status();
  buf.resize(*n);
  return buf;
}

Status fsync_dir(const std::string& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return {ErrorKind::kFailure, errno_message("open", dir)};
  if (::fsync(fd.get()) != 0)
    return {ErrorKind::kFailure, errno_message("fsync", dir)};
  return {};
}

std::string dirname_of(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

Status replace_file_atomic(const std::string& path, const std::string& data) {
  std::string tmp = path + ".tmp";
  {
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd.valid()) return {ErrorKind::kFailure, errno_message("create", tmp)};
    if (auto st = write_all(fd.get(), data.data(), data.size(), tmp); !st)
      return st;
    if (::fsync(fd.get()) != 0)
      return {ErrorKind::kFailure, errno_message("fsync", tmp)};
  }
  return rename_durable(tmp, path);
}

Status rename_durable(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0)
    return {ErrorKind::kFailure, errno_message("rename to " + to + ":", from)};
  return fsync_dir(dirname_of(to));
}

}  // namespace kvmcdp::fsutil
