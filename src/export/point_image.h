// One point of a store as a readable disk image, for kvmcdp export: below,
// the nearest built node at or before the point (kvmcdp build; read
// through qemu-nbd, whose lock on the node's chain keeps prune and
// snapshot delete off it) or else the store's base; above, the point's
// index (point_index.h) of the journal after that.  Journal
// data is read lazily: a frame is decompressed when a read first needs it,
// and its extents go into a sparse scratch file beside the export (the
// point's "fill"), from which later reads come; a background thread fills
// the remaining frames in the meantime, so that a sequential read soon
// runs at the speed of plain files.  Memory holds the index, not data.
//
// With a write overlay (throw-away: a sparse file and the set of ranges
// written), a client's writes shadow the point and vanish with the image.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/fsutil.h"
#include "base/status.h"
#include "capture/disk_reader.h"
#include "export/point_index.h"
#include "journal/extent_map.h"
#include "store/store_view.h"

namespace kvmcdp {

class PointImage {
 public:
  // `view` must outlive the image (its journal reader is used for fills);
  // `work_dir` receives the scratch files, removed with the image.
  static Result<std::unique_ptr<PointImage>> open(StoreView& view, uint64_t seq,
                                                  const std::string& work_dir, bool writable);
  ~PointImage();
  PointImage(const PointImage&) = delete;
  PointImage& operator=(const PointImage&) = delete;

  uint64_t size() const { return index_.disk_size(); }
  // "the base", or "restore point NAME (seq N)".
  const std::string& below_name() const { return below_name_; }
  bool writable() const { return writable_; }
  const PointIndex& index() const { return index_; }

  // Thread-safe.
  Status read(uint64_t offset, uint64_t length, uint8_t* out);
  // The pieces of [offset, offset + length) in order, each either data or
  // zeroes that nothing stores (zeroed or discarded in the journal, holes
  // of the base): what NBD's base:allocation and read holes tell clients,
  // so that a copy skips them.
  using ExtentFn = std::function<void(uint64_t begin, uint64_t end, bool zero)>;
  Status extents(uint64_t offset, uint64_t length, const ExtentFn& fn);
  Status write(uint64_t offset, uint64_t length, const uint8_t* data);
  Status write_zeroes(uint64_t offset, uint64_t length);

  // Fills the frames no read has needed yet, on a thread of its own.
  void start_fill();
  size_t frames_filled() const { return filled_count_.load(); }

 private:
  PointImage(StoreView& view, PointIndex index) : view_(view), index_(std::move(index)) {}
  Status read_point(uint64_t offset, uint64_t length, uint8_t* out);
  // [offset, offset + length) cut into what the client wrote and what it
  // did not, in order.
  using RangeFn = std::function<Status(uint64_t begin, uint64_t end)>;
  Status split_written(uint64_t offset, uint64_t length, const RangeFn& written,
                       const RangeFn& point);
  Status point_extents(uint64_t offset, uint64_t length, const ExtentFn& fn);
  Status read_node(uint64_t offset, uint64_t length, uint8_t* out);
  // The base's data and holes in [b, e) (SEEK_DATA/SEEK_HOLE).
  Status below_extents(uint64_t b, uint64_t e, const ExtentFn& fn);
  Status fill(size_t frame);

  StoreView& view_;
  PointIndex index_;
  bool writable_ = false;
  fsutil::Fd below_;    // the store's base, or
  std::unique_ptr<DiskReader> node_;  // the built node's chain (one request at a time)
  std::mutex node_mu_;
  std::string below_name_ = "the base";
  fsutil::Fd scratch_;  // filled journal extents, at their disk offsets
  fsutil::Fd overlay_;  // writable: the client's writes
  std::string scratch_path_, overlay_path_;

  std::mutex fill_mu_;  // one fill at a time: the journal reader is not shared
  std::vector<std::atomic<bool>> filled_;
  std::atomic<size_t> filled_count_{0};
  std::atomic<bool> stop_fill_{false};
  std::thread filler_;

  std::mutex overlay_mu_;
  ExtentMap written_;
};

}  // namespace kvmcdp
