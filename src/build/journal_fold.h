// Folding the journal into the base (kvmcdp prune): once no kept point is
// older than seq F, the segments holding only records <= F are history no
// restore needs.  A fold writes a new base file, the disk exactly as of F,
// switches the manifest to it (folded_seq = F), then deletes those
// segments and the old base.
//
// Rules that keep every reader and other writer safe:
//  - only whole sealed segments (with their index) go, never the last one
//    (a running protect appends to it), and no segment is ever rewritten:
//    a mirror of the journal only ever sees files appear or disappear;
//  - the base is a new file, never rewritten in place, and the manifest
//    switch (one atomic rename) is the commit point: before it readers use
//    the old base and every segment, after it the new base and skip
//    records <= F, which may remain in a segment that straddles F;
//  - <store>/fold.json, written before the first step, lets repair_fold()
//    roll back (before the switch) or finish (after it) a killed fold.
// The caller holds the tree lock: once the base is complete the tree's
// writers (build, prune) are the only ones that write the manifest.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tree/snapshot_ops.h"
#include "base/status.h"

namespace kvmcdp {

struct FoldPlan {
  uint64_t seq = 0, time_ns = 0;   // the fold point F and its record's time
  std::vector<uint64_t> segments;  // sealed segments with every record <= F, oldest first
  uint64_t segment_bytes = 0;      // their .seg and .idx bytes
  uint64_t journal_bytes = 0;      // every segment's .seg and .idx bytes now
  size_t journal_segments = 0;     // segments now
  std::string old_base, new_base;  // file names in the store
  bool empty() const { return segments.empty(); }
};

std::string fold_intent_path(const std::string& store_dir);  // <store>/fold.json

// What folding through `seq` (a recoverable point) would remove.  An empty
// plan when no whole sealed segment lies at or before it, or the base is
// already at or past it: then folding would only rewrite the base.
Result<FoldPlan> plan_fold(const std::string& store_dir, uint64_t seq, uint64_t time_ns);

// Carries out a plan (crash points fold:1..5, see the .cc).
Status fold_journal(const std::string& store_dir, const FoldPlan& plan, OpLog* log);

// Finishes or rolls back an interrupted fold; ok when there is none.
Status repair_fold(const std::string& store_dir, OpLog* log);

}  // namespace kvmcdp
