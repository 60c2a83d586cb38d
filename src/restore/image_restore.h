// A whole image of one point, in a format, at a place: the one way
// `restore` and `recover` write it.
#pragma once

#include <cstdint>
#include <string>

#include "base/status.h"
#include "restore/output_target.h"
#include "restore/restore_delta.h"
#include "restore/restore_engine.h"
#include "store/store_view.h"

namespace kvmcdp {

// Writes the disk as of `seq` to `target` as "raw" (straight to its place:
// a temp renamed over the target, the device itself, or a temp streamed
// to stdout) or "qcow2" (raw to a scratch file beside the target first,
// then QEMU's own qemu-img writes the qcow2, so no hand-written qcow2 ever
// exists).  Nothing appears at the target unless it is complete and
// durable.  A seq past damage in the journal is kNotRecoverable.
Result<NearestRestore> restore_image(StoreView& view, uint64_t seq, const OutputTarget& target,
                                     const std::string& format,
                                     const RestoreProgressFn& progress = nullptr,
                                     NodeUse use = NodeUse::kIfCheaper);

// How a restore of `seq` that failed with `s` reports it: damage in the
// journal before the point makes the point kNotRecoverable; damage in the
// base stays damage.
Status restore_failure(const Status& s, uint64_t seq);

}  // namespace kvmcdp
