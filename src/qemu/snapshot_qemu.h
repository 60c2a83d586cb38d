// The QEMU side of the snapshot tree: qemu-img for offline work and for
// reading qcow2 headers, QMP for the running VM.  Kept apart from the tree
// logic so that snapshot_ops.cc reads as the patent's steps.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "qemu/qmp_client.h"
#include "base/status.h"
#include "qemu/subprocess.h"

namespace kvmcdp {

// What a qcow2 header says (qemu-img info --output=json, without the chain).
struct ImageInfo {
  std::string format;
  uint64_t virtual_size = 0;
  std::string backing;       // raw backing-file string, "" if none
  std::string backing_format;
  std::string full_backing;  // resolved path, "" if none
};
// `shared`: pass -U so a file the VM has open can be read.
Result<ImageInfo> image_info(const std::string& path, bool shared = true);
// True if a QEMU holds a write lock on the image (qemu-img info without -U
// cannot open it).
bool image_in_use(const std::string& path);

// qemu-img create -f qcow2 -b <backing, as written> -F <fmt> -u path size.
// -u: the backing is opened by the running VM; the size comes from the caller.
Status create_overlay(const std::string& path, const std::string& backing,
                      const std::string& backing_format, uint64_t size,
                      const std::string& options = "");
// For overlays written with scattered small writes (built nodes, restore
// --overlay): subclusters, so a 4 KiB write into a cluster the overlay
// does not have yet copies 4 KiB from the backing chain, not 64 KiB.
inline constexpr const char* kSmallWriteOverlay = "extended_l2=on,cluster_size=128k";
// A snapshot's new overlay, under a running guest: subclusters too.  Under
// fio's 4 KiB random writes the worst guest write during a `snapshot
// create` fell from 279-280 ms to 110-116 ms at p99 (medians 39-43 to
// 23-26 ms); metadata preallocation on top gained nothing.  The default
// cluster size: QEMU 7.2 aborted in block-stream (snapshot delete) into
// the running chain with 128 KiB overlays over 64 KiB ones.
inline constexpr const char* kSnapshotOverlay = "extended_l2=on";
// Safe-mode rebase (copies what differs): qemu-img rebase -b new -F fmt.
// new_backing "" makes the image standalone.
Status rebase_safe(const std::string& path, const std::string& new_backing,
                   const std::string& new_format);

// A block node of a running QEMU, matched by the image's file name.
struct QemuNode {
  std::string node_name;
  std::string driver;
  std::string filename;
  uint64_t virtual_size = 0;
};
Result<std::vector<QemuNode>> qemu_format_nodes(QmpClient& qmp);
std::optional<QemuNode> find_node_by_name(const std::vector<QemuNode>& nodes,
                                          const std::string& node_name);
std::optional<QemuNode> find_node_by_file(const std::vector<QemuNode>& nodes,
                                          const std::string& path);

// The "cache" options ({"direct", "no-flush"}) of the image file under
// `format_node` (its "file" child), so that an overlay added over that node
// is opened the same way.  An overlay opened through the page cache under a
// disk opened with O_DIRECT turns every guest write into dirty pages that
// the next snapshot's flush must write back while I/O is paused.  An empty
// object if the node has no file child QEMU shows.
Result<nlohmann::json> file_cache_options(QmpClient& qmp, const std::string& format_node);

// Runs block-stream (into `device`, down to `base_node`, or everything if
// empty), writing `backing_file` into the header; waits for the job to end.
Status stream_and_wait(QmpClient& qmp, const std::string& job_id, const std::string& device,
                       const std::string& base_node, const std::string& backing_file);

// What a QMP event says about block job `job_id` (`what` names it in
// messages, "block-stream"): nothing if it is another event or another
// job's; else how the job ended (an error if it failed or was cancelled).
std::optional<Status> block_job_end(const nlohmann::json& event, const std::string& job_id,
                                    const std::string& what);
// Waits for block job `job_id` to end: how it ended, or nothing if it did
// not within `timeout`.  Other events are consumed.
std::optional<Status> wait_block_job(QmpClient& qmp, const std::string& job_id,
                                     const std::string& what, Millis timeout);

}  // namespace kvmcdp
