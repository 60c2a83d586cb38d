// Opening a journal for reading.  Closed segments come with an index, so
// opening a big journal reads a few KiB per segment rather than the
// segments themselves; only the open (last) segment, or one whose index is
// missing or wrong, is scanned.  Frame-level links between segments are
// checked here (numbering, stream id, seq order), record-level continuity
// by verify_journal, which reads every byte.
#include "store/journal_reader.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include "base/fsutil.h"
#include "store/manifest.h"
#include "store/protect_state.h"

namespace kvmcdp::journal {

uint64_t journal_start_seq(const std::string& store_dir) {
  auto m = read_manifest(store_dir);
  // A spool (protect --spool) trims the segments the server holds.
  if (!m || (m->extra.contains("spool") && m->extra["spool"] == true)) return 0;
  return m->folded_seq ? m->folded_seq + 1 : 1;
}

DurableClaim read_durable_claim(const std::string& store_dir) {
  auto st = read_protect_state(store_dir);
  if (!st) return {};
  return {st->stream_id, st->durable_seq};
}

uint64_t missing_tail(const DurableClaim& claim, uint64_t stream_id, uint64_t last_seq) {
  if (claim.stream_id != stream_id || claim.durable_seq <= last_seq) return 0;
  return claim.durable_seq;
}

Damage missing_tail_damage(const std::string& store_dir, uint64_t last_seq, uint64_t durable) {
  return Damage{journal_dir(store_dir), 0,
                "the journal ends at seq " + std::to_string(last_seq) + ", but protect wrote seq " +
                    std::to_string(durable) +
                    " durably (protect.json): its last segments are missing (deleted?)",
                0};
}

Damage missing_start_damage(const std::string& first_segment_path, uint64_t start,
                            uint64_t first, uint64_t file_size) {
  return Damage{first_segment_path, 0,
                "the journal starts at seq " + std::to_string(first) + ", but the records from seq " +
                    std::to_string(start) +
                    " on are needed: earlier segments are missing (deleted?)",
                file_size};
}

Result<std::unique_ptr<JournalReader>> JournalReader::open(
    const std::string& store_dir) {
  std::unique_ptr<JournalReader> r(new JournalReader());
  r->store_ = store_dir;
  r->start_seq_ = journal_start_seq(store_dir);
  const DurableClaim claim = read_durable_claim(store_dir);  // before the journal
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
    const bool had_frames = !r->frames_.empty();
    bool stop = false;
    for (const auto& f : sf->frames) {
      if (!r->frames_.empty() && f.first_seq <= r->frames_.back().last_seq) {
        cut(Damage{path, f.offset, "frame seqs go backwards", sf->file_size - f.offset});
        stop = true;
        break;
      }
      r->frames_.push_back(f);
    }
    // The journal's first frame must start at the start; one that starts
    // with a gap record may jump (verify_journal checks where it says the
    // missing seqs begin).
    if (!had_frames && r->start_seq_ && !r->frames_.empty() &&
        r->frames_.front().first_seq > r->start_seq_ &&
        !(r->frames_.front().flags & kFrameHasGap)) {
      r->start_missing_ = true;
      cut(missing_start_damage(path, r->start_seq_, r->frames_.front().first_seq,
                               sf->file_size));
      r->unreachable_.insert(r->unreachable_.begin(), n);
      r->frames_.clear();
      break;
    }
    if (stop) break;
    if (sf->damage) {
      cut(*sf->damage);
      break;
    }
  }
  if (!r->damage_ && !r->segments_.empty()) {
    r->missing_tail_seq_ = missing_tail(claim, r->stream_id_, r->last_seq());
    if (r->missing_tail_seq_)
      r->damage_ = missing_tail_damage(store_dir, r->last_seq(), r->missing_tail_seq_);
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
  const DurableClaim claim = read_durable_claim(store_dir);  // before the journal
  auto segs = list_segments(store_dir);
  if (!segs) return segs.status();
  rep.segments = segs->size();
  bool have_prev = false;
  uint64_t prev = 0, stream = 0, last_good = 0;
  const uint64_t start = journal_start_seq(store_dir);
  std::optional<uint64_t> late_start;  // the first record, when it is past `start`
  auto manifest = read_manifest(store_dir);
  const uint64_t disk_size = manifest ? manifest->disk_size : 0;
  auto check = [&](const RecordView& v) -> std::optional<std::string> {
    if (have_prev)
      if (auto e = continuity_error(prev, v.seq, v.type, v.offset)) return e;
    // Past the disk's end: the record or the manifest's disk_size is wrong.
    if (manifest &&
        (v.type == RecordType::kWrite || v.type == RecordType::kWriteZeroes ||
         v.type == RecordType::kDiscard) &&
        (v.offset > disk_size || v.length > disk_size - v.offset))
      return "record " + std::to_string(v.seq) + " writes past the disk's end (disk_size " +
             std::to_string(disk_size) + " in the manifest)";
    // A gap record says from which seq on records are missing.
    if (!have_prev && start && (v.type == RecordType::kGap ? v.offset : v.seq) > start)
      late_start = v.seq;
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
    if (late_start && rep.frames == 0) {
      scan->damage = missing_start_damage(path, start, *late_start, scan->file_size);
      scan->frames.clear();
      rep.first_seq = 0;
      last_good = start - 1;  // after a fold, the base itself is good
    }
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
  if (!rep.damage && !segs->empty())
    if (uint64_t d = missing_tail(claim, stream, last_good))
      rep.damage = missing_tail_damage(store_dir, last_good, d);
  return rep;
}

}  // namespace kvmcdp::journal
