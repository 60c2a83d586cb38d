#include "store/point.h"

#include <ctime>

#include <fmt/format.h>

#include "store/protect_state.h"
#include "store/time_parse.h"

namespace kvmcdp {

std::string format_time_ns(uint64_t ns) {
  time_t s = static_cast<time_t>(ns / 1000000000);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", gmtime(&s));
  return fmt::format("{}.{:03}Z", buf, ns / 1000000 % 1000);
}

Result<uint64_t> resolve_point(StoreView& view, const PointSpec& spec, uint64_t now_ns,
                               std::string* at_meaning) {
  if (view.ranges.empty())
    return Status(ErrorKind::kNotRecoverable,
                  view.manifest.base_complete
                      ? "the store has no recoverable point"
                      : "the base copy has not completed yet: nothing is recoverable");
  uint64_t seq = 0;
  if (spec.latest) {
    seq = view.ranges.back().last_seq;
    if (uint64_t d = view.reader->missing_tail_seq())
      return Status(ErrorKind::kNotRecoverable,
                    fmt::format("the newest records (up to seq {}) are missing from the journal, "
                                "so the latest point is lost; --seq {} is the last one it holds",
                                d, seq));
  } else if (spec.seq) {
    seq = *spec.seq;
  } else if (spec.mark) {
    auto marks = journal::list_marks(*view.reader);
    if (!marks) return marks.status();
    std::vector<const journal::Mark*> found;
    for (const auto& mk : *marks)
      if (mk.name == *spec.mark) found.push_back(&mk);
    if (found.empty())
      return Status(ErrorKind::kNotFound, fmt::format("no mark named '{}'", *spec.mark));
    // Picking one of several silently could restore the wrong disk: a
    // store may hold duplicates written before `mark` refused them.
    if (found.size() > 1) {
      std::string list;
      for (const auto* mk : found)
        list += fmt::format("{}seq {} at {}", list.empty() ? "" : ", ", mk->seq,
                            format_time_human(mk->time_ns));
      return Status(ErrorKind::kUsage,
                    fmt::format("{} marks are named '{}' ({}): say which with --seq or --at",
                                found.size(), *spec.mark, list));
    }
    seq = found[0]->seq;
  } else if (spec.at) {
    auto t = parse_time(*spec.at, now_ns);
    if (!t) return t.status();
    if (at_meaning) *at_meaning = fmt::format("--at {} means {}", *spec.at, explain_time(*t));
    const auto& last = view.ranges.back();
    if (*t > now_ns)
      return Status(ErrorKind::kNotRecoverable,
                    fmt::format("{} is in the future; the latest recoverable point is {} (seq {})",
                                format_time_human(*t), format_time_human(last.last_time_ns),
                                last.last_seq));
    // The journal vouches for times up to now while protect runs, and up
    // to its last report once it stopped.
    auto state = read_protect_state(view.store_dir);
    uint64_t known_until = state && !protect_running(*state) ? state->updated_ns : now_ns;
    if (*t > known_until)
      return Status(ErrorKind::kNotRecoverable,
                    fmt::format("{} is after the end of the journal ({}); the latest "
                                "recoverable point is {} (seq {})",
                                format_time_human(*t), format_time_human(known_until),
                                format_time_human(last.last_time_ns), last.last_seq));
    // The disk at time T is the disk after the last record at or before T.
    auto p = journal::last_record_at_or_before(*view.reader, *t);
    if (!p) return p.status();
    if (!*p || (*p)->seq < view.manifest.base_complete_seq) {
      const auto& first = view.ranges.front();
      return Status(ErrorKind::kNotRecoverable,
                    fmt::format("{} is before the first recoverable point {} (seq {})",
                                format_time_human(*t), format_time_human(first.first_time_ns),
                                first.first_seq));
    }
    seq = (*p)->seq;
    // Past the last record of a range that a gap ends, the journal does
    // not know the disk: records were lost, or nothing was capturing.
    for (size_t i = 0; i + 1 < view.ranges.size(); ++i) {
      const auto& r = view.ranges[i];
      if (seq >= r.first_seq && seq <= r.last_seq && *t > r.last_time_ns)
        return Status(ErrorKind::kNotRecoverable,
                      fmt::format("{} falls in a gap: the nearest recoverable points are {} "
                                  "(seq {}) and {} (seq {})",
                                  format_time_human(*t), format_time_human(r.last_time_ns),
                                  r.last_seq,
                                  format_time_human(view.ranges[i + 1].first_time_ns),
                                  view.ranges[i + 1].first_seq));
    }
  } else {
    return Status(ErrorKind::kUsage, "give one of --at, --seq, --mark, --latest");
  }
  if (Status s = journal::check_recoverable(view.ranges, seq); !s) return s;
  return seq;
}

Result<uint64_t> record_time(journal::JournalReader& r, uint64_t seq) {
  auto i = r.frame_for_seq(seq);
  if (!i) return Status(ErrorKind::kNotFound, fmt::format("no record {} in the journal", seq));
  std::vector<uint8_t> raw;
  std::vector<journal::RecordView> recs;
  if (auto s = r.read_frame(*i, &raw, &recs); !s) return s;
  for (const auto& v : recs)
    if (v.seq == seq) return v.time_ns;
  return Status(ErrorKind::kNotFound, fmt::format("no record {} in the journal", seq));
}

}  // namespace kvmcdp
