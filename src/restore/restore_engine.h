// Rebuilding a disk image as of one seq: base image + journal.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "restore/output_target.h"
#include "base/status.h"
#include "store/store_view.h"

namespace kvmcdp {

struct RestoreProgress {
  const char* phase;  // "journal" or "base"
  uint64_t done;      // frames read (journal) or bytes scanned (base)
  uint64_t total;     // frames to read or disk size
};
using RestoreProgressFn = std::function<void(const RestoreProgress&)>;

struct RestoreStats {
  uint64_t disk_size = 0;
  uint64_t frames_read = 0;
  uint64_t frame_bytes = 0;    // compressed journal bytes read
  uint64_t journal_bytes = 0;  // output bytes written from records
  uint64_t zero_bytes = 0;     // left as holes for write-zeroes/discard
  uint64_t base_bytes = 0;     // output bytes copied from the base image
};

// Writes a raw, sparse image of the disk as it was right after record
// `target_seq` to `out_path` (through a temp file renamed into place,
// replacing what is there).
// Refuses with ErrorKind::kNotRecoverable a seq outside every recoverable
// range (journal_ranges.h), naming the nearest recoverable points.
Result<RestoreStats> restore(const std::string& store_dir, uint64_t target_seq,
                             const std::string& out_path,
                             const RestoreProgressFn& progress = nullptr);
// The same into `out`, sized to the disk, which the caller commits.
Result<RestoreStats> restore_into(const std::string& store_dir, uint64_t target_seq,
                                  ImageOutput& out,
                                  const RestoreProgressFn& progress = nullptr);
// The same on a store the caller holds open: nothing is read twice, and
// the view's ranges (cut at damage the last verify found) are the ones
// that count.
Result<RestoreStats> restore(StoreView& view, uint64_t target_seq, const std::string& out_path,
                             const RestoreProgressFn& progress = nullptr);
Result<RestoreStats> restore_into(StoreView& view, uint64_t target_seq, ImageOutput& out,
                                  const RestoreProgressFn& progress = nullptr);

}  // namespace kvmcdp
