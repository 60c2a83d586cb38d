// The server's side of remote shipping: a store's journal grown by the
// exact bytes of the client's segment files (include/kvmcdp/remote_format.h).
//
// Nothing a client sends is trusted: bytes must continue exactly where
// the server's copy ends, a segment must start with a valid header of the
// store's stream, and every frame must be whole, pass its checksums and
// carry only seqs after the last one held, so a record is never stored
// twice or out of order.  A frame may skip seqs only if it holds the GAP
// record that announces the skip.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "base/fsutil.h"
#include "base/status.h"
#include "base/stream_writeback.h"

namespace kvmcdp::journal {

struct MirrorPosition {
  uint64_t segment = 0;   // the last segment held, 0 if none
  uint64_t size = 0;      // its size
  bool sealed = false;    // its .idx is held
  uint64_t last_seq = 0;  // the last record held (0: none)
  uint64_t last_ns = 0;
};

class JournalMirror {
 public:
  // Opens <store>/journal, creating it.  A torn tail of the last segment
  // (the server died while appending) is cut back to its last whole good
  // frame; a segment without a whole header is removed.  `stream_id` 0
  // accepts any stream.
  static Result<std::unique_ptr<JournalMirror>> open(const std::string& store_dir,
                                                     uint64_t stream_id);
  ~JournalMirror();

  // Where the journal ends: the client resumes from here.
  const MirrorPosition& position() const { return pos_; }
  // Appends `n` bytes at `offset` of `segment`: the end of the last
  // segment, or offset 0 of the next one.  Not durable until sync().
  Status append(uint64_t segment, uint64_t offset, const uint8_t* p, size_t n);
  // Stores the client's index of `segment` (the last one), whose final
  // size must be `size`.  Durable when it returns.
  Status seal(uint64_t segment, uint64_t size, const uint8_t* idx, size_t n);
  // Makes every appended byte durable.  The position's last_seq is then
  // the server's durable seq.
  Status sync();
  uint64_t durable_seq() const { return durable_seq_; }
  uint64_t durable_ns() const { return durable_ns_; }

 private:
  JournalMirror() = default;
  Status recover();
  Status append_frames(const uint8_t* p, size_t n);

  std::string store_;
  uint64_t stream_id_ = 0;
  MirrorPosition pos_;
  fsutil::Fd fd_;          // the last segment, open for appending
  StreamWriteback writeback_;  // fd_'s page cache
  bool dirty_ = false;
  bool new_file_ = false;  // the directory needs an fsync too
  uint64_t durable_seq_ = 0, durable_ns_ = 0;
};

}  // namespace kvmcdp::journal
