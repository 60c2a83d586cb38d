// Small POSIX file helpers shared by the journal, manifest and restore:
// full reads/writes that retry short transfers and EINTR, and the
// write-temp / fsync / rename / fsync-directory dance for small files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <sys/uio.h>

#include "base/status.h"

namespace kvmcdp::fsutil {

// "open foo: No such file or directory" from the current errno.
std::string errno_message(const std::string& what, const std::string& path);

Status write_all(int fd, const void* data, size_t n, const std::string& path);
Status pwrite_all(int fd, const void* data, size_t n, uint64_t off,
                  const std::string& path);
// The same for a gathered buffer, any number of pieces (IOV_MAX at a time).
Status pwritev_all(int fd, const struct iovec* iov, size_t iovcnt, uint64_t off,
                   const std::string& path);
// Reads up to n bytes at off; returns how many were read (short at EOF).
Result<size_t> pread_full(int fd, void* data, size_t n, uint64_t off,
                          const std::string& path);
Result<std::vector<uint8_t>> read_file(const std::string& path);

Status fsync_dir(const std::string& dir);
// Replaces `path` with `data` so that a crash leaves either the old or the
// new content, never a mix: write path.tmp, fsync, rename, fsync the dir.
Status replace_file_atomic(const std::string& path, const std::string& data);
// Puts a file that is already durable (fsynced) in place: rename, then
// fsync the directory so that the new name survives a crash too.
Status rename_durable(const std::string& from, const std::string& to);

std::string dirname_of(const std::string& path);

// RAII fd.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd();
  int get() const { return fd_; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  bool valid() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

}  // namespace kvmcdp::fsutil
