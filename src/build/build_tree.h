// kvmcdp build: journal points materialised as nodes of a snapshot tree
// kept in the store (DIR/tree, the layout of man/kvmcdp-tree.5).  The root
// is the disk at the base-complete seq; each built node is a qcow2 overlay
// on the nearest node before it holding only what changed in between.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "store/point.h"
#include "tree/snapshot_ops.h"
#include "base/status.h"

namespace kvmcdp {

struct BuiltNode {
  std::string name;
  uint64_t seq = 0;
  std::string parent;
  uint64_t data_bytes = 0, zero_bytes = 0;  // written into the overlay
  bool existed = false;                     // already built: nothing done
  bool direct = false;  // written by us (4 KiB clusters), not through qemu-nbd
};

// Builds one node per seq (each recoverable), creating the tree and its
// root first if needed.  The caller holds the tree lock.  A node's file is
// written under a temp name and the tree gains the node in one atomic
// write of tree.json, so an interrupted build leaves no half node.
Result<std::vector<BuiltNode>> build_points(const std::string& store_dir,
                                            std::vector<uint64_t> seqs, OpLog* log);

}  // namespace kvmcdp
