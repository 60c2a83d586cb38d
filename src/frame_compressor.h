// Compresses the journal writer's frames on a thread of its own, so that
// zstd (most of protect's CPU) runs beside the thread that reads the
// filter's stream instead of inside it.
//
//   FrameCompressor c(level, workers, max_in_flight);
//   raw = c.submit(std::move(raw), header);   // hands a full frame over
//   c.drain(fn);                              // waits; fn(frame) in order
//
// Frames come out of drain() in the order they were submitted.  One thread
// is enough: a frame compresses in a few ms and the caller cannot fill
// frames faster than one core compresses them (it was doing both before).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "journal_bytebuf.h"
#include "journal_codec.h"
#include "status.h"

namespace kvmcdp::journal {

class FrameCompressor {
 public:
  // `max_in_flight`: frames submitted but not yet compressed; submit()
  // waits beyond it, which bounds memory when the caller outruns zstd.
  FrameCompressor(int level, int zstd_workers, size_t max_in_flight);
  ~FrameCompressor();  // discards what was not drained
  FrameCompressor(const FrameCompressor&) = delete;
  FrameCompressor& operator=(const FrameCompressor&) = delete;

  // Queues `raw` (serialized records) to become a frame with the header
  // fields of `h` (payload_len, raw_len and payload_crc are filled in).
  // Returns an empty buffer to fill next, reusing one already compressed.
  ByteBuf submit(ByteBuf&& raw, const FrameHeader& h);

  // Waits until every submitted frame is compressed, then calls `fn` for
  // each in submission order with the header (as filled in) and the frame
  // bytes (encoded header + payload), valid during the call.  If a frame
  // failed to compress, returns its error and calls `fn` for none.
  using FrameFn = std::function<void(const FrameHeader&, const uint8_t*, size_t)>;
  Status drain(const FrameFn& fn);

 private:
  struct Job {
    ByteBuf raw;
    FrameHeader h;
    ByteBuf out;  // encoded header + payload
    std::string error;
  };
  void run();
  void compress(Job& j);

  void* cctx_;  // ZSTD_CCtx, used by the worker thread only
  const size_t max_in_flight_;
  std::mutex mu_;
  std::condition_variable work_cv_;  // a job was queued, or stop
  std::condition_variable done_cv_;  // a job was compressed
  std::deque<std::unique_ptr<Job>> jobs_;  // submission order
  size_t next_ = 0;    // jobs_[next_] is the next to compress
  size_t undone_ = 0;  // jobs queued or being compressed
  std::vector<ByteBuf> free_raw_;
  std::vector<std::unique_ptr<Job>> free_jobs_;  // keep their out buffers
  bool stop_ = false;
  std::thread thread_;  // last: starts once everything above exists
};

}  // namespace kvmcdp::journal
