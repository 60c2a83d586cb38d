// The block fingerprints (capture/block_fingerprints.h) of the disk as a
// store holds it at one seq: what a continued stream's resync is compared
// with (capture/resync_compare.h).
#pragma once

#include <cstdint>
#include <string>

#include "base/status.h"
#include "capture/block_fingerprints.h"

namespace kvmcdp {

// The image at `seq`, rebuilt by the restore (restore_engine.h) and hashed
// 64 KiB at a time.  kNotRecoverable if `seq` is not a recoverable point
// (the journal ends inside a resync, say).
Result<BlockFingerprints> fingerprint_image(const std::string& store_dir, uint64_t seq);

}  // namespace kvmcdp
