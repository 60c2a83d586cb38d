// The compare resync: when protect continues a stream whose filter was
// gone, the new filter resends the whole disk (WRITE records with flag
// RESYNC between a GAP and a RESYNC_DONE).  Most of it is what the
// journal's latest image holds already; journaling it again would grow the
// journal by the disk's data on every restart.  ResyncCompare holds the
// fingerprints of that image (block_fingerprints.h) and trims each resync
// record to the blocks that differ, before it is journaled.
//
// A resync record whose blocks all match is still journaled, since seqs
// are consecutive, but as a WRITE of length 0 (flag RESYNC, its offset
// kept): a record that writes nothing, which every reader already takes
// as such (kvmcdp-journal(5), "Records").
//
// The map describes the journal's image, so it must follow the journal:
//  - a guest write, write-zeroes or discard makes every block it touches
//    unknown (it is journaled as it is; a later resync of the block then
//    carries the block's new content, which the map cannot vouch for);
//  - the blocks a trimmed record still journals become unknown too (a
//    record resent after a reconnect must not be dropped because the map
//    would now match it);
//  - a second GAP means records were lost, i.e. writes the journal never
//    saw: the map is dropped and the rest of the resync journaled whole;
//  - RESYNC_DONE ends the compare.
// Only a known block whose resent bytes hash equal is left out, so what
// replaying the journal gives at RESYNC_DONE is what the untrimmed stream
// would give.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <utility>

#include "capture/block_fingerprints.h"
#include "kvmcdp/wire_format.h"

namespace kvmcdp {

struct ResyncTotals {
  uint64_t resent_bytes = 0;     // RESYNC data the filter sent
  uint64_t journaled_bytes = 0;  // of it, what differed and was journaled
  bool completed = false;        // ended by RESYNC_DONE, not by lost records
};

class ResyncCompare {
 public:
  using DoneFn = std::function<void(const ResyncTotals&)>;
  // `map`: the journal's image at the seq the continuation follows.
  // `done` is called once, when the compare ends.
  ResyncCompare(BlockFingerprints map, DoneFn done)
      : map_(std::move(map)), done_(std::move(done)) {}

  bool comparing() const { return state_ != State::kOver; }
  const ResyncTotals& totals() const { return totals_; }
  const BlockFingerprints& map() const { return map_; }

  // Sees record `h` (payload `*payload`) before it is journaled.  A
  // resync WRITE may come back trimmed: `h` offset, length and
  // payload_len and `*payload` then describe the part to journal.
  void on_record(wire::MsgHeader* h, const uint8_t** payload);

 private:
  enum class State { kBeforeGap, kComparing, kOver };
  void trim(wire::MsgHeader* h, const uint8_t** payload);
  void end(bool completed);

  BlockFingerprints map_;
  DoneFn done_;
  State state_ = State::kBeforeGap;
  uint64_t gap_seq_ = 0;  // the GAP that opened the resync
  ResyncTotals totals_;
};

}  // namespace kvmcdp
