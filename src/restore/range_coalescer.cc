#include "restore/range_coalescer.h"

#include <algorithm>
#include <cstring>

namespace kvmcdp {

Status RangeCoalescer::add(uint64_t offset, uint64_t length, const uint8_t* data) {
  if (length == 0) return Status::ok();
  const bool zero = data == nullptr;
  const bool touches = offset + length == begin_ || offset == end_;
  if (begin_ == end_ || zero != zero_ || !touches || (end_ - begin_) + length > max_) {
    if (auto s = flush(); !s) return s;
    zero_ = zero;
    begin_ = offset;
    end_ = offset;
  }
  begin_ = std::min(begin_, offset);
  end_ = std::max(end_, offset + length);
  if (!zero) pieces_.push_back({offset, std::vector<uint8_t>(data, data + length)});
  return Status::ok();
}

Status RangeCoalescer::flush() {
  if (begin_ == end_) return Status::ok();
  std::vector<uint8_t> data;
  if (pieces_.size() == 1) {
    data = std::move(pieces_.front().data);  // the common case: no second copy
  } else if (!zero_) {
    data.resize(end_ - begin_);
    for (const auto& p : pieces_)
      std::memcpy(data.data() + (p.offset - begin_), p.data.data(), p.data.size());
  }
  uint64_t b = begin_, len = end_ - begin_;
  pieces_.clear();
  begin_ = end_ = 0;
  sent_++;
  return sink_(b, len, std::move(data));
}

}  // namespace kvmcdp
