// Reads and decompresses journal frames on a thread of its own, a few
// frames ahead of the restore engine, so that decompression overlaps with
// the engine's writes to the output.
//
//   FramePrefetcher pf(reader, {7, 6, 5, ...});
//   while (auto* f = pf.next()) { ...f->records...; pf.release(f); }
//
// The reader is the prefetcher's alone until it is destroyed.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "store/journal_reader.h"
#include "base/status.h"

namespace kvmcdp::journal {

class FramePrefetcher {
 public:
  struct Frame {
    size_t index = 0;  // into reader.frames()
    std::vector<uint8_t> raw;
    std::vector<RecordView> records;  // pointing into raw
    Status status = Status::ok();     // a failed read ends the sequence
  };

  // Reads frames `order` (indexes into reader.frames()) in that order,
  // keeping at most `ahead` decoded frames waiting.
  FramePrefetcher(JournalReader& reader, std::vector<size_t> order, size_t ahead = 2);
  ~FramePrefetcher();  // stops early if the consumer has had enough
  FramePrefetcher(const FramePrefetcher&) = delete;
  FramePrefetcher& operator=(const FramePrefetcher&) = delete;

  // The next frame in order (its status says whether it was read), or
  // nullptr after the last one.  Valid until release().
  Frame* next();
  // Gives a frame from next() back for reuse.
  void release(Frame* f);

 private:
  void run();

  JournalReader& reader_;
  const std::vector<size_t> order_;
  const size_t ahead_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Frame>> ready_;  // in order
  std::vector<std::unique_ptr<Frame>> free_;
  bool finished_ = false;  // the thread has read its last frame
  bool stop_ = false;
  std::unique_ptr<Frame> held_;  // the frame next() handed out
  std::thread thread_;  // last: starts once the above exists
};

}  // namespace kvmcdp::journal
