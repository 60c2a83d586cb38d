#include "journal/frame_cursor.h"

#include <cassert>

namespace kvmcdp::journal {

FrameCheck check_frame(const uint8_t* header, uint64_t avail) {
  FrameCheck c;
  if (avail < kFrameHeaderSize) {
    c.problem = FrameProblem::kHeaderCut;
    c.detail = "truncated frame header";
    return c;
  }
  if (auto e = decode_frame_header(header, &c.header)) {
    c.problem = FrameProblem::kBadHeader;
    c.detail = *e;
    return c;
  }
  // Compared without overflow: avail - header size cannot wrap here.
  if (avail - kFrameHeaderSize < c.header.payload_len) {
    c.problem = FrameProblem::kPayloadCut;
    c.detail = "truncated frame payload";
    return c;
  }
  c.length = kFrameHeaderSize + uint64_t(c.header.payload_len);
  assert(c.length <= avail);
  return c;
}

}  // namespace kvmcdp::journal
