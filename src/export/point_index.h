// The extent index of one point of a store: for every byte range of the
// disk as it was right after seq S, where its bytes are now.  Built once
// from the newest-first journal walk (store/journal_delta.h), it holds
// only locations, never data, so it costs one walk of the journal after
// the base (decompression, no writes) and memory per journal extent,
// whatever the disk's size.  Ranges it does not hold read from the image
// below the journal (the store's base).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <vector>

#include "base/status.h"
#include "store/journal_delta.h"
#include "store/journal_reader.h"

namespace kvmcdp {

struct PointPiece {
  enum class From { kBelow, kZero, kJournal };
  uint64_t begin = 0, end = 0;
  From from = From::kBelow;
  DeltaSource where;  // kJournal: the frame and the offset in it of `begin`
};

class PointIndex {
 public:
  // The point right after `to_seq`, over an image that holds everything up
  // to `from_seq`.
  static Result<PointIndex> build(journal::JournalReader& r, uint64_t from_seq, uint64_t to_seq,
                                  uint64_t disk_size);

  // The pieces of [offset, offset + length), in order, gap-free.
  void pieces(uint64_t offset, uint64_t length,
              const std::function<void(const PointPiece&)>& fn) const;
  // The journal extents of frame `frame` (for filling it in one go).
  const std::vector<PointPiece>& frame_pieces(size_t frame) const;
  // Frames the point reads, in the order the walk met them (newest first).
  const std::vector<size_t>& frames() const { return frame_order_; }

  uint64_t disk_size() const { return disk_size_; }
  const DeltaStats& stats() const { return stats_; }
  size_t extent_count() const { return by_offset_.size(); }

 private:
  uint64_t disk_size_ = 0;
  DeltaStats stats_;
  std::map<uint64_t, PointPiece> by_offset_;  // begin -> piece (journal or zero)
  std::map<size_t, std::vector<PointPiece>> by_frame_;
  std::vector<size_t> frame_order_;
};

}  // namespace kvmcdp
