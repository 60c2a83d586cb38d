// Opening a journal for reading.  Closed segments come with an index, so
// opening a big journal reads a few KiB per segment rather than the
// segments themselves; only the open (last) segment, or one whose index is
// missing or wrong, is scanned.  Frame-level links between segments are
// checked here (numbering, stream id, seq order), record-level continuity
// by verify_journal, which reads every byte.
#include "journal_reader.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include "fsutil.h"

namespace kvmcdp::journal {

Result<std::unique_ptr<JournalReader>> JournalReader::open(
    const std::string& store_dir) {
  std::unique_ptr<JournalReader> r(new JournalReader());
  r->store_ = store_dir;
  auto segs = list_segments(store_dir);
  if (!segs) return segs.status();
  r->segments_ = *segs;
  for (size_t i = 0; i < segs->size(); i++) {
    uint64_t n = (*segs)[i];
    auto cut = [&](Damage d) {
      r->damage_ = std::move(d);
      r->unreachable_.assign(segs->begin() + long(i) + 1, segs->end());
    };
    auto sf = load_segment(store_dir, n);
    if (!sf) return sf.status();
    if (sf->index_problem) r->index_problems_.push_back(*sf->index_problem);
    std::string path = segment_path(store_dir, n);
    if (i > 0 && n != (*segs)[i - 1] + 1) {
      cut(Damage{path, 0, "segment " + std::to_string((*segs)[i - 1] + 1) + " is missing",
                 sf->file_size});
      r->unreachable_.insert(r->unreachable_.begin(), n);
      break;
    }
    if (i > 0 && sf->header.stream_id != r->stream_id_ && !sf->damage) {
      cut(Damage{path, 0, "segment belongs to another stream", sf->file_size});
      r->unreachable_.insert(r->unreachable_.begin(), n);
      break;
    }
    if (i == 0) r->stream_id_ = sf->header.stream_id;
    bool stop = false;
    for (const auto& f : sf->frames) {
      if (!r->frames_.empty() && f.first_seq <= r->frames_.back().last_seq) {
        cut(Damage{path, f.offset, "frame seqs go backwards", sf->file_size - f.offset});
        stop = true;
        break;
      }
      r->frames_.push_back(f);
    }
    if (stop) break;
    if (sf->damage) {
      cut(*sf->damage);
      break;
    }
  }
  return r;
}

JournalReader::~JournalReader() {
  if (fd_ >= 0) ::close(fd_);
}

std::optional<size_t> JournalReader::frame_for_seq(uint64_t seq) const {
  auto it = std::upper_bound(frames_.begin(), frames_.end(), seq,
                             [](uint64_t s, const FrameInfo& f) { return s < f.first_seq; });
  if (it == frames_.begin()) return std::nullopt;
  --it;
  if (seq > it->last_seq) return std::nullopt;
  return size_t(it - frames_.begin());
}

std::optional<size_t> JournalReader::last_frame_starting_at_or_before(
    uint64_t t) const {
  // Times follow CLOCK_REALTIME and are not guaranteed monotonic, so this
  // is a linear search from the end rather than a binary one.
  for (size_t i = frames_.size(); i-- > 0;)
    if (frames_[i].first_ns <= t) return i;
  return std::nullopt;
}

int JournalReader::fd_for(uint64_t segment) {
  if (fd_ >= 0 && open_segment_ == segment) return fd_;
  if (fd_ >= 0) ::close(fd_);
  fd_ = ::open(segment_path(store_, segment).c_str(), O_RDONLY | O_CLOEXEC);
  open_segment_ = segment;
  return fd_;
}

Status JournalReader::read_frame(size_t i, std::vector<uint8_t>* raw,
                                 std::vector<RecordView>* records) {
  const FrameInfo& f = frames_.at(i);
  std::string path = segment_path(store_, f.segment);
  int fd = fd_for(f.segment);
  if (fd < 0) return {ErrorKind::kFailure, fsutil::errno_message("open", path)};
  if (auto s = journal::read_frame(fd, path, f, &scratch_, raw); !s) return s;
  if (auto e = parse_records(raw->data(), raw->size(), records))
    return {ErrorKind::kDamaged, path + ": damage at byte " +
                                     std::to_string(f.offset) + ": " + *e};
  return {};
}

Status JournalReader::for_each_record(
    uint64_t from_seq, const std::function<bool(const RecordView&)>& fn) {
  std::vector<uint8_t> raw;
  std::vector<RecordView> recs;
  for (size_t i = 0; i < frames_.size(); i++) {
    if (frames_[i].last_seq < from_seq) continue;
    if (auto s = read_frame(i, &raw, &recs); !s) return s;
    for (const auto& v : recs)
      if (v.seq >= from_seq && !fn(v)) return {};
  }
  return {};
}

Result<VerifyReport> verify_journal(const std::string& store_dir) {
  VerifyReport rep;
  auto segs = list_segments(store_dir);
  if (!segs) return segs.status();
  rep.segments = segs->size();
  bool have_prev = false;
  uint64_t prev = 0, stream = 0, last_good = 0;
  auto check = [&](const RecordView& v) -> std::optional<std::string> {
    if (have_prev)
      if (auto e = continuity_error(prev, v.seq, v.type, v.offset)) return e;
    if (!have_prev) rep.first_seq = v.seq;
    have_prev = true;
    prev = v.seq;
    return std::nullopt;
  };
  for (size_t i = 0; i < segs->size(); i++) {
    uint64_t n = (*segs)[i];
    std::string path = segment_path(store_dir, n);
    auto scan = scan_segment(path, n, ScanDepth::kDecompress, check);
    if (!scan) return scan.status();
    if (!scan->damage && i > 0 && n != (*segs)[i - 1] + 1)
      scan->damage = Damage{path, 0, "segment " + std::to_string((*segs)[i - 1] + 1) +
                                         " is missing", scan->file_size};
    if (!scan->damage && i > 0 && scan->header.stream_id != stream)
      scan->damage = Damage{path, 0, "segment belongs to another stream",
                            scan->file_size};
    if (i == 0) stream = scan->header.stream_id;
    rep.scanned.push_back({n, scan->file_size});
    rep.frames += scan->frames.size();
    if (!scan->frames.empty()) last_good = scan->frames.back().last_seq;
    for (const auto& f : scan->frames) rep.records += f.count;
    // The index must describe exactly the frames a scan finds.
    auto idx = fsutil::read_file(index_path(store_dir, n));
    if (idx) {
      uint64_t size = 0;
      std::vector<FrameInfo> frames;
      auto e = decode_index(*idx, n, &size, &frames);
      if (!e && (size != scan->file_size || frames != scan->frames))
        e = "index disagrees with the segment";
      if (e) rep.index_problems.push_back(index_path(store_dir, n) + ": " + *e);
    } else if (i + 1 < segs->size()) {
      rep.index_problems.push_back(index_path(store_dir, n) +
                                   ": closed segment has no index");
    }
    if (scan->damage) {
      rep.damage = scan->damage;
      rep.unreachable_segments.assign(segs->begin() + long(i) + 1, segs->end());
      break;
    }
  }
  rep.last_seq = last_good;
  return rep;
}

}  // namespace kvmcdp::journal
