#include "capture/resync_compare.h"

#include <algorithm>

namespace kvmcdp {

using wire::MsgType;

void ResyncCompare::on_record(wire::MsgHeader* h, const uint8_t** payload) {
  if (state_ == State::kOver) return;
  switch (static_cast<MsgType>(h->type)) {
    case MsgType::kGap:
      // The continuation's own GAP opens the resync; the same GAP resent
      // after a reconnect changes nothing; any other one says records
      // were lost.
      if (state_ == State::kBeforeGap) {
        state_ = State::kComparing;
        gap_seq_ = h->seq;
      } else if (h->seq != gap_seq_) {
        end(false);
      }
      return;
    case MsgType::kResyncDone:
      end(state_ == State::kComparing);
      return;
    case MsgType::kWrite:
      if ((h->flags & wire::kFlagResync) && state_ == State::kComparing) {
        trim(h, payload);
        return;
      }
      map_.forget(h->offset, h->length);
      return;
    case MsgType::kWriteZeroes:
    case MsgType::kDiscard:
      map_.forget(h->offset, h->length);
      return;
    default:
      return;
  }
}

void ResyncCompare::trim(wire::MsgHeader* h, const uint8_t** payload) {
  constexpr uint64_t kBlock = BlockFingerprints::kBlockSize;
  const uint64_t off = h->offset, len = h->length, size = map_.disk_size();
  totals_.resent_bytes += len;
  // The filter resends whole 64 KiB blocks; anything else (or a record
  // past the disk, which the journal reports as damage) is kept whole.
  bool blockwise = off % kBlock == 0 && off <= size && len <= size - off && len == h->payload_len;
  std::optional<uint64_t> first, last;  // differing blocks, relative to off
  for (uint64_t at = 0; blockwise && at < len; at += kBlock) {
    uint64_t n = std::min(kBlock, len - at);
    if (!map_.matches((off + at) / kBlock, *payload + at, size_t(n))) {
      if (!first) first = at;
      last = at;
    }
  }
  if (!blockwise) {
    first = 0;
    last = len ? len - 1 : 0;
  }
  if (!first) {
    // Nothing differs: a WRITE of length 0 keeps the seq.
    h->length = 0;
    h->payload_len = 0;
    return;
  }
  uint64_t end = blockwise ? std::min(len, *last + kBlock) : len;
  h->offset = off + *first;
  h->length = end - *first;
  h->payload_len = uint32_t(h->length);
  *payload += *first;
  totals_.journaled_bytes += h->length;
  map_.forget(h->offset, h->length);
}

void ResyncCompare::end(bool completed) {
  state_ = State::kOver;
  totals_.completed = completed;
  map_ = BlockFingerprints();  // its memory is not needed any more
  if (done_) done_(totals_);
}

}  // namespace kvmcdp
