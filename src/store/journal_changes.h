// When a disk area was written: the journal's guest writes between two
// times, summed per interval (`kvmcdp points --changes`).  Enough to find
// the moment a file system area changed without restoring anything.
#pragma once

#include <cstdint>
#include <vector>

#include "base/status.h"
#include "store/journal_reader.h"

namespace kvmcdp::journal {

struct ChangeBucket {
  uint64_t start_ns = 0, end_ns = 0;  // [start, end)
  uint64_t bytes = 0;                 // of the area, written in it
  uint64_t records = 0;
};

struct ChangeHistogram {
  std::vector<ChangeBucket> buckets;
  uint64_t bytes = 0, records = 0;
  uint64_t first_ns = 0, last_ns = 0;  // the first and last write counted
  uint64_t gaps = 0;                   // gap records in the interval
};

// Guest writes, write-zeroes and discards with from_ns <= time <= to_ns
// that touch [offset, offset + length), in `buckets` equal intervals.
// Resent data (a resync after a gap) is not a write of the guest's at
// that time and is left out; the gaps are counted.  Decompresses the
// frames from the last record at or before from_ns to the first after to_ns.
Result<ChangeHistogram> changes_between(JournalReader& r, uint64_t from_ns, uint64_t to_ns,
                                        uint64_t offset, uint64_t length, size_t buckets);

}  // namespace kvmcdp::journal
