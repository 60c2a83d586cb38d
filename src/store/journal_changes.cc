#include "store/journal_changes.h"

#include <algorithm>

#include "store/journal_ranges.h"

namespace kvmcdp::journal {

Result<ChangeHistogram> changes_between(JournalReader& r, uint64_t from_ns, uint64_t to_ns,
                                        uint64_t offset, uint64_t length, size_t buckets) {
  if (to_ns < from_ns || buckets == 0)
    return Status(ErrorKind::kUsage, "the interval ends before it starts");
  ChangeHistogram h;
  const uint64_t span = to_ns - from_ns + 1;
  for (size_t i = 0; i < buckets; ++i)
    h.buckets.push_back({from_ns + uint64_t((unsigned __int128)span * i / buckets),
                         from_ns + uint64_t((unsigned __int128)span * (i + 1) / buckets), 0, 0});
  auto start = last_record_at_or_before(r, from_ns);
  if (!start) return start.status();
  const uint64_t from_seq = *start ? (*start)->seq : 1;
  const uint64_t end = length > UINT64_MAX - offset ? UINT64_MAX : offset + length;
  Status walked = r.for_each_record(from_seq, [&](const RecordView& v) {
    if (v.time_ns > to_ns) return false;
    if (v.time_ns < from_ns) return true;
    if (v.type == RecordType::kGap) h.gaps++;
    bool guest_write = (v.type == RecordType::kWrite && !(v.flags & wire::kFlagResync)) ||
                       v.type == RecordType::kWriteZeroes || v.type == RecordType::kDiscard;
    if (!guest_write) return true;
    uint64_t lo = std::max(offset, v.offset), hi = std::min(end, v.offset + v.length);
    if (lo >= hi) return true;
    ChangeBucket& b = h.buckets[size_t((unsigned __int128)(v.time_ns - from_ns) * buckets / span)];
    b.bytes += hi - lo;
    b.records++;
    h.bytes += hi - lo;
    h.records++;
    if (!h.first_ns) h.first_ns = v.time_ns;
    h.last_ns = v.time_ns;
    return true;
  });
  if (!walked) return walked;
  return h;
}

}  // namespace kvmcdp::journal
