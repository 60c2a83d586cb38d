#include "export/point_index.h"

namespace kvmcdp {

Result<PointIndex> PointIndex::build(journal::JournalReader& r, uint64_t from_seq,
                                     uint64_t to_seq, uint64_t disk_size) {
  PointIndex ix;
  ix.disk_size_ = disk_size;
  auto st = journal_delta_at(
      r, from_seq, to_seq, disk_size,
      [&](uint64_t off, uint64_t len, const uint8_t* data, const DeltaSource& where) {
        PointPiece p{off, off + len, data ? PointPiece::From::kJournal : PointPiece::From::kZero,
                     where};
        ix.by_offset_.emplace(off, p);
        if (data) {
          auto [it, fresh] = ix.by_frame_.try_emplace(where.frame);
          if (fresh) ix.frame_order_.push_back(where.frame);
          it->second.push_back(p);
        }
        return Status::ok();
      });
  if (!st) return st.status();
  ix.stats_ = *st;
  return ix;
}

void PointIndex::pieces(uint64_t offset, uint64_t length,
                        const std::function<void(const PointPiece&)>& fn) const {
  const uint64_t end = std::min(offset + length, disk_size_);
  uint64_t at = offset;
  auto it = by_offset_.upper_bound(offset);
  if (it != by_offset_.begin() && std::prev(it)->second.end > offset) --it;
  for (; at < end; ++it) {
    if (it == by_offset_.end() || it->first >= end) {
      fn(PointPiece{at, end, PointPiece::From::kBelow, {}});
      return;
    }
    const PointPiece& p = it->second;
    if (p.begin > at) fn(PointPiece{at, p.begin, PointPiece::From::kBelow, {}});
    PointPiece cut = p;
    cut.begin = std::max(p.begin, offset);
    cut.end = std::min(p.end, end);
    if (cut.from == PointPiece::From::kJournal) cut.where.raw_offset += cut.begin - p.begin;
    fn(cut);
    at = cut.end;
  }
}

const std::vector<PointPiece>& PointIndex::frame_pieces(size_t frame) const {
  static const std::vector<PointPiece> none;
  auto it = by_frame_.find(frame);
  return it == by_frame_.end() ? none : it->second;
}

}  // namespace kvmcdp
