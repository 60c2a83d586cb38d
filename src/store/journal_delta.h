// What changed between two points of a journal: the newest-first walk
// that every reader of "the disk at seq S" shares (the full restore, the
// restore from a built node, the qcow2 overlay writer, the NBD writer).
#pragma once

#include <cstdint>
#include <functional>

#include "base/status.h"
#include "journal/extent_map.h"
#include "store/journal_reader.h"

namespace kvmcdp {

struct DeltaStats {
  uint64_t frames_read = 0;
  uint64_t frame_bytes = 0;  // compressed journal bytes read (frame headers included)
  uint64_t data_bytes = 0;   // newest written bytes in the range
  uint64_t zero_bytes = 0;   // newest write-zeroes/discard bytes in the range
};

// Called once for each byte range whose newest version in (from_seq,
// to_seq] is known: `data` points at its bytes, or is null for a range
// that reads as zeroes (write-zeroes, discard).  Ranges come newest record
// first and never overlap.  `data` lives only for the call.
using DeltaFn = std::function<Status(uint64_t offset, uint64_t length, const uint8_t* data)>;

// Called after each frame: frames walked so far, and how many at most.
using DeltaProgressFn = std::function<void(size_t done, size_t total)>;

// Walks only the frames that hold records in (from_seq, to_seq], newest
// first, and stops early once every byte of the disk is known.  With
// `covered`, the ranges handed out are left in it (for the caller to fill
// the rest from an image below the journal).
Result<DeltaStats> journal_delta(journal::JournalReader& r, uint64_t from_seq, uint64_t to_seq,
                                 uint64_t disk_size, const DeltaFn& fn,
                                 ExtentMap* covered = nullptr,
                                 const DeltaProgressFn& progress = nullptr);

// Where a range's bytes lie in the journal: frame `frame` (an index into
// r.frames()) decompressed, `raw_offset` bytes in.  For an index that
// reads them again later (export/point_index.h).
struct DeltaSource {
  size_t frame = 0;
  size_t raw_offset = 0;
};
using DeltaAtFn = std::function<Status(uint64_t offset, uint64_t length, const uint8_t* data,
                                       const DeltaSource& where)>;
// The same walk, also telling where each data range lies.
Result<DeltaStats> journal_delta_at(journal::JournalReader& r, uint64_t from_seq,
                                    uint64_t to_seq, uint64_t disk_size, const DeltaAtFn& fn,
                                    ExtentMap* covered = nullptr,
                                    const DeltaProgressFn& progress = nullptr);

}  // namespace kvmcdp
