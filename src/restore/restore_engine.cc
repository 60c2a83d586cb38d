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
//  2. Base pass: the blocks of the base image that hold something the
//     journal did not cover are read, checked against the base's block
//     checksums (base_checksums.h) and written there.  Holes of the base
//     (SEEK_DATA / SEEK_HOLE) are not read and stay holes.
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

#include "store/base_checksums.h"
#include "journal/extent_map.h"
#include "store/journal_delta.h"
#include "base/fsutil.h"
#include "store/journal_ranges.h"
#include "store/journal_reader.h"
#include "store/manifest.h"

namespace kvmcdp {
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

namespace {

// The algorithm, on a store already open (its manifest `m`, journal `r`
// and recoverable `ranges`).
Result<RestoreStats> restore_open(const std::string& store_dir, const Manifest& manifest,
                                  journal::JournalReader& r,
                                  const std::vector<journal::RecoverableRange>& ranges,
                                  uint64_t target_seq, ImageOutput& out,
                                  const RestoreProgressFn& progress) {
  const Manifest* m = &manifest;
  // Step 1: is the point recoverable?
  if (!m->base_complete)
    return Status(ErrorKind::kNotRecoverable,
                  "the base copy of " + store_dir + " never completed");
  if (auto s = journal::check_recoverable(ranges, target_seq); !s) return s;

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

  // Step 4: base pass, a block at a time, only blocks the journal left
  // a gap in.  Each block read is checked against the base's checksums
  // (base_checksums.h) and a hole against the zero block's, so damage in
  // the base fails the restore before the output is committed.
  std::string base_path = store_dir + "/" + m->base_image;
  auto sums = load_base_checksums(store_dir, *m);
  if (!sums) return sums.status();
  fsutil::Fd base(::open(base_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!base.valid())
    return Status(ErrorKind::kNotFound, fsutil::errno_message("open", base_path));
  struct stat bst;
  if (fstat(base.get(), &bst) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("stat", base_path));
  if (S_ISREG(bst.st_mode) && uint64_t(bst.st_size) != size)
    return Status(ErrorKind::kDamaged,
                  fmt::format("the base copy {} holds {} bytes, the disk {}: it was cut or "
                              "extended",
                              base_path, uint64_t(bst.st_size), size));
  BaseBlockReader blocks(base.get(), base_path, *sums ? &**sums : nullptr, size);
  std::vector<uint8_t> buf;
  std::vector<std::pair<uint64_t, uint64_t>> gaps;
  for (uint64_t i = 0; i < blocks.block_count() && !done.covers(size); i++) {
    uint64_t b = i * kBaseBlock, e = std::min<uint64_t>(size, b + kBaseBlock);
    // Every 16 MiB of the disk, holes and covered blocks included: a
    // caller pacing the restore by it (recover --copy-speed) sees time pass.
    if (progress && i % 256 == 255) progress({"base", b, size});
    gaps.clear();
    done.uncovered(b, e, [&](uint64_t gb, uint64_t ge) { gaps.emplace_back(gb, ge); });
    if (gaps.empty()) continue;
    bool hole = false;
    if (auto s = blocks.read_block(i, &buf, &hole, false); !s) return s;
    if (hole) continue;  // zeroes: a hole of the output (step 5 on a device)
    for (auto [gb, ge] : gaps) {
      if (auto s = fsutil::pwrite_all(out.fd(), buf.data() + (gb - b), ge - gb, gb, tmp); !s)
        return s;
      st.base_bytes += ge - gb;
    }
    done.cover(b, e, [](uint64_t, uint64_t) {});
  }
  if (progress) progress({"base", size, size});

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

}  // namespace

Result<RestoreStats> restore_into(const std::string& store_dir, uint64_t target_seq,
                                  ImageOutput& out, const RestoreProgressFn& progress) {
  auto m = read_manifest(store_dir);
  if (!m) return m.status();
  if (!m->base_complete)
    return Status(ErrorKind::kNotRecoverable,
                  "the base copy of " + store_dir + " never completed");
  auto reader = journal::JournalReader::open(store_dir);
  if (!reader) return reader.status();
  auto ranges = journal::recoverable_ranges(**reader, m->base_complete_seq,
                                            m->base_complete_time_ns);
  if (!ranges) return ranges.status();
  return restore_open(store_dir, *m, **reader, *ranges, target_seq, out, progress);
}

Result<RestoreStats> restore_into(StoreView& view, uint64_t target_seq, ImageOutput& out,
                                  const RestoreProgressFn& progress) {
  return restore_open(view.store_dir, view.manifest, *view.reader, view.ranges, target_seq,
                      out, progress);
}

Result<RestoreStats> restore(StoreView& view, uint64_t target_seq, const std::string& out_path,
                             const RestoreProgressFn& progress) {
  auto out = ImageOutput::replace_file(out_path, view.manifest.disk_size);
  if (!out) return out.status();
  auto st = restore_into(view, target_seq, *out, progress);
  if (!st) return st;
  if (auto s = out->commit(); !s) return s;
  return st;
}

}  // namespace kvmcdp
