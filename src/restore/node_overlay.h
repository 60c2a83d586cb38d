// Standing on a built node: which node is nearest a point, and an overlay
// on a node holding only the journal after it.  Both the restore from a
// node (restore_delta.h) and kvmcdp build (build_tree.h) do exactly this.
#pragma once

#include <cstdint>
#include <string>

#include "base/status.h"
#include "store/journal_delta.h"
#include "store/point.h"
#include "tree/tree_model.h"

namespace kvmcdp {

// The live node nearest at or before `seq`, in the same recoverable range
// (across a gap the records between would not describe the disk); null
// when `seq` is in no recoverable range or no node qualifies.
const TreeNode* nearest_node(const Tree& t, const StoreView& view, uint64_t seq);

struct OverlayWrite {
  DeltaStats delta;
  bool direct = false;  // written by us (4 KiB clusters), not through qemu-nbd
};

// Writes `path` as a qcow2 overlay of `backing` (as the header names it;
// format `backing_format`) holding the journal's changes in
// (from_seq, to_seq].  Whole 4 KiB clusters (what guests write) are
// written by us in one pass (the bench's node, 370 MB of 4 KiB records:
// 1.5 s against 6.0 s through qemu-nbd); anything else goes through QEMU,
// which fills partial clusters from the backing chain.
Result<OverlayWrite> write_overlay(StoreView& view, uint64_t from_seq, uint64_t to_seq,
                                   const std::string& backing, const std::string& backing_format,
                                   const std::string& path);

}  // namespace kvmcdp
