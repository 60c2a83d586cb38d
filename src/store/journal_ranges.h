// What a journal can restore to.  A point (a seq) is recoverable when the
// base image plus every record up to it reproduces the disk as it was:
// from the seq at which the base copy completed up to the record before
// the first kGap, then again from the next kResyncDone to the next gap,
// and so on, cut at the first damage.  Marks are named points.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "store/journal_reader.h"
#include "base/status.h"

namespace kvmcdp::journal {

struct RecoverableRange {
  uint64_t first_seq = 0, first_time_ns = 0;
  uint64_t last_seq = 0, last_time_ns = 0;
  bool operator==(const RecoverableRange&) const = default;
};

struct Mark {
  std::string name;
  uint64_t seq = 0, time_ns = 0;
};

struct Point {
  uint64_t seq = 0, time_ns = 0;
};

// `base_seq`/`base_time_ns`: the manifest's base_complete_seq/_time_ns.
// Decompresses only frames that hold gap or resync records, or base_seq.
Result<std::vector<RecoverableRange>> recoverable_ranges(JournalReader& r,
                                                         uint64_t base_seq,
                                                         uint64_t base_time_ns);

// Every kMark record, in seq order.
Result<std::vector<Mark>> list_marks(JournalReader& r);

// The last record with time_ns <= t_ns (for --at), if any.
Result<std::optional<Point>> last_record_at_or_before(JournalReader& r,
                                                      uint64_t t_ns);

// ok if `seq` lies in one of `ranges`; else kNotRecoverable with a
// message naming the nearest recoverable points on either side.
Status check_recoverable(const std::vector<RecoverableRange>& ranges,
                         uint64_t seq);

}  // namespace kvmcdp::journal
