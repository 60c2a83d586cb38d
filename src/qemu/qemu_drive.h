// What kvmcdp asks of a running QEMU about one drive: which block node a
// name refers to, and the state of the cdp filter above it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "qemu/qmp_client.h"
#include "base/status.h"

namespace kvmcdp {

// `name` may be a node-name, a -drive id or a device's qdev id; the result
// is the node-name the device's writes reach first (the top of its chain).
Result<std::string> resolve_drive(QmpClient& qmp, const std::string& name);

// The same names, down to the image's own format node: below any filter on
// top of the drive (the cdp filter of `protect`, throttle, copy-on-read).
// A snapshot switches that node, so the filters stay above the new overlay.
Result<std::string> resolve_image_node(QmpClient& qmp, const std::string& name);

struct CdpInfo {
  std::string node_name;
  std::string child;
  bool connected = false;
  uint64_t seq = 0;
  uint64_t acked_seq = 0;
  uint64_t queued_bytes = 0;
  bool gap = false;
  uint64_t dirty_bytes = 0;
  uint64_t stream_id = 0;
};

// Every cdp filter QEMU has.
Result<std::vector<CdpInfo>> list_cdp(QmpClient& qmp);
// The filter named `filter_node`, if QEMU has it.
Result<std::optional<CdpInfo>> query_cdp(QmpClient& qmp, const std::string& filter_node);
// Whether `node` carries the stream's persistent dirty bitmap
// (cdp-<stream id in hex>, kept by the filter) in a usable state: a filter
// continuing the stream then resends only what it marks.
Result<bool> has_stream_bitmap(QmpClient& qmp, const std::string& node, uint64_t stream_id);

}  // namespace kvmcdp
