// What changed between two points of a journal, and restoring a point
// from a materialised image (a built node of the snapshot tree) plus only
// the journal after it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "store/journal_reader.h"
#include "restore/output_target.h"
#include "store/point.h"
#include "restore/restore_engine.h"
#include "store/journal_delta.h"
#include "base/status.h"

namespace kvmcdp {

// The restore decision: if the store has a built tree (DIR/tree) with a
// live node whose point is <= target_seq and in the same recoverable range,
// and (with kIfCheaper) its chain's allocated bytes are fewer than the
// journal's compressed bytes up to it, the nearest such node's chain is
// converted to raw with qemu-img and only the journal after it is applied;
// otherwise the full restore().  A full restore writes the same image and
// reads the base in big sequential blocks, so the node only pays off when the
// journal before it is big (a long history on a small disk).  `from` is
// set to the node used ("" for base + journal).
enum class NodeUse { kIfCheaper, kAlways };
struct NearestRestore {
  RestoreStats stats;
  std::string from_node;
  uint64_t from_seq = 0;
};
// `view` is the caller's open store (opening the journal again would
// scan its open segment again).  Writes into `out` (sized to the disk),
// which the caller commits.
Result<NearestRestore> restore_nearest(StoreView& view, uint64_t target_seq, ImageOutput& out,
                                       const RestoreProgressFn& progress = nullptr,
                                       NodeUse use = NodeUse::kIfCheaper);
// The same to a file at `out_path`, replaced if there.
Result<NearestRestore> restore_nearest(const std::string& store_dir, uint64_t target_seq,
                                       const std::string& out_path,
                                       const RestoreProgressFn& progress = nullptr,
                                       NodeUse use = NodeUse::kIfCheaper);

// The point as a qcow2 overlay on the nearest built node, holding only
// the journal after that node: its cost grows with the changes since the
// node, not with the disk.  The image reads through to the node by an
// absolute backing path, so it lives only as long as that node does.
// kNotFound if no built node is at or before the point.  `out_path` (the
// caller's temp file, which it renames into place) is written and made
// durable.
Result<NearestRestore> restore_overlay(StoreView& view, uint64_t target_seq,
                                       const std::string& out_path);

}  // namespace kvmcdp
