// The base copy: a full image of the disk read while the filter already
// captures.  The copy is fuzzy (blocks are read at different moments), but
// every write after the filter's hello is in the journal, so base plus the
// records up to any seq at or after the copy's end is exact.
#pragma once

#include <cstdint>
#include <string>

#include "qemu/qmp_client.h"
#include "base/status.h"

namespace kvmcdp {

struct BaseCopyResult {
  uint64_t complete_seq = 0;   // base + records <= this = the disk
  uint64_t complete_time_ns = 0;
};

// Copies `filter_node` into a sparse raw file `out_path` (written as
// out_path.tmp and renamed): through a read-only export on an NBD server
// kvmcdp starts in this QEMU, or, when QEMU's one NBD server is taken, with
// a copy job inside QEMU.  A server kvmcdp did not start is left alone.
Result<BaseCopyResult> take_base_copy(QmpClient& qmp, const std::string& filter_node,
                                      const std::string& out_path, bool show_progress);

// Mirror capture: the same copy of `node` through QEMU's NBD server that
// kvmcdp started already on `socket` (mirror_capture.h); the caller knows
// from which seq base plus journal is exact.
Status copy_base_through_server(QmpClient& qmp, const std::string& node,
                                const std::string& socket, const std::string& out_path,
                                bool show_progress);

}  // namespace kvmcdp
