// The journal writer.  Records are serialized into a frame buffer as they
// are appended; a full frame is handed to the compression threads
// (frame_compressor.h), which compress it and write it to the segment
// (and starts its writeback), so compression and disk writes run on
// another core while the caller receives more records.  commit() waits for
// the frames in flight and makes them durable with a single fdatasync:
// group commit, so the cost of durability is per batch, not per record,
// and most of the data is already on its way to the disk by then.  Rotation happens only
// between frames, and a closed segment gets its .idx written atomically.
#include "journal/journal_writer.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cassert>
#include <cerrno>
#include <ctime>

#include "base/crc32c.h"
#include "base/fsutil.h"
#include "journal/segment_list.h"
#include "base/wall_clock.h"

namespace kvmcdp::journal {
namespace {

Status write_index(const std::string& store, uint64_t n, uint64_t size,
                   const std::vector<FrameInfo>& frames) {
  auto b = encode_index(n, size, frames);
  return fsutil::replace_file_atomic(index_path(store, n),
                                     std::string(b.begin(), b.end()));
}

}  // namespace

Result<std::unique_ptr<JournalWriter>> JournalWriter::open(
    const std::string& store_dir, const WriterOptions& opts) {
  std::unique_ptr<JournalWriter> w(new JournalWriter());
  w->store_ = store_dir;
  w->opts_ = opts;
  if (opts.frame_raw_bytes == 0 || opts.frame_raw_bytes > kMaxFrameRaw)
    return Status(ErrorKind::kUsage, "frame size must be 1.." +
                                         std::to_string(kMaxFrameRaw));
  struct stat st;
  if (::stat(store_dir.c_str(), &st) != 0)
    return Status(ErrorKind::kNotFound, fsutil::errno_message("open store", store_dir));
  std::string dir = journal_dir(store_dir);
  if (::mkdir(dir.c_str(), 0755) == 0) {
    if (auto s = fsutil::fsync_dir(store_dir); !s) return s;
  } else if (errno != EEXIST) {
    return Status(ErrorKind::kFailure, fsutil::errno_message("create", dir));
  }
  if (auto s = w->recover(); !s) return s;
  if (opts.stream_id != 0 && w->stream_id_ != 0 && w->stream_id_ != opts.stream_id)
    return Status(ErrorKind::kFailure,
                  "journal in " + store_dir + " belongs to stream " +
                      std::to_string(w->stream_id_) + ", not " +
                      std::to_string(opts.stream_id));
  if (w->stream_id_ == 0) w->stream_id_ = opts.stream_id;
  w->written_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (w->written_fd_ < 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("eventfd", store_dir));
  w->written_pub_ = w->written_seq_;
  JournalWriter* self = w.get();
  w->compressor_ = std::make_unique<FrameCompressor>(
      opts.zstd_level, opts.zstd_workers, opts.compress_threads, opts.frames_in_flight,
      [self](const FrameHeader& h, const iovec* iov, size_t iovcnt) {
        return self->write_frame(h, iov, iovcnt);
      },
      opts.compress_nice);
  return w;
}

// Finds the last durable record.  The last segment may have been cut by a
// crash: scan it, truncate the torn frame, report it, and close it with an
// index.  A last segment left with no frames is removed and the one before
// it takes its place.  A damaged segment header followed by data is
// corruption, not a torn creation, and is left for verify to report.
Status JournalWriter::recover() {
  auto segs = list_segments(store_);
  if (!segs) return segs.status();
  segments_ = segs->size();
  while (!segs->empty()) {
    uint64_t n = segs->back();
    std::string path = segment_path(store_, n);
    auto sf = load_segment(store_, n);
    if (!sf) return sf.status();
    if (sf->damage) {
      const Damage& d = *sf->damage;
      if (d.offset == 0 && sf->file_size > kSegmentHeaderSize)
        return Status(ErrorKind::kDamaged,
                      d.to_string() + "; refusing to append (run verify)");
      if (d.offset > 0 && ::truncate(path.c_str(), off_t(d.offset)) != 0)
        return Status(ErrorKind::kFailure, fsutil::errno_message("truncate", path));
      recovered_ = d;
    }
    if (sf->frames.empty()) {
      ::unlink(index_path(store_, n).c_str());
      if (::unlink(path.c_str()) != 0)
        return Status(ErrorKind::kFailure, fsutil::errno_message("remove", path));
      if (auto s = fsutil::fsync_dir(journal_dir(store_)); !s) return s;
      segs->pop_back();
      segments_--;
      seg_number_ = std::max(seg_number_, n - 1);
      continue;
    }
    if (sf->damage || !sf->from_index) {
      fsutil::Fd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
      if (!fd.valid() || ::fdatasync(fd.get()) != 0)
        return Status(ErrorKind::kFailure, fsutil::errno_message("sync", path));
      const auto& last = sf->frames.back();
      if (auto s = write_index(store_, n, last.offset + last.length, sf->frames); !s)
        return s;
    }
    stream_id_ = sf->header.stream_id;
    durable_seq_ = appended_seq_ = written_seq_ = sf->frames.back().last_seq;
    have_appended_ = true;
    seg_number_ = n;
    break;
  }
  return {};
}

JournalWriter::~JournalWriter() {
  if (!failed_ && compressor_) (void)close();
  stop_sync_thread();   // it waits on compressor_ and uses fd_
  compressor_.reset();  // its threads call write_frame: stop them first
  if (fd_ >= 0) ::close(fd_);
  if (event_fd_ >= 0) ::close(event_fd_);
  if (written_fd_ >= 0) ::close(written_fd_);
}

uint64_t JournalWriter::take_written_event() {
  uint64_t events;
  (void)!::read(written_fd_, &events, sizeof events);
  return written_pub_.load();
}

WriterStats JournalWriter::stats() const {
  WriterStats st;
  st.segments = segments_;
  st.current_segment = current_segment_;
  st.records = records_;
  st.raw_bytes = raw_bytes_;
  st.compressed_bytes = compressed_bytes_;
  st.commits = commits_;
  return st;
}

Status JournalWriter::append(Record&& r) {
  if (r.data.size() > kMaxFrameRaw)
    return {ErrorKind::kFailure, "append: record too large"};
  return append(view_of(r));
}

Status JournalWriter::append(const RecordView& in) {
  if (failed_) return *failed_;
  // A filter that lost its receiver before an ack arrived counts its gap
  // from its last ack, though the journal may hold records past it: they
  // are durable, so the gap really starts after the journal's last record.
  RecordView r = in;
  if (have_appended_ && r.type == RecordType::kGap && r.seq > appended_seq_ &&
      r.offset <= appended_seq_)
    r.offset = appended_seq_ + 1;
  if (have_appended_)
    if (auto e = continuity_error(appended_seq_, r.seq, r.type, r.offset))
      return {ErrorKind::kFailure, "append: " + *e};
  if (r.type == RecordType::kWrite && r.data_len != r.length)
    return {ErrorKind::kFailure, "append: write record data length differs "
                                 "from its length"};
  size_t size = size_t{kRecordHeaderSize} + r.data_len;
  if (size > kMaxFrameRaw)
    return {ErrorKind::kFailure, "append: record too large"};
  if (!raw_.empty() && raw_.size() + size > opts_.frame_raw_bytes) finish_frame();
  if (raw_.empty()) {
    cur_ = FrameHeader{};
    cur_.first_seq = r.seq;
    cur_.first_ns = r.time_ns;
  }
  // A frame's [first_seq, last_seq] and the index built from it rely on
  // seqs rising; the continuity check above guarantees it.  Debug builds
  // only (the release build defines NDEBUG).
  assert(cur_.count == 0 || r.seq > cur_.last_seq);
  assert(!have_appended_ || r.seq > appended_seq_);
  cur_.last_seq = r.seq;
  cur_.last_ns = r.time_ns;
  cur_.count++;
  cur_.flags |= frame_flag_for(r.type);
  size_t at = raw_.size();
  raw_.resize(at + size);
  encode_record_header(r, raw_.data() + at);
  if (r.data_len)
    std::memcpy(raw_.data() + at + kRecordHeaderSize, r.data, r.data_len);
  appended_seq_ = r.seq;
  have_appended_ = true;
  records_++;
  raw_bytes_ += size;
  return {};
}

void JournalWriter::finish_frame() {
  if (raw_.empty()) return;
  raw_ = compressor_->submit(std::move(raw_), cur_);
}

Result<uint64_t> JournalWriter::commit() {
  if (failed_) return *failed_;
  finish_frame();
  if (auto s = compressor_->drain(); !s) return *(failed_ = s);
  std::lock_guard<std::mutex> l(seg_mu_);
  if (unsynced_) {
    if (::fdatasync(fd_) != 0)
      return *(failed_ = Status(ErrorKind::kFailure,
                                fsutil::errno_message("fdatasync",
                                                      segment_path(store_, seg_number_))));
    unsynced_ = false;
    commits_++;
  }
  advance_durable(written_seq_);
  return durable_seq_.load();
}

Status JournalWriter::commit_async() {
  if (failed_) return *failed_;
  finish_frame();
  uint64_t frames = compressor_->submitted();
  if (event_fd_ < 0) {
    event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (event_fd_ < 0) return {ErrorKind::kFailure, fsutil::errno_message("eventfd", store_)};
    sync_thread_ = std::thread([this] { sync_loop(); });
  }
  {
    std::lock_guard<std::mutex> l(sync_mu_);
    sync_want_frames_ = std::max(sync_want_frames_, frames);
    sync_asked_++;
  }
  sync_cv_.notify_one();
  return {};
}

Result<uint64_t> JournalWriter::take_commit_event() {
  uint64_t events;
  if (event_fd_ >= 0) (void)!::read(event_fd_, &events, sizeof events);
  {
    std::lock_guard<std::mutex> l(sync_mu_);
    if (sync_failed_ && !failed_) failed_ = *sync_failed_;
  }
  if (failed_) return *failed_;
  return durable_seq_.load();
}

// One sync at a time; the asks that arrive meanwhile wait for the next,
// which covers them all: the pipelined form of group commit.
void JournalWriter::sync_loop() {
  std::unique_lock<std::mutex> l(sync_mu_);
  for (;;) {
    sync_cv_.wait(l, [&] { return sync_stop_ || sync_asked_ > sync_served_; });
    if (sync_stop_) return;
    uint64_t asked = sync_asked_, frames = sync_want_frames_;
    bool failed = sync_failed_.has_value();
    l.unlock();
    Status st = failed ? Status::ok() : sync_frames(frames);
    l.lock();
    if (!st && !sync_failed_) sync_failed_ = st;
    sync_served_ = asked;
    uint64_t one = 1;
    (void)!::write(event_fd_, &one, sizeof one);
  }
}

// Waits until the first `frames` frames are in the segment files, then
// makes them durable.  Sealed segments were synced before their index was
// written; the open one is synced through a dup of its fd, taken together
// with written_seq_, so a rotation meanwhile cannot close it under us and
// everything up to that seq is covered.
Status JournalWriter::sync_frames(uint64_t frames) {
  if (auto s = compressor_->wait_sunk(frames); !s) return s;
  int fd = -1;
  uint64_t upto;
  {
    std::lock_guard<std::mutex> l(seg_mu_);
    upto = written_seq_;
    if (fd_ >= 0 && (fd = ::fcntl(fd_, F_DUPFD_CLOEXEC, 0)) < 0)
      return {ErrorKind::kFailure, fsutil::errno_message("dup", segment_path(store_, seg_number_))};
  }
  if (fd >= 0) {
    int r = ::fdatasync(fd);
    int err = errno;
    ::close(fd);
    if (r != 0) {
      errno = err;
      return {ErrorKind::kFailure, fsutil::errno_message("fdatasync", store_)};
    }
    commits_++;
  }
  advance_durable(upto);
  return {};
}

void JournalWriter::advance_durable(uint64_t seq) {
  uint64_t cur = durable_seq_.load();
  while (cur < seq && !durable_seq_.compare_exchange_weak(cur, seq)) {
  }
}

void JournalWriter::stop_sync_thread() {
  if (!sync_thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> l(sync_mu_);
    sync_stop_ = true;
  }
  sync_cv_.notify_one();
  sync_thread_.join();
}

// On a compression thread, one frame at a time, in order: the frame goes
// into the open segment, rotating first if it would not fit or the segment
// is too old (a segment holds at least one frame).  A segment is made
// durable before its index is written, so an index never describes bytes
// not on disk.
Status JournalWriter::write_frame(const FrameHeader& h, const iovec* iov, size_t iovcnt) {
  std::lock_guard<std::mutex> l(seg_mu_);
  size_t n = 0;
  for (size_t i = 0; i < iovcnt; i++) n += iov[i].iov_len;
  uint64_t now = now_ns();
  bool full = seg_size_ + n > opts_.segment_max_bytes ||
              now - seg_created_ns_ >= opts_.segment_max_age_ns;
  if (fd_ >= 0 && !seg_frames_.empty() && full) {
    if (unsynced_) {
      if (::fdatasync(fd_) != 0)
        return {ErrorKind::kFailure,
                fsutil::errno_message("fdatasync", segment_path(store_, seg_number_))};
      unsynced_ = false;
      commits_++;
    }
    if (auto s = seal_segment(); !s) return s;
  }
  if (fd_ < 0)
    if (auto s = open_segment(now); !s) return s;
  if (auto s = fsutil::pwritev_all(fd_, iov, iovcnt, seg_size_, segment_path(store_, seg_number_));
      !s)
    return s;
  // Start the writeback now, so that commit's fdatasync finds little left
  // to do, and drop what is long on disk from the page cache
  // (base/stream_writeback.h says why).
  writeback_.written(fd_, seg_size_, n);
  seg_frames_.push_back(FrameInfo{seg_number_, seg_size_, uint32_t(n), h.count, h.first_seq,
                                  h.last_seq, h.first_ns, h.last_ns, h.flags});
  seg_size_ += n;
  compressed_bytes_ += n;
  written_seq_ = h.last_seq;
  unsynced_ = true;
  written_pub_ = h.last_seq;
  uint64_t one = 1;
  (void)!::write(written_fd_, &one, sizeof one);
  return {};
}

Status JournalWriter::open_segment(uint64_t now) {
  uint64_t n = seg_number_ + 1;
  std::string path = segment_path(store_, n);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return {ErrorKind::kFailure, fsutil::errno_message("create", path)};
  fd_ = fd;
  seg_number_ = n;
  uint8_t hb[kSegmentHeaderSize];
  encode_segment_header(SegmentHeader{n, stream_id_, now}, hb);
  if (auto s = fsutil::pwrite_all(fd_, hb, sizeof hb, 0, path); !s) return s;
  if (::fdatasync(fd_) != 0)
    return {ErrorKind::kFailure, fsutil::errno_message("fdatasync", path)};
  if (auto s = fsutil::fsync_dir(journal_dir(store_)); !s) return s;
  seg_size_ = kSegmentHeaderSize;
  writeback_.reset();
  seg_created_ns_ = now;
  seg_frames_.clear();
  segments_++;
  current_segment_ = n;
  return {};
}

Status JournalWriter::seal_segment() {
  if (fd_ < 0) return {};
  // Callers synced the segment: its pages are clean and all can go.
  writeback_.synced(fd_, seg_size_);
  if (auto s = write_index(store_, seg_number_, seg_size_, seg_frames_); !s)
    return s;
  ::close(fd_);
  fd_ = -1;
  current_segment_ = 0;
  return {};
}

Status JournalWriter::close() {
  stop_sync_thread();
  if (failed_) return *failed_;
  auto c = commit();
  if (!c) return c.status();
  std::lock_guard<std::mutex> l(seg_mu_);
  if (auto s = seal_segment(); !s) return *(failed_ = s);
  return {};
}

}  // namespace kvmcdp::journal
