// Recoverable ranges as a small state machine over the records: a range
// opens at base_seq (or at a kResyncDone once the base is complete) and
// closes at the record before a kGap.  Frames carry flags saying whether
// they hold gap/resync/mark records, so a frame without them is passed
// over using only its header: on a long journal this reads the index, not
// the data.
#include "store/journal_ranges.h"

namespace kvmcdp::journal {

Result<std::vector<RecoverableRange>> recoverable_ranges(JournalReader& r,
                                                         uint64_t base_seq,
                                                         uint64_t base_time_ns) {
  std::vector<RecoverableRange> out;
  std::optional<RecoverableRange> cur;
  bool consistent = true;  // replaying up to here reproduces the disk
  Point prev{0, 0};
  bool have_prev = false;
  const auto& frames = r.frames();
  // The base alone is a point only when it needs no record: completed
  // before the first seq the journal must hold.  Missing first segments
  // otherwise leave the base looking like a point it is not.
  if ((frames.empty() || base_seq < frames.front().first_seq) &&
      !(r.start_missing() && base_seq >= r.start_seq())) {
    // The base copy completed before the first record we hold.
    cur = RecoverableRange{base_seq, base_time_ns, base_seq, base_time_ns};
    prev = {base_seq, base_time_ns};
  }
  auto step = [&](uint64_t seq, uint64_t t, RecordType type) {
    if (type == RecordType::kGap) {
      if (cur) {
        cur->last_seq = prev.seq;
        cur->last_time_ns = prev.time_ns;
        out.push_back(*cur);
        cur.reset();
      }
      consistent = false;
    } else if (type == RecordType::kResyncDone) {
      consistent = true;
    }
    if (!cur && consistent && seq >= base_seq) cur = RecoverableRange{seq, t, seq, t};
    prev = {seq, t};
    have_prev = true;
  };
  std::vector<uint8_t> raw;
  std::vector<RecordView> recs;
  for (size_t i = 0; i < frames.size(); i++) {
    const FrameInfo& f = frames[i];
    bool special = f.flags & (kFrameHasGap | kFrameHasResyncDone);
    bool opens_here = !cur && consistent && f.first_seq < base_seq &&
                      base_seq <= f.last_seq;
    if (special || opens_here) {
      if (auto s = r.read_frame(i, &raw, &recs); !s) return s;
      for (const auto& v : recs) step(v.seq, v.time_ns, v.type);
      continue;
    }
    // A plain frame: at most it opens a range at its first record.
    if (!cur && consistent && f.first_seq >= base_seq)
      cur = RecoverableRange{f.first_seq, f.first_ns, f.first_seq, f.first_ns};
    prev = {f.last_seq, f.last_ns};
    have_prev = true;
  }
  if (cur) {
    if (have_prev && prev.seq >= cur->first_seq) {
      cur->last_seq = prev.seq;
      cur->last_time_ns = prev.time_ns;
    }
    out.push_back(*cur);
  }
  return out;
}

Result<std::vector<Mark>> list_marks(JournalReader& r) {
  std::vector<Mark> out;
  std::vector<uint8_t> raw;
  std::vector<RecordView> recs;
  for (size_t i = 0; i < r.frames().size(); i++) {
    if (!(r.frames()[i].flags & kFrameHasMark)) continue;
    if (auto s = r.read_frame(i, &raw, &recs); !s) return s;
    for (const auto& v : recs)
      if (v.type == RecordType::kMark)
        out.push_back(Mark{std::string(reinterpret_cast<const char*>(v.data), v.data_len),
                           v.seq, v.time_ns});
  }
  return out;
}

Result<std::optional<Point>> last_record_at_or_before(JournalReader& r,
                                                      uint64_t t_ns) {
  auto i = r.last_frame_starting_at_or_before(t_ns);
  if (!i) return std::optional<Point>();
  std::vector<uint8_t> raw;
  std::vector<RecordView> recs;
  if (auto s = r.read_frame(*i, &raw, &recs); !s) return s;
  std::optional<Point> best;
  for (const auto& v : recs)
    if (v.time_ns <= t_ns) best = Point{v.seq, v.time_ns};
  return best;
}

Status check_recoverable(const std::vector<RecoverableRange>& ranges,
                         uint64_t seq) {
  const RecoverableRange* before = nullptr;
  const RecoverableRange* after = nullptr;
  for (const auto& g : ranges) {
    if (seq >= g.first_seq && seq <= g.last_seq) return {};
    if (g.last_seq < seq) before = &g;
    if (g.first_seq > seq && !after) after = &g;
  }
  std::string msg = "seq " + std::to_string(seq) + " is not recoverable";
  if (ranges.empty()) return {ErrorKind::kNotRecoverable, msg + ": the journal has no recoverable range"};
  msg += "; nearest recoverable points:";
  if (before) msg += " seq " + std::to_string(before->last_seq) + " (before)";
  if (before && after) msg += " and";
  if (after) msg += " seq " + std::to_string(after->first_seq) + " (after)";
  return {ErrorKind::kNotRecoverable, msg};
}

}  // namespace kvmcdp::journal
