#include "restore/node_overlay.h"

#include "qemu/snapshot_qemu.h"
#include "restore/nbd_delta_writer.h"
#include "restore/qcow2_overlay.h"

namespace kvmcdp {

const TreeNode* nearest_node(const Tree& t, const StoreView& view, uint64_t seq) {
  const journal::RecoverableRange* range = nullptr;
  for (const auto& rr : view.ranges)
    if (rr.first_seq <= seq && seq <= rr.last_seq) range = &rr;
  if (!range) return nullptr;
  const TreeNode* best = nullptr;
  for (const auto& n : t.nodes) {
    if (n.state != NodeState::kLive || !n.point || *n.point > seq || *n.point < range->first_seq)
      continue;
    if (!best || *n.point > *best->point) best = &n;
  }
  return best;
}

Result<OverlayWrite> write_overlay(StoreView& view, uint64_t from_seq, uint64_t to_seq,
                                   const std::string& backing, const std::string& backing_format,
                                   const std::string& path) {
  const uint64_t size = view.manifest.disk_size;
  OverlayWrite w;
  auto direct =
      write_qcow2_overlay(*view.reader, from_seq, to_seq, size, backing, backing_format, path);
  if (!direct) return direct.status();
  if (*direct) {
    w.delta = **direct;
    w.direct = true;
    return w;
  }
  if (auto s = create_overlay(path, backing, backing_format, size, kSmallWriteOverlay); !s)
    return s;
  auto via_qemu = write_delta_into(view, from_seq, to_seq, path);
  if (!via_qemu) return via_qemu.status();
  w.delta = *via_qemu;
  return w;
}

}  // namespace kvmcdp
