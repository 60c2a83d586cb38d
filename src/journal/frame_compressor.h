// Compresses the journal writer's frames on threads of its own and hands
// each, in order, to a sink on those threads (the writer's segment write),
// so that zstd (most of protect's CPU) and the writes run beside the
// thread that reads the filter's stream instead of inside it.
//
//   FrameCompressor c(level, zstd_workers, threads, max_in_flight, sink);
//   raw = c.submit(std::move(raw), header);   // hands a full frame over
//   c.drain();                                // waits until all are sunk
//
// With more than one thread, frames are compressed side by side and still
// reach the sink one at a time, in submission order: zstd at level 1 is
// slower than the stream and the disk, so it gets the cores.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <sys/uio.h>
#include <vector>

#include "journal/journal_bytebuf.h"
#include "journal/journal_codec.h"
#include "base/status.h"

namespace kvmcdp::journal {

class FrameCompressor {
 public:
  // Called on a compression thread, one frame at a time, in submission order, with the
  // frame's header (as filled in) and its bytes (encoded header + payload,
  // valid during the call) gathered in `iovcnt` pieces: a stored frame's
  // data is not copied again, it is written from the submitted buffer.  An
  // error stops the pipeline: later frames are neither compressed nor
  // sunk, and drain() returns the error.
  using Sink = std::function<Status(const FrameHeader&, const struct iovec* iov, size_t iovcnt)>;
  // `max_in_flight`: frames submitted but not yet sunk; submit() waits
  // beyond it, which bounds memory when the caller outruns zstd or the disk.
  // `threads`: compression threads (at least 1), run at `nice` (0: the
  // caller's priority; protect lowers it, see run()).
  FrameCompressor(int level, int zstd_workers, size_t threads, size_t max_in_flight, Sink sink,
                  int nice = 0);
  ~FrameCompressor();  // discards what was not drained
  FrameCompressor(const FrameCompressor&) = delete;
  FrameCompressor& operator=(const FrameCompressor&) = delete;

  // Queues `raw` (serialized records) to become a frame with the header
  // fields of `h` (payload_len, raw_len and payload_crc are filled in).
  // Returns an empty buffer to fill next, reusing one already compressed.
  ByteBuf submit(ByteBuf&& raw, const FrameHeader& h);

  // Waits until every submitted frame has been sunk (or skipped after an
  // error).  Returns the first error of compression or sink, also on every
  // later call: the pipeline does not recover.
  Status drain();

  // Frames submitted so far, a count to give wait_sunk().
  uint64_t submitted();
  // Waits until the first `n` frames submitted have been sunk (or skipped
  // after an error), while later ones may still be coming: what a commit
  // running beside the caller needs.  Returns the pipeline's first error.
  Status wait_sunk(uint64_t n);

  // The source of the records is ahead of the journal (e.g. the receiver
  // finds more waiting on its socket than it has read): the stream's
  // sender, and so the guest, waits for us, so CPU spent on a frame that
  // compresses poorly is taken from the guest.  Such frames are then
  // stored, as when frames queue for the threads.
  void set_source_ahead(bool ahead) { source_ahead_.store(ahead, std::memory_order_relaxed); }

 private:
  void run();

  const int level_, zstd_workers_, nice_;
  const size_t max_in_flight_;
  const Sink sink_;
  std::mutex mu_;
  // One condition for all: a frame queued, a frame sunk (the next one's
  // turn, or room to submit, or drained), or stop.  Few threads wait.
  std::condition_variable cv_;
  struct Job {
    ByteBuf raw;
    FrameHeader h;
  };
  std::deque<Job> jobs_;  // queued, in submission order
  uint64_t submitted_ = 0;  // frames ever submitted
  uint64_t taken_ = 0;    // tickets handed to threads, in submission order
  uint64_t sunk_ = 0;     // tickets done with the sink
  size_t undone_ = 0;     // queued or being worked on
  std::vector<ByteBuf> free_raw_;
  Status error_ = Status::ok();
  bool stop_ = false;
  std::atomic<bool> source_ahead_{false};
  std::vector<std::thread> threads_;  // last: start once the above exists
};

}  // namespace kvmcdp::journal
