// Appending records to a store's journal with group commit.
//
//   auto w = JournalWriter::open(store, opts);      // recovers the tail
//   w->append(std::move(rec)); ...                   // buffers, no syscalls
//   w->append(view_of(msg_header, payload));         // the same, one copy
//   auto durable = w->commit();                      // one fdatasync
//   // ack the filter up to *durable only now
//
// Or without waiting, so that records keep arriving while the disk syncs:
//   w->commit_async();                  // the sync thread takes it from here
//   poll(w->commit_event_fd()) ...      // readable when a sync has ended
//   auto durable = w->take_commit_event();
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "journal/frame_compressor.h"
#include "journal/journal_bytebuf.h"
#include "journal/journal_codec.h"
#include "journal/record.h"
#include "journal/segment_reader.h"
#include "base/status.h"
#include "base/stream_writeback.h"

namespace kvmcdp::journal {

struct WriterOptions {
  uint64_t stream_id = 0;  // 0: whatever the existing segments say
  uint64_t segment_max_bytes = 256ull << 20;
  uint64_t segment_max_age_ns = 3600ull * 1000000000ull;
  int zstd_level = 1;
  int zstd_workers = 0;  // ZSTD_c_nbWorkers: >0 compresses on other cores
  // Full frames handed to the compression threads and not yet written;
  // append waits beyond this (it bounds memory, not the batch).
  uint32_t frames_in_flight = 4;
  // Threads that compress frames side by side (frames stay in order).
  uint32_t compress_threads = 2;
  // Nice value of those threads: protect runs them below the guest's I/O.
  int compress_nice = 0;
  uint32_t frame_raw_bytes = 1u << 20;  // records per frame, uncompressed
};

struct WriterStats {
  uint64_t segments = 0;          // segment files in the journal
  uint64_t current_segment = 0;   // 0 if none is open
  uint64_t records = 0;           // appended since open
  uint64_t raw_bytes = 0;         // serialized record bytes since open
  uint64_t compressed_bytes = 0;  // bytes written since open (with headers)
  uint64_t commits = 0;           // fdatasyncs since open
};

class JournalWriter {
 public:
  // Opens (creating <store>/journal if needed) and recovers: a torn last
  // frame is truncated away and reported by recovered(); the last segment
  // is closed (its index written) so new records go to a new segment.
  static Result<std::unique_ptr<JournalWriter>> open(const std::string& store_dir,
                                                     const WriterOptions& opts);
  ~JournalWriter();

  // What open() cut off the tail, if anything.
  const std::optional<Damage>& recovered() const { return recovered_; }

  // Buffers a record.  Its seq must follow the last one (see
  // continuity_error); the first record of an empty journal may have any
  // seq.  A gap record announcing missing seqs from one the journal holds
  // already is stored as a gap starting after the journal's last record.
  // A full frame goes to the compression threads, which also write
  // it to the segment (not yet durable); append waits only if
  // opts.frames_in_flight frames are still unwritten.  No I/O here.
  Status append(Record&& r);
  // The same from a view: the data is copied once, straight into the frame.
  Status append(const RecordView& r);
  // Hands over the partial frame, waits until every frame is written and
  // makes them durable with one fdatasync (another one per segment
  // rotation, before its index is written).  Returns the last durable seq.
  // After an I/O error the writer refuses further work: reopen to recover.
  Result<uint64_t> commit();
  // The same group commit, run on the writer's sync thread: hands over the
  // partial frame and returns at once; the caller goes on appending while
  // the frames are written and fdatasync runs.  commit_event_fd() becomes
  // readable when a sync ends.  Asks made while one runs are served
  // together by the next.
  Status commit_async();
  // -1 until the first commit_async().
  int commit_event_fd() const { return event_fd_; }
  // Clears the event; the last durable seq, or the error that stopped the
  // writer (the sync thread's or any other).
  Result<uint64_t> take_commit_event();
  // Commits and closes the current segment (writes its index).
  Status close();

  uint64_t last_durable_seq() const { return durable_seq_.load(); }  // 0: none
  // The last seq written to a segment file: in the page cache, so a crash
  // of this process (not of the host) keeps it, and the next open
  // recovers it.  written_event_fd() becomes readable when it advances;
  // take_written_event() clears that and returns it.
  uint64_t last_written_seq() const { return written_pub_.load(); }
  int written_event_fd() const { return written_fd_; }
  uint64_t take_written_event();
  uint64_t stream_id() const { return stream_id_; }
  WriterStats stats() const;
  // See FrameCompressor::set_source_ahead.
  void set_source_ahead(bool ahead) { compressor_->set_source_ahead(ahead); }

 private:
  JournalWriter() = default;
  Status recover();
  void finish_frame();
  Status write_frame(const FrameHeader& h, const iovec* iov, size_t iovcnt);
  Status open_segment(uint64_t now_ns);
  Status seal_segment();
  void sync_loop();
  Status sync_frames(uint64_t frames);
  void stop_sync_thread();
  void advance_durable(uint64_t seq);

  std::string store_;
  WriterOptions opts_;
  std::optional<Damage> recovered_;
  std::optional<Status> failed_;
  std::unique_ptr<FrameCompressor> compressor_;
  uint64_t stream_id_ = 0;
  std::atomic<uint64_t> durable_seq_{0};
  uint64_t appended_seq_ = 0;
  bool have_appended_ = false;
  // The frame being filled (then handed to compressor_).
  ByteBuf raw_;
  FrameHeader cur_;
  // The open segment.  While frames are in flight only the compression
  // threads (write_frame, one at a time) touch what follows; the caller
  // does after compressor_->drain().  seg_mu_ lets the sync thread take
  // fd_ and written_seq_ together while frames are being written.
  std::mutex seg_mu_;
  int fd_ = -1;
  uint64_t seg_number_ = 0;  // open segment, or the last one if none open
  uint64_t seg_size_ = 0;
  StreamWriteback writeback_;  // the open segment's page cache
  uint64_t seg_created_ns_ = 0;
  std::vector<FrameInfo> seg_frames_;
  uint64_t written_seq_ = 0;  // last seq written (durable after fdatasync)
  bool unsynced_ = false;     // frames written since the last fdatasync
  uint64_t records_ = 0, raw_bytes_ = 0;  // the caller's counters
  // The sync thread (commit_async): the caller posts how many frames the
  // commit needs; the thread waits for them, syncs, and signals event_fd_.
  std::thread sync_thread_;
  std::mutex sync_mu_;
  std::condition_variable sync_cv_;
  uint64_t sync_want_frames_ = 0;  // frames submitted when last asked
  uint64_t sync_asked_ = 0, sync_served_ = 0;  // asks made, asks answered
  bool sync_stop_ = false;
  std::optional<Status> sync_failed_;
  int event_fd_ = -1;
  int written_fd_ = -1;
  std::atomic<uint64_t> written_pub_{0};
  // Counters the compression thread updates; stats() may read them anytime.
  std::atomic<uint64_t> segments_{0}, current_segment_{0}, compressed_bytes_{0},
      commits_{0};
};

}  // namespace kvmcdp::journal
