// Restore without replay.  Replaying every record in order would write
// hot blocks many times and read the whole base first.  Instead:
//
//  1. Journal pass, newest first (store/journal_delta.h): frames from the
//     one holding target_seq back to the start (after a fold, back to
//     folded_seq: the older records are in the base), records in each
//     frame from last to first; each byte comes from the newest record
//     that wrote it.  Write data goes straight to the output at once (so
//     memory holds one frame, not the journal); write-zeroes and discards
//     leave a hole.  The pass stops early once the whole disk is covered.
//  2. Base pass: the data extents of the sparse base image (SEEK_DATA /
//     SEEK_HOLE) are copied, with copy_file_range, into whatever the
//     journal did not cover.  Holes stay holes.
//
// Every output byte is thus written at most once, and the output is a
// temp file truncated to the disk size, so untouched bytes are holes.  On
// a block device written in place (output_target.h) there are no holes:
// the zero ranges and whatever neither pass wrote are zeroed instead.
#include "restore/restore_engine.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include <fmt/format.h>

#include "journal/extent_map.h"
#include "store/journal_delta.h"
#include "base/fsutil.h"
#include "store/journal_ranges.h"
#include "store/journal_reader.h"
#include "store/manifest.h"

namespace kvmcdp {
namespace {

using journal::RecordView;

// Copies [b, e) from in to out at the same offset.
Status copy_range(int in, int out, uint64_t b, uint64_t e,
                  const std::string& in_path, const std::string& out_path,
                  std::vector<uint8_t>* buf) {
  while (b < e) {
    loff_t ib = loff_t(b), ob = loff_t(b);
    ssize_t n = ::copy_file_range(in, &ib, out, &ob, e - b, 0);
    if (n > 0) {
      b += uint64_t(n);
      continue;
    }
    if (n == 0) break;  // base shorter than expected: the rest reads zero
    if (errno == EINTR) continue;
    if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
      return {ErrorKind::kFailure, fsutil::errno_message("copy from", in_path)};
    // No in-kernel copy here: plain reads and writes.
    buf->resize(1u << 20);
    while (b < e) {
      size_t want = size_t(std::min<uint64_t>(buf->size(), e - b));
      auto got = fsutil::pread_full(in, buf->data(), want, b, in_path);
      if (!got) return got.status();
      if (*got == 0) return {};
      if (auto s = fsutil::pwrite_all(out, buf->data(), *got, b, out_path); !s) return s;
      b += *got;
    }
  }
  return {};
}

}  // namespace

Result<RestoreStats> restore(const std::string& store_dir, uint64_t target_seq,
                             const std::string& out_path,
                             const RestoreProgressFn& progress) {
  auto m = read_manifest(store_dir);
  if (!m) return m.status();
  auto out = ImageOutput::replace_file(out_path, m->disk_size);
  if (!out) return out.status();
  auto st = restore_into(store_dir, target_seq, *out, progress);
  if (!st) return st;
  if (auto s = out->commit(); !s) return s;
  return st;
}

Result<RestoreStats> restore_into(const std::string& store_dir, uint64_t target_seq,
                                  ImageOutput& out, const RestoreProgressFn& progress) {
  // Step 1: is the point recoverable?
  auto m = read_manifest(store_dir);
  if (!m) return m.status();
  if (!m->base_complete)
    return Status(ErrorKind::kNotRecoverable,
                  "the base copy of " + store_dir + " never completed");
  auto reader = journal::JournalReader::open(store_dir);
  if (!reader) return reader.status();
  auto& r = **reader;
  auto ranges = journal::recoverable_ranges(r, m->base_complete_seq,
                                            m->base_complete_time_ns);
  if (!ranges) return ranges.status();
  if (auto s = journal::check_recoverable(*ranges, target_seq); !s) return s;

  // Step 2: the output, of the disk's size: a sparse temp file, or a
  // device written in place, where every byte meant to read as zero has
  // to be zeroed (its old content is there).
  RestoreStats st;
  st.disk_size = m->disk_size;
  const uint64_t size = m->disk_size;
  const std::string& tmp = out.path();

  // Step 3: journal pass, newest first, down to what a fold put into the
  // base (records <= folded_seq are already there).  Zero ranges stay
  // holes in a fresh file; a device has its old bytes there.
  ExtentMap done;
  auto delta = journal_delta(
      r, m->folded_seq, target_seq, size,
      [&](uint64_t off, uint64_t len, const uint8_t* data) -> Status {
        if (!data) return out.in_place() ? out.zero(off, len) : Status::ok();
        return fsutil::pwrite_all(out.fd(), data, len, off, tmp);
      },
      &done,
      [&](size_t walked, size_t total) {
        if (progress) progress({"journal", walked, total});
      });
  if (!delta) return delta.status();
  st.frames_read = delta->frames_read;
  st.frame_bytes = delta->frame_bytes;
  st.journal_bytes = delta->data_bytes;
  st.zero_bytes = delta->zero_bytes;

  // Step 4: base pass, data extents only.
  std::string base_path = store_dir + "/" + m->base_image;
  fsutil::Fd base(::open(base_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!base.valid())
    return Status(ErrorKind::kNotFound, fsutil::errno_message("open", base_path));
  std::vector<uint8_t> buf;
  uint64_t pos = 0;
  while (pos < size && !done.covers(size)) {
    off_t d = ::lseek(base.get(), off_t(pos), SEEK_DATA);
    if (d < 0) break;  // ENXIO: only holes (or EOF) from here on
    off_t h = ::lseek(base.get(), d, SEEK_HOLE);
    if (h < 0) h = off_t(size);
    uint64_t b = uint64_t(d), e = std::min<uint64_t>(size, uint64_t(h));
    if (b >= size) break;
    Status err;
    done.cover(b, e, [&](uint64_t cb, uint64_t ce) {
      if (err) err = copy_range(base.get(), out.fd(), cb, ce, base_path, tmp, &buf);
      st.base_bytes += ce - cb;
    });
    if (!err) return err;
    pos = e;
    if (progress) progress({"base", pos, size});
  }

  // Step 5: on a device, what neither the journal nor the base's data
  // covered is a hole of the base: zeroes.
  if (out.in_place()) {
    Status err;
    done.uncovered(0, size, [&](uint64_t b, uint64_t e) {
      if (err) err = out.zero(b, e - b);
    });
    if (!err) return err;
  }
  return st;
}

}  // namespace kvmcdp
