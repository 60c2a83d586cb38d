#include "journal/journal_mirror.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>

#include "base/crc32c.h"
#include "journal/journal_codec.h"
#include "journal/segment_list.h"
#include "journal/segment_reader.h"
#include "journal/frame_cursor.h"

namespace kvmcdp::journal {

namespace {
Status refuse(const std::string& why) { return {ErrorKind::kDamaged, why}; }
}  // namespace

Result<std::unique_ptr<JournalMirror>> JournalMirror::open(const std::string& store_dir,
                                                           uint64_t stream_id) {
  std::unique_ptr<JournalMirror> m(new JournalMirror());
  m->store_ = store_dir;
  m->stream_id_ = stream_id;
  std::string dir = journal_dir(store_dir);
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    return Status(ErrorKind::kFailure, fsutil::errno_message("mkdir", dir));
  if (Status s = m->recover(); !s) return s;
  m->durable_seq_ = m->pos_.last_seq;
  m->durable_ns_ = m->pos_.last_ns;
  return m;
}

JournalMirror::~JournalMirror() = default;

Status JournalMirror::recover() {
  auto numbers = list_segments(store_);
  if (!numbers) return numbers.status();
  while (!numbers->empty()) {
    uint64_t n = numbers->back();
    std::string path = segment_path(store_, n);
    auto scan = scan_segment(path, n, ScanDepth::kChecksums);
    if (!scan) return scan.status();
    if (scan->damage && scan->good_end == 0) {
      // Not even a whole header: the server died creating it.
      if (unlink(path.c_str()) != 0)
        return Status(ErrorKind::kFailure, fsutil::errno_message("unlink", path));
      unlink(index_path(store_, n).c_str());
      numbers->pop_back();
      continue;
    }
    if (stream_id_ && scan->header.stream_id != stream_id_)
      return refuse(fmt::format("{} belongs to stream {:016x}, the store to {:016x}", path,
                                scan->header.stream_id, stream_id_));
    if (scan->damage) {
      if (truncate(path.c_str(), static_cast<off_t>(scan->good_end)) != 0)
        return Status(ErrorKind::kFailure, fsutil::errno_message("truncate", path));
      unlink(index_path(store_, n).c_str());
    }
    pos_.segment = n;
    pos_.size = scan->good_end;
    auto loaded = load_segment(store_, n);
    pos_.sealed = loaded && loaded->from_index;
    if (!scan->frames.empty()) {
      pos_.last_seq = scan->frames.back().last_seq;
      pos_.last_ns = scan->frames.back().last_ns;
    } else {
      // An empty last segment: the last record is in an earlier one.
      for (size_t i = numbers->size() - 1; i-- > 0 && !pos_.last_seq;) {
        auto prev = load_segment(store_, (*numbers)[i]);
        if (prev && !prev->frames.empty()) {
          pos_.last_seq = prev->frames.back().last_seq;
          pos_.last_ns = prev->frames.back().last_ns;
        }
      }
    }
    fd_ = fsutil::Fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd_.valid()) return Status(ErrorKind::kFailure, fsutil::errno_message("open", path));
    break;
  }
  return Status::ok();
}

Status JournalMirror::append(uint64_t segment, uint64_t offset, const uint8_t* p, size_t n) {
  if (offset == 0 && (pos_.segment == 0 || segment == pos_.segment + 1)) {
    // A new segment: its header first, of this store's stream.
    if (n < kSegmentHeaderSize) return refuse("a segment must start with its whole header");
    SegmentHeader h;
    if (auto e = decode_segment_header(p, &h)) return refuse("segment header: " + *e);
    if (h.segment != segment)
      return refuse(fmt::format("segment {} sent with the header of segment {}", segment,
                                h.segment));
    if (stream_id_ && h.stream_id != stream_id_)
      return refuse(fmt::format("segment {} belongs to stream {:016x}, the store to {:016x}",
                                segment, h.stream_id, stream_id_));
    if (Status s = sync(); !s) return s;  // the previous segment, before it is let go
    if (fd_.valid()) writeback_.synced(fd_.get(), pos_.size);
    writeback_.reset();
    std::string path = segment_path(store_, segment);
    fsutil::Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!fd.valid()) return Status(ErrorKind::kFailure, fsutil::errno_message("create", path));
    if (Status s = fsutil::write_all(fd.get(), p, kSegmentHeaderSize, path); !s) return s;
    fd_ = std::move(fd);
    pos_.segment = segment;
    pos_.size = kSegmentHeaderSize;
    pos_.sealed = false;
    new_file_ = dirty_ = true;
    return append_frames(p + kSegmentHeaderSize, n - kSegmentHeaderSize);
  }
  if (segment != pos_.segment || offset != pos_.size)
    return refuse(fmt::format("bytes for segment {} at {}, but the store ends at segment {} "
                              "byte {}",
                              segment, offset, pos_.segment, pos_.size));
  if (pos_.sealed) return refuse(fmt::format("segment {} is sealed", segment));
  return append_frames(p, n);
}

Status JournalMirror::append_frames(const uint8_t* p, size_t n) {
  std::string path = segment_path(store_, pos_.segment);
  // Check every frame before writing any, so a bad message leaves the
  // journal exactly as it was.
  uint64_t last = pos_.last_seq, last_ns = pos_.last_ns;
  size_t off = 0;
  while (off < n) {
    FrameCheck fc = check_frame(p + off, n - off);
    if (fc.problem == FrameProblem::kBadHeader) return refuse("frame header: " + fc.detail);
    if (fc.problem != FrameProblem::kNone) return refuse("a frame cut short");
    const FrameHeader& h = fc.header;
    if (crc32c(p + off + kFrameHeaderSize, h.payload_len) != h.payload_crc)
      return refuse(fmt::format("frame at segment {} byte {}: payload checksum mismatch",
                                pos_.segment, pos_.size + off));
    if (last != 0 && h.first_seq <= last)
      return refuse(fmt::format("frame repeats seq {} (the store holds up to {})", h.first_seq,
                                last));
    if (last != 0 && h.first_seq != last + 1 && !(h.flags & kFrameHasGap))
      return refuse(fmt::format("frame skips from seq {} to {} without a gap record", last,
                                h.first_seq));
    last = h.last_seq;
    last_ns = h.last_ns;
    off += fc.length;
  }
  if (n == 0) return Status::ok();
  if (Status s = fsutil::pwrite_all(fd_.get(), p, n, pos_.size, path); !s) return s;
  writeback_.written(fd_.get(), pos_.size, n);  // base/stream_writeback.h says why
  pos_.size += n;
  pos_.last_seq = last;
  pos_.last_ns = last_ns;
  dirty_ = true;
  return Status::ok();
}

Status JournalMirror::seal(uint64_t segment, uint64_t size, const uint8_t* idx, size_t n) {
  if (segment != pos_.segment || size != pos_.size)
    return refuse(fmt::format("seal of segment {} at {} bytes, but the store has segment {} "
                              "at {}",
                              segment, size, pos_.segment, pos_.size));
  std::vector<uint8_t> bytes(idx, idx + n);
  uint64_t seg_size = 0;
  std::vector<FrameInfo> frames;
  if (auto e = decode_index(bytes, segment, &seg_size, &frames)) return refuse("index: " + *e);
  if (seg_size != size) return refuse("the index describes another size");
  if (Status s = sync(); !s) return s;
  std::string data(bytes.begin(), bytes.end());
  if (Status s = fsutil::replace_file_atomic(index_path(store_, segment), data); !s) return s;
  pos_.sealed = true;
  return Status::ok();
}

Status JournalMirror::sync() {
  if (!dirty_) return Status::ok();
  std::string path = segment_path(store_, pos_.segment);
  if (fdatasync(fd_.get()) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("fdatasync", path));
  if (new_file_) {
    if (Status s = fsutil::fsync_dir(journal_dir(store_)); !s) return s;
    new_file_ = false;
  }
  dirty_ = false;
  durable_seq_ = pos_.last_seq;
  durable_ns_ = pos_.last_ns;
  return Status::ok();
}

}  // namespace kvmcdp::journal
