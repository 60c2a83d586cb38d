#include "point.h"

#include <ctime>

#include <fmt/format.h>

#include "protect_state.h"
#include "time_parse.h"

namespace kvmcdp {

std::string format_time_ns(uint64_t ns) {
  time_t s = static_cast<time_t>(ns / 1000000000);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", gmtime(&s));
  return fmt::format("{}.{:03}Z", buf, ns / 1000000 % 1000);
}

Result<StoreView> open_store_view(const std::string& store_dir) {
  auto readers = StoreReaders::shared(store_dir);
  if (!readers) return readers.status();
  auto m = read_manifest(store_dir);
  if (!m) return m.status();
  auto reader = journal::JournalReader::open(store_dir);
  if (!reader) return reader.status();
  StoreView view;
  view.readers.emplace(std::move(*readers));
  view.manifest = *m;
  view.store_dir = store_dir;
  view.reader = std::move(*reader);
  if (view.manifest.base_complete) {
    auto ranges = journal::recoverable_ranges(*view.reader, view.manifest.base_complete_seq,
                                              view.manifest.base_complete_time_ns);
    if (!ranges) return ranges.status();
    view.ranges = *ranges;
  }
  return view;
}

Result<uint64_t> resolve_point(StoreView& view, const PointSpec& spec, uint64_t now_ns) {
  if (view.ranges.empty())
    return Status(ErrorKind::kNotRecoverable,
                  view.manifest.base_complete
                      ? "the store has no recoverable point"
                      : "the base copy has not completed yet: nothing is recoverable");
  uint64_t seq = 0;
  if (spec.latest) {
    seq = view.ranges.back().last_seq;
  } else if (spec.seq) {
    seq = *spec.seq;
  } else if (spec.mark) {
    auto marks = journal::list_marks(*view.reader);
    if (!marks) return marks.status();
    const journal::Mark* found = nullptr;
    for (const auto& mk : *marks)
      if (mk.name == *spec.mark) found = &mk;  // the newest of that name
    if (!found) return Status(ErrorKind::kNotFound, fmt::format("no mark named '{}'", *spec.mark));
    seq = found->seq;
  } else if (spec.at) {
    auto t = parse_time(*spec.at, now_ns);
    if (!t) return t.status();
    const auto& last = view.ranges.back();
    if (*t > now_ns)
      return Status(ErrorKind::kNotRecoverable,
                    fmt::format("{} is in the future; the latest recoverable point is {} (seq {})",
                                format_time_ns(*t), format_time_ns(last.last_time_ns), last.last_seq));
    // The journal vouches for times up to now while protect runs, and up
    // to its last report once it stopped.
    auto state = read_protect_state(view.store_dir);
    uint64_t known_until = state && !protect_running(*state) ? state->updated_ns : now_ns;
    if (*t > known_until)
      return Status(ErrorKind::kNotRecoverable,
                    fmt::format("{} is after the end of the journal ({}); the latest "
                                "recoverable point is {} (seq {})",
                                format_time_ns(*t), format_time_ns(known_until),
                                format_time_ns(last.last_time_ns), last.last_seq));
    // The disk at time T is the disk after the last record at or before T.
    auto p = journal::last_record_at_or_before(*view.reader, *t);
    if (!p) return p.status();
    if (!*p || (*p)->seq < view.manifest.base_complete_seq) {
      const auto& first = view.ranges.front();
      return Status(ErrorKind::kNotRecoverable,
                    fmt::format("{} is before the first recoverable point {} (seq {})",
                                format_time_ns(*t), format_time_ns(first.first_time_ns),
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
                                  format_time_ns(*t), format_time_ns(r.last_time_ns), r.last_seq,
                                  format_time_ns(view.ranges[i + 1].first_time_ns),
                                  view.ranges[i + 1].first_seq));
    }
  } else {
    return Status(ErrorKind::kUsage, "give one of --at, --seq, --mark, --latest");
  }
  if (Status s = journal::check_recoverable(view.ranges, seq); !s) return s;
  return seq;
}

}  // namespace kvmcdp
