// Restore without replay.  Replaying every record in order would write
// hot blocks many times and read the whole base first.  Instead:
//
//  1. Journal pass, newest first: frames are read from the one holding
//     target_seq back to the start (after a fold, back to folded_seq: the
//     older records are in the base), records in each frame from last to
//     first.  An ExtentMap remembers which output bytes already have their
//     newest version; a record contributes only the parts not yet covered.
//     Write data goes straight to the output at once (so memory holds one
//     frame, not the journal); write-zeroes and discards just cover their
//     range and leave a hole.  The pass stops early once the whole disk is
//     covered.  Frames are read and decompressed a little ahead on a
//     second thread (frame_prefetcher.h), beside the writes.
//  2. Base pass: the data extents of the sparse base image (SEEK_DATA /
//     SEEK_HOLE) are copied, with copy_file_range, into whatever the
//     journal did not cover.  Holes stay holes.
//
// Every output byte is thus written at most once, and the output is a
// temp file truncated to the disk size, so untouched bytes are holes.  On
// a block device written in place (output_target.h) there are no holes:
// the zero ranges and whatever neither pass wrote are zeroed instead.
#include "restore_engine.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include <fmt/format.h>

#include "extent_map.h"
#include "frame_prefetcher.h"
#include "fsutil.h"
#include "journal_ranges.h"
#include "journal_reader.h"
#include "manifest.h"

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
  // base (records <= folded_seq are already there).
  ExtentMap done;
  size_t first = r.frames().size();
  while (first > 0 && r.frames()[first - 1].first_seq > target_seq) first--;
  std::vector<size_t> order;
  for (size_t i = first; i-- > 0;) {
    if (m->folded_seq && r.frames()[i].last_seq <= m->folded_seq) break;
    order.push_back(i);
  }
  journal::FramePrefetcher frames(r, std::move(order));
  while (!done.covers(size)) {
    journal::FramePrefetcher::Frame* f = frames.next();
    if (!f) break;
    if (!f->status) return f->status;
    const size_t i = f->index;
    const std::vector<RecordView>& recs = f->records;
    st.frames_read++;
    st.frame_bytes += r.frames()[i].length;
    for (size_t k = recs.size(); k-- > 0;) {
      const RecordView& v = recs[k];
      if (v.seq > target_seq || (m->folded_seq && v.seq <= m->folded_seq)) continue;
      bool write = v.type == RecordType::kWrite;
      if (!write && v.type != RecordType::kWriteZeroes &&
          v.type != RecordType::kDiscard)
        continue;
      // The filter never writes past the disk: such a record, or the
      // manifest's disk_size, is wrong, and the image would be too.
      if (v.offset > size || v.length > size - v.offset)
        return Status(ErrorKind::kDamaged,
                      fmt::format("record {} writes past the disk's end (disk_size {} in the "
                                  "manifest)",
                                  v.seq, size));
      uint64_t end = v.offset + v.length;
      Status err;
      done.cover(v.offset, end, [&](uint64_t b, uint64_t e) {
        if (!write) {
          st.zero_bytes += e - b;
          if (err && out.in_place()) err = out.zero(b, e - b);
          return;
        }
        if (err) err = fsutil::pwrite_all(out.fd(), v.data + (b - v.offset),
                                           e - b, b, tmp);
        st.journal_bytes += e - b;
      });
      if (!err) return err;
    }
    frames.release(f);
    if (progress) progress({"journal", first - i, first});
  }

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
