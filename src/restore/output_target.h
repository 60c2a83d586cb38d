// What an output path names, and whether a command may write a disk image
// there.  Every command that writes an image a user named (restore's -o)
// asks here first, so one set of rules keeps a typo from destroying data:
//
//   nothing there     written as a new file (a temp beside it, renamed in)
//   a regular file    refused (kExists) unless --force; then replaced the
//                     same atomic way; refused even with --force while a
//                     QEMU has it open (its image locks)
//   a block device    refused unless --force; then written in place (the
//                     node stays), only if nobody holds it exclusively
//                     (mounted, LVM/md member, another O_EXCL opener), no
//                     QEMU has it open, and it is big enough
//   "-"               standard output, as a byte stream (not a terminal)
//   anything else     refused: character devices, FIFOs, sockets, folders
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/fsutil.h"
#include "base/status.h"

namespace kvmcdp {

enum class OutputKind {
  kNewFile,       // nothing at the path yet
  kExistingFile,  // a regular file, to be replaced (only with force)
  kBlockDevice,   // written in place (only with force)
  kStdout,        // "-"
};

struct OutputTarget {
  OutputKind kind = OutputKind::kNewFile;
  std::string path;          // as given; "-" for standard output
  bool force = false;        // replace a file / write a device
  uint64_t device_size = 0;  // kBlockDevice: its size in bytes
};

// Looks at `path` and applies the rules above.  kExists for something
// that is there (or in use), kUsage for a kind no image can go to.
Result<OutputTarget> check_output_target(const std::string& path, bool force);

// kUsage if `path` lies inside `store_dir` (or is it), or inside any
// other folder that is a kvmcdp store (manifest.json and journal/): an
// image written there would replace the base or a segment, or litter the
// store.  Symlinks are resolved; the output need not exist yet.
Status check_output_outside_store(const std::string& path, const std::string& store_dir);

// kUsage if the target cannot hold `size` bytes (a block device smaller
// than the disk), checked before anything is written.
Status check_output_fits(const OutputTarget& t, uint64_t size);

// Whether a QEMU (or qemu-img, qemu-nbd, qemu-storage-daemon) has the
// file or device at `fd` open: kExists naming `path`, else ok.
Status check_not_locked_by_qemu(int fd, const std::string& path);

// A temp file name beside `path` (same directory, so a rename is atomic),
// created empty and unlinked again by the destructor unless commit() has
// renamed it over `path`.
class TempBeside {
 public:
  static Result<TempBeside> create(const std::string& path, bool replace);
  // PATH.kvmcdp-partial, replacing `path`: for files kvmcdp keeps for
  // itself, whose recovery after a crash looks for the temp by name.
  static Result<TempBeside> fixed(const std::string& path);
  TempBeside(TempBeside&& o) noexcept;
  TempBeside& operator=(TempBeside&& o) noexcept;
  ~TempBeside();
  const std::string& path() const { return tmp_; }
  // fsync the temp, rename it over the target, fsync the directory.
  // Without `replace`, never over something that appeared meanwhile
  // (kExists).
  Status commit();

 private:
  TempBeside() = default;
  std::string target_, tmp_;
  bool replace_ = false;
};

// Where a raw image is written: a fresh temp file (renamed over the
// target, or streamed to stdout, by commit()), or the block device itself
// (held open with O_EXCL until destroyed, so nobody mounts it meanwhile).
class ImageOutput {
 public:
  // For `t`; `size` is the disk size; `scratch_dir` holds the unnamed
  // temp for stdout (the image is rebuilt in a file first: the writes are
  // not in order), else $TMPDIR or /var/tmp.
  static Result<ImageOutput> open(const OutputTarget& t, uint64_t size,
                                  const std::string& scratch_dir);
  // A plain file at `path`, replaced if there, through PATH.kvmcdp-partial:
  // for images kvmcdp keeps for itself (a fold's new base, a tree's root).
  static Result<ImageOutput> replace_file(const std::string& path, uint64_t size);
  // An unnamed temp file in `dir`, gone when this is: a raw image on its
  // way to another format (commit() does nothing).
  static Result<ImageOutput> scratch(const std::string& dir, uint64_t size);

  int fd() const { return fd_.get(); }
  // The file written (the temp or the device): for messages and for
  // qemu-img to write into.
  const std::string& path() const { return path_; }
  // True for a device: bytes not written keep their old content, so
  // every range meant to read as zeroes must be zeroed.
  bool in_place() const { return in_place_; }
  // Makes [off, off+len) read as zeroes.
  Status zero(uint64_t off, uint64_t len);
  // Durable, then where it belongs: renamed over the target, streamed to
  // stdout, or (a device) flushed.
  Status commit();

 private:
  ImageOutput() = default;
  Status open_unnamed(const std::vector<std::string>& dirs);
  Status open_temp(TempBeside tb);
  OutputKind kind_ = OutputKind::kNewFile;
  bool scratch_ = false;
  fsutil::Fd fd_;
  std::string path_;
  uint64_t size_ = 0;
  bool in_place_ = false;
  std::optional<TempBeside> temp_;
};

}  // namespace kvmcdp
