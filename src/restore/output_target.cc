// The output rules of output_target.h.  Two choices worth a word:
//
//  - Files are never written in place: the image goes to a temp beside
//    the target and is renamed over it, so a failed restore leaves the old
//    file whole.  Without --force the rename is RENAME_NOREPLACE, so a
//    file that appears while the restore runs is not clobbered either.
//  - Devices are never renamed over (that would swap the node for a
//    regular file and leave the device untouched): they are opened with
//    O_EXCL, which the kernel refuses while the device is mounted, part of
//    an LVM volume, an md array or a dm table, or opened O_EXCL by anyone
//    else, and held that way until the image is written.
#include "restore/output_target.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include <fmt/format.h>

#include "qemu/image_lock.h"

namespace kvmcdp {
namespace {

constexpr char kPartialSuffix[] = ".kvmcdp-partial";

uint64_t block_device_size(int fd) {
  uint64_t size = 0;
  if (::ioctl(fd, BLKGETSIZE64, &size) != 0) return 0;
  return size;
}

mode_t creation_mode() {
  // A new image gets 0644 less the umask, as open(O_CREAT, 0644) gives
  // (mkstemp creates 0600).  The umask is read by setting it back at once.
  mode_t mask = ::umask(0);
  ::umask(mask);
  return 0644 & ~mask;
}

Result<std::string> make_temp(const std::string& stem) {
  std::string name = stem + ".XXXXXX" + kPartialSuffix;
  std::vector<char> buf(name.begin(), name.end());
  buf.push_back('\0');
  int fd = ::mkostemps(buf.data(), int(sizeof(kPartialSuffix) - 1), O_CLOEXEC);
  if (fd < 0) return Status(ErrorKind::kFailure, fsutil::errno_message("create", name));
  ::fchmod(fd, creation_mode());
  ::close(fd);
  return std::string(buf.data());
}

std::string basename_of(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

Status check_not_locked_by_qemu(int fd, const std::string& path) {
  // QEMU's image lock (image_lock.h) rather than `qemu-img info`: no
  // process to run, no output to parse, and it sees read-only holders too.
  int locked = qemu_image_locked(fd);
  if (locked < 0) return Status(ErrorKind::kFailure, fsutil::errno_message("check the locks of", path));
  if (locked)
    return Status(ErrorKind::kExists,
                  fmt::format("{} is open in QEMU (a VM, qemu-img, qemu-nbd or "
                              "qemu-storage-daemon holds its image lock): stop that first",
                              path));
  return Status::ok();
}

Result<OutputTarget> check_output_target(const std::string& path, bool force) {
  OutputTarget t;
  t.path = path;
  t.force = force;
  if (path.empty()) return Status(ErrorKind::kUsage, "the output path is empty");
  if (path == "-") {
    if (::isatty(1))
      return Status(ErrorKind::kUsage,
                    "-o - writes the image to standard output, which is a terminal here: "
                    "pipe it on (| zstd > FILE, | dd of=DEVICE, | ssh ...)");
    t.kind = OutputKind::kStdout;
    return t;
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) return Status(ErrorKind::kFailure, fsutil::errno_message("stat", path));
    struct stat lst;
    if (::lstat(path.c_str(), &lst) == 0)  // a symlink to nothing
      return Status(ErrorKind::kExists,
                    path + " is a symbolic link to nothing: remove it or name another path");
    std::string dir = fsutil::dirname_of(path);
    struct stat dst;
    if (::stat(dir.c_str(), &dst) != 0 || !S_ISDIR(dst.st_mode))
      return Status(ErrorKind::kNotFound, "no folder " + dir + " to write " + path + " into");
    t.kind = OutputKind::kNewFile;
    return t;
  }
  // In use first: "--force replaces it" would be bad advice for a file a
  // VM is running on.
  if (S_ISREG(st.st_mode)) {
    fsutil::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.valid()) {
      if (auto s = check_not_locked_by_qemu(fd.get(), path); !s) return s;
    } else if (force) {
      return Status(ErrorKind::kFailure, fsutil::errno_message("open", path));
    }
    if (!force) return Status(ErrorKind::kExists, path + " exists: --force replaces it");
    // Through a symlink, replace the file it points at, not the link.
    std::unique_ptr<char, void (*)(void*)> real(::realpath(path.c_str(), nullptr), ::free);
    if (real) t.path = real.get();
    t.kind = OutputKind::kExistingFile;
    return t;
  }
  if (S_ISBLK(st.st_mode)) {
    // Read-only is enough for O_EXCL, and closing a device opened for
    // writing would make udev rescan it.
    fsutil::Fd fd(::open(path.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC));
    if (!fd.valid()) {
      if (errno == EBUSY)
        return Status(ErrorKind::kExists,
                      path + " is in use (mounted, part of a volume or array, or held "
                             "open by another program)");
      return Status(ErrorKind::kFailure, fsutil::errno_message("open", path));
    }
    if (auto s = check_not_locked_by_qemu(fd.get(), path); !s) return s;
    if (!force)
      return Status(ErrorKind::kExists,
                    path + " is a block device: --force writes the image onto it");
    t.kind = OutputKind::kBlockDevice;
    t.device_size = block_device_size(fd.get());
    return t;
  }
  const char* what = S_ISCHR(st.st_mode)    ? "a character device"
                     : S_ISDIR(st.st_mode)  ? "a folder"
                     : S_ISFIFO(st.st_mode) ? "a pipe"
                                            : "not a regular file";
  return Status(ErrorKind::kExists,
                fmt::format("{} is {}, not a place for a disk image ({})", path, what,
                            S_ISDIR(st.st_mode) ? "name a file in it"
                                                : "-o - writes to standard output"));
}

namespace {

std::string real_path(const std::string& p) {
  std::unique_ptr<char, void (*)(void*)> r(::realpath(p.c_str(), nullptr), ::free);
  return r ? std::string(r.get()) : std::string();
}

bool is_store_dir(const std::string& dir) {
  struct stat m, j;
  return ::stat((dir + "/manifest.json").c_str(), &m) == 0 && S_ISREG(m.st_mode) &&
         ::stat((dir + "/journal").c_str(), &j) == 0 && S_ISDIR(j.st_mode);
}

}  // namespace

Status check_output_outside_store(const std::string& path, const std::string& store_dir) {
  if (path.empty() || path == "-") return Status::ok();
  // The output's real place: itself if it exists (a symlink to base.raw
  // is base.raw), else its real folder and its name.
  std::string real = real_path(path);
  if (real.empty()) {
    std::string dir = real_path(fsutil::dirname_of(path));
    if (dir.empty()) return Status::ok();  // no folder: check_output_target says so
    real = (dir == "/" ? "" : dir) + "/" + basename_of(path);
  }
  const std::string store = real_path(store_dir);
  auto refuse = [&](const std::string& dir) {
    return Status(ErrorKind::kUsage,
                  fmt::format("{} {} the store {}: write the image elsewhere", path,
                              real == real_path(dir) ? "is" : "lies inside", dir));
  };
  // Every folder from the output up to /, the output itself included
  // (-o STORE), the store named on the command line first.
  for (std::string d = real;;) {
    if (!store.empty() && d == store) return refuse(store_dir);
    if (is_store_dir(d)) return refuse(d);
    if (d == "/" || d.empty()) break;
    d = fsutil::dirname_of(d);
  }
  return Status::ok();
}

Status check_output_fits(const OutputTarget& t, uint64_t size) {
  if (t.kind == OutputKind::kBlockDevice && t.device_size < size)
    return Status(ErrorKind::kUsage,
                  fmt::format("{} holds {} bytes, the disk is {} bytes: nothing written",
                              t.path, t.device_size, size));
  return Status::ok();
}

// ---- TempBeside

Result<TempBeside> TempBeside::create(const std::string& path, bool replace) {
  std::string dir = fsutil::dirname_of(path);
  auto tmp = make_temp(dir + "/." + basename_of(path));
  if (!tmp) return tmp.status();
  TempBeside t;
  t.target_ = path;
  t.tmp_ = *tmp;
  t.replace_ = replace;
  return t;
}

Result<TempBeside> TempBeside::fixed(const std::string& path) {
  TempBeside t;
  t.target_ = path;
  t.tmp_ = path + kPartialSuffix;
  t.replace_ = true;
  fsutil::Fd fd(::open(t.tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) {
    Status s(ErrorKind::kFailure, fsutil::errno_message("create", t.tmp_));
    t.tmp_.clear();  // not ours to remove
    return s;
  }
  return t;
}

TempBeside::TempBeside(TempBeside&& o) noexcept
    : target_(std::move(o.target_)), tmp_(std::move(o.tmp_)), replace_(o.replace_) {
  o.tmp_.clear();
}

TempBeside& TempBeside::operator=(TempBeside&& o) noexcept {
  if (this != &o) {
    if (!tmp_.empty()) ::unlink(tmp_.c_str());
    target_ = std::move(o.target_);
    tmp_ = std::move(o.tmp_);
    replace_ = o.replace_;
    o.tmp_.clear();
  }
  return *this;
}

TempBeside::~TempBeside() {
  if (!tmp_.empty()) ::unlink(tmp_.c_str());
}

Status TempBeside::commit() {
  {
    fsutil::Fd fd(::open(tmp_.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid() || ::fsync(fd.get()) != 0)
      return Status(ErrorKind::kFailure, fsutil::errno_message("fsync", tmp_));
  }
  if (replace_) {
    if (::rename(tmp_.c_str(), target_.c_str()) != 0)
      return Status(ErrorKind::kFailure, fsutil::errno_message("rename to " + target_ + ":", tmp_));
  } else if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, target_.c_str(), RENAME_NOREPLACE) !=
             0) {
    if (errno == EEXIST)
      return Status(ErrorKind::kExists, target_ + " appeared while the image was written: "
                                                  "left alone (--force replaces it)");
    if (errno != EINVAL && errno != ENOSYS)
      return Status(ErrorKind::kFailure, fsutil::errno_message("rename to " + target_ + ":", tmp_));
    // A filesystem without RENAME_NOREPLACE: link() refuses an existing
    // name just the same.
    if (::link(tmp_.c_str(), target_.c_str()) != 0)
      return Status(errno == EEXIST ? ErrorKind::kExists : ErrorKind::kFailure,
                    fsutil::errno_message("link " + tmp_ + " to", target_));
    ::unlink(tmp_.c_str());
  }
  tmp_.clear();
  return fsutil::fsync_dir(fsutil::dirname_of(target_));
}

// ---- ImageOutput

Result<ImageOutput> ImageOutput::open(const OutputTarget& t, uint64_t size,
                                      const std::string& scratch_dir) {
  if (auto s = check_output_fits(t, size); !s) return s;
  if (t.kind == OutputKind::kBlockDevice) {
    ImageOutput out;
    out.kind_ = t.kind;
    out.path_ = t.path;
    out.size_ = size;
    out.in_place_ = true;
    out.fd_ = fsutil::Fd(::open(t.path.c_str(), O_RDWR | O_EXCL | O_CLOEXEC));
    if (!out.fd_.valid())
      return Status(errno == EBUSY ? ErrorKind::kExists : ErrorKind::kFailure,
                    fsutil::errno_message("open", t.path));
    if (block_device_size(out.fd()) < size)  // changed since the check
      return Status(ErrorKind::kUsage, t.path + " is smaller than the disk: nothing written");
    return out;
  }
  ImageOutput out;
  out.kind_ = t.kind;
  out.size_ = size;
  if (t.kind == OutputKind::kStdout) {
    // The store's filesystem first: it has room for the disk's data.
    const char* env = ::getenv("TMPDIR");
    if (auto s = out.open_unnamed({scratch_dir, env && *env ? env : "/var/tmp"}); !s) return s;
  } else {
    auto tb = TempBeside::create(t.path, t.kind == OutputKind::kExistingFile);
    if (!tb) return tb.status();
    if (auto s = out.open_temp(std::move(*tb)); !s) return s;
  }
  if (::ftruncate(out.fd(), off_t(size)) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("truncate", out.path_));
  return out;
}

Result<ImageOutput> ImageOutput::replace_file(const std::string& path, uint64_t size) {
  ImageOutput out;
  out.kind_ = OutputKind::kExistingFile;
  out.size_ = size;
  auto tb = TempBeside::fixed(path);
  if (!tb) return tb.status();
  if (auto s = out.open_temp(std::move(*tb)); !s) return s;
  if (::ftruncate(out.fd(), off_t(size)) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("truncate", out.path_));
  return out;
}

Status ImageOutput::open_temp(TempBeside tb) {
  temp_.emplace(std::move(tb));
  path_ = temp_->path();
  fd_ = fsutil::Fd(::open(path_.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd_.valid()) return Status(ErrorKind::kFailure, fsutil::errno_message("open", path_));
  return Status::ok();
}

Result<ImageOutput> ImageOutput::scratch(const std::string& dir, uint64_t size) {
  ImageOutput out;
  out.scratch_ = true;
  out.size_ = size;
  const char* env = ::getenv("TMPDIR");
  if (auto s = out.open_unnamed({dir, env && *env ? env : "/var/tmp"}); !s) return s;
  if (::ftruncate(out.fd(), off_t(size)) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("truncate", out.path_));
  return out;
}

// An unnamed file (O_TMPFILE) in the first of `dirs` that allows one:
// whatever ends the restore, even ^C in the middle of a pipe, leaves
// nothing behind.  qemu-img (a child) reaches it through our fd table.
Status ImageOutput::open_unnamed(const std::vector<std::string>& dirs) {
  for (const std::string& dir : dirs) {
    if (dir.empty()) continue;
    fd_ = fsutil::Fd(::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
    if (fd_.valid()) {
      path_ = fmt::format("/proc/{}/fd/{}", ::getpid(), fd());
      return Status::ok();
    }
  }
  return Status(ErrorKind::kFailure,
                fsutil::errno_message("create a temporary file in", dirs.front()));
}

Status ImageOutput::zero(uint64_t off, uint64_t len) {
  if (len == 0) return Status::ok();
  if (::fallocate(fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(off), off_t(len)) == 0)
    return Status::ok();
  if (::fallocate(fd(), FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, off_t(off), off_t(len)) == 0)
    return Status::ok();
  std::vector<uint8_t> zeros(size_t(std::min<uint64_t>(len, 1u << 20)));
  while (len > 0) {
    size_t n = size_t(std::min<uint64_t>(len, zeros.size()));
    if (auto s = fsutil::pwrite_all(fd(), zeros.data(), n, off, path_); !s) return s;
    off += n;
    len -= n;
  }
  return Status::ok();
}

Status ImageOutput::commit() {
  if (scratch_) return Status::ok();
  if (::fsync(fd()) != 0) return Status(ErrorKind::kFailure, fsutil::errno_message("fsync", path_));
  if (kind_ == OutputKind::kBlockDevice) return Status::ok();
  if (kind_ != OutputKind::kStdout) {
    fd_ = fsutil::Fd();
    return temp_->commit();
  }
  // Standard output: the image in order, data extents read, holes sent
  // as zeroes (a pipe has no holes).
  std::vector<uint8_t> buf(1u << 20), zeros(1u << 20);
  uint64_t pos = 0;
  auto send_zeroes = [&](uint64_t end) -> Status {
    while (pos < end) {
      size_t n = size_t(std::min<uint64_t>(end - pos, zeros.size()));
      if (auto s = fsutil::write_all(1, zeros.data(), n, "standard output"); !s) return s;
      pos += n;
    }
    return Status::ok();
  };
  while (pos < size_) {
    off_t d = ::lseek(fd(), off_t(pos), SEEK_DATA);
    if (d < 0) break;  // ENXIO: holes to the end
    off_t h = ::lseek(fd(), d, SEEK_HOLE);
    uint64_t e = h < 0 ? size_ : std::min<uint64_t>(size_, uint64_t(h));
    if (auto s = send_zeroes(std::min<uint64_t>(uint64_t(d), size_)); !s) return s;
    while (pos < e) {
      size_t want = size_t(std::min<uint64_t>(buf.size(), e - pos));
      auto got = fsutil::pread_full(fd(), buf.data(), want, pos, path_);
      if (!got) return got.status();
      if (*got == 0) return send_zeroes(size_);
      if (auto s = fsutil::write_all(1, buf.data(), *got, "standard output"); !s) return s;
      pos += *got;
    }
  }
  return send_zeroes(size_);
}

}  // namespace kvmcdp
