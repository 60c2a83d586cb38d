// Where the next frame of a segment lies: the one place that knows how
// frames follow each other (a header, then its payload) and what a frame
// cut short or with a bad header is.  The segment reader, the backup
// server's mirror and the shipper each get their bytes their own way (a
// file read, a network message, a file being written) and ask this.
#pragma once

#include <cstdint>
#include <string>

#include "journal/journal_codec.h"

namespace kvmcdp::journal {

enum class FrameProblem {
  kNone,
  kHeaderCut,   // fewer than a frame header's bytes are there
  kBadHeader,   // the header does not decode (magic, sizes, its own checksum)
  kPayloadCut,  // the header announces more payload than is there
};

struct FrameCheck {
  FrameProblem problem = FrameProblem::kNone;
  std::string detail;     // what is wrong, for a message
  FrameHeader header;     // when problem is kNone
  uint64_t length = 0;    // header plus payload, when problem is kNone
};

// `avail` is how many bytes there are from the frame's start to the end
// of what can be read; `header` points at the first kFrameHeaderSize of
// them (it is not read when avail < kFrameHeaderSize, so may be null).
FrameCheck check_frame(const uint8_t* header, uint64_t avail);

}  // namespace kvmcdp::journal
