// Reading one segment file: scanning it frame by frame (to rebuild its
// index, to recover a torn tail, to verify it) and reading one frame.
// Nothing read is trusted; damage is reported with the file, the byte
// offset, the reason and how many bytes after it cannot be read.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "journal/journal_codec.h"
#include "base/status.h"

namespace kvmcdp::journal {

struct Damage {
  std::string path;        // the segment (or index) file
  uint64_t offset = 0;     // byte offset of the first bad byte range
  std::string reason;      // "frame payload checksum mismatch", ...
  uint64_t bytes_dropped = 0;  // bytes from offset to the end of the file
  std::string to_string() const;
};

struct SegmentScan {
  SegmentHeader header;
  std::vector<FrameInfo> frames;  // the good frames, in file order
  uint64_t good_end = 0;          // offset just past the last good frame
  uint64_t file_size = 0;
  std::optional<Damage> damage;   // the first bad byte, if any
};

enum class ScanDepth {
  kChecksums,   // frame headers and payload CRCs (index rebuild, recovery)
  kDecompress,  // also decompress and check every record (verify)
};

// Scans `path`, whose name says it is segment `number`.  A file with an
// unreadable or missing header has no frames and damage at offset 0.  An
// intact header with an unknown version is an error, not damage: it is a
// newer kvmcdp's file and must never be truncated.
// With kDecompress, `on_record` (if set) sees every record of every good
// frame in order; an error it returns is damage at that frame.
using RecordCheck = std::function<std::optional<std::string>(const RecordView&)>;
Result<SegmentScan> scan_segment(const std::string& path, uint64_t number,
                                 ScanDepth depth,
                                 const RecordCheck& on_record = nullptr);

// Reads and decodes one frame at `f` of an open segment file.  `payload`
// is scratch space reused across calls; `raw` receives the records.
// Damage comes back as ErrorKind::kDamaged naming file and offset.
Status read_frame(int fd, const std::string& path, const FrameInfo& f,
                  std::vector<uint8_t>* payload, std::vector<uint8_t>* raw);

}  // namespace kvmcdp::journal
