// Joins byte ranges that touch into one, so that a burst of small adjacent
// writes becomes one request to the image instead of one each.  On a
// restore or build through qemu-nbd each request costs a round trip and a
// qcow2 allocation, whatever its size.
//
//   RangeCoalescer c(1 << 20, sink);
//   c.add(off, len, data);  // data == nullptr: a range of zeroes
//   ...
//   c.flush();
//
// Ranges must not overlap (journal_delta's never do) and may come in any
// order; a range joins the pending one if it ends where that begins or
// begins where that ends (a newest-first walk meets a sequential burst
// backwards), is of the same kind (data or zeroes), and the sum stays
// within `max_bytes`.  Anything else sends the pending range on first.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "base/status.h"

namespace kvmcdp {

class RangeCoalescer {
 public:
  // `data` is empty for a range of zeroes; the sink owns it.
  using Sink = std::function<Status(uint64_t offset, uint64_t length, std::vector<uint8_t> data)>;

  RangeCoalescer(uint64_t max_bytes, Sink sink) : max_(max_bytes), sink_(std::move(sink)) {}

  // `data` (length bytes, or nullptr for zeroes) is copied: it need only
  // live for the call.
  Status add(uint64_t offset, uint64_t length, const uint8_t* data);
  // Sends the pending range, if any.
  Status flush();

  uint64_t sent() const { return sent_; }  // ranges handed to the sink

 private:
  struct Piece {
    uint64_t offset;
    std::vector<uint8_t> data;
  };
  uint64_t max_;
  Sink sink_;
  bool zero_ = false;
  uint64_t begin_ = 0, end_ = 0;  // pending range; empty if begin_ == end_
  std::vector<Piece> pieces_;     // its data pieces, in arrival order
  uint64_t sent_ = 0;
};

}  // namespace kvmcdp
