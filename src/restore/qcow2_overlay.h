// Writing a qcow2 overlay ourselves, in one sequential pass, when every
// changed range is whole 4 KiB clusters (what guests write).  Through
// qemu-nbd, QEMU allocates each scattered cluster on its own and the file
// ends up with one extent per write, which its flush then pays for; here
// the data clusters are packed one after the other and the metadata
// follows them: the cost is the bytes, not the number of writes.
//
// The image is qcow2 version 3 (QEMU's spec, docs/interop/qcow2.txt):
//   cluster 0          header, backing format extension, backing file name
//   clusters 1..D      the changed data, in the order the journal gives it
//   then               L2 tables (one per 2 MiB region touched), the L1
//                      table, the refcount table, the refcount blocks
// Every cluster has refcount 1 (16-bit refcounts); data clusters are
// marked COPIED; ranges that read as zeroes are zero clusters (bit 0 of
// the L2 entry) with no data.  Readers are QEMU's qcow2 driver, which
// sees an ordinary image (qemu-img check finds nothing).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "store/journal_delta.h"
#include "base/status.h"

namespace kvmcdp {

inline constexpr uint64_t kQcow2OverlayCluster = 4096;

// Writes `path` (created, or truncated) as an overlay of `backing` (as
// the header names it: absolute, or relative to `path`'s directory; its
// format `backing_format`) holding the journal's changes in
// (from_seq, to_seq], and makes it durable.  nullopt, with nothing useful
// left in `path`, when a range is not whole clusters: the caller then
// takes the general path.
Result<std::optional<DeltaStats>> write_qcow2_overlay(journal::JournalReader& reader, uint64_t from_seq,
                                       uint64_t to_seq, uint64_t disk_size,
                                       const std::string& backing,
                                       const std::string& backing_format,
                                       const std::string& path);

}  // namespace kvmcdp
