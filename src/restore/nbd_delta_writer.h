// Writing what changed between two points into an existing qcow2 image
// through QEMU's own block layer (qemu-nbd): the general path for changes
// that are not whole 4 KiB clusters, where QEMU fills partial clusters
// from the image's backing chain.
#pragma once

#include <cstdint>
#include <string>

#include "base/status.h"
#include "store/journal_delta.h"
#include "store/point.h"

namespace kvmcdp {

// Writes what changed in (from_seq, to_seq] into the existing qcow2
// overlay `path` through qemu-nbd (zero ranges as qcow2 zero clusters).
Result<DeltaStats> write_delta_into(StoreView& view, uint64_t from_seq, uint64_t to_seq,
                                    const std::string& path);

}  // namespace kvmcdp
