// Where a store's segments are and what frames each one holds: from its
// .idx sidecar when that agrees with the segment, else by scanning it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "journal/segment_reader.h"
#include "base/status.h"

namespace kvmcdp::journal {

std::string journal_dir(const std::string& store_dir);  // <store>/journal
std::string segment_path(const std::string& store_dir, uint64_t number);
std::string index_path(const std::string& store_dir, uint64_t number);

// Segment numbers present, ascending.  Files whose names do not parse
// exactly (temp files, stray copies) are ignored.
Result<std::vector<uint64_t>> list_segments(const std::string& store_dir);

struct SegmentFrames {
  uint64_t number = 0;
  SegmentHeader header;
  std::vector<FrameInfo> frames;
  uint64_t file_size = 0;
  bool from_index = false;              // false: the segment was scanned
  std::optional<std::string> index_problem;  // why the .idx was not used
  std::optional<Damage> damage;         // from a scan only
};

// Loads the frame list of one segment.  A missing index is normal for the
// open (last) segment; a present but wrong one is noted in index_problem.
Result<SegmentFrames> load_segment(const std::string& store_dir,
                                   uint64_t number);

}  // namespace kvmcdp::journal
