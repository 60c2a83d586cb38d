// The newest-first walk: frames from the newest back, records within a
// frame from the last; an ExtentMap remembers which bytes already have
// their newest version, so each byte is handed out once, and the walk ends
// as soon as the whole disk is covered (a journal that rewrote the disk
// is not read back to its start).
#include "store/journal_delta.h"

#include <vector>

#include <fmt/format.h>

#include "journal/extent_map.h"
#include "store/frame_prefetcher.h"

namespace kvmcdp {

using journal::RecordView;

Result<DeltaStats> journal_delta(journal::JournalReader& r, uint64_t from_seq, uint64_t to_seq,
                                 uint64_t disk_size, const DeltaFn& fn, ExtentMap* covered,
                                 const DeltaProgressFn& progress) {
  return journal_delta_at(
      r, from_seq, to_seq, disk_size,
      [&](uint64_t off, uint64_t len, const uint8_t* data, const DeltaSource&) {
        return fn(off, len, data);
      },
      covered, progress);
}

Result<DeltaStats> journal_delta_at(journal::JournalReader& r, uint64_t from_seq,
                                    uint64_t to_seq, uint64_t disk_size, const DeltaAtFn& fn,
                                    ExtentMap* covered, const DeltaProgressFn& progress) {
  DeltaStats st;
  ExtentMap own;
  ExtentMap& done = covered ? *covered : own;
  const auto& frames = r.frames();
  size_t end = frames.size();
  while (end > 0 && frames[end - 1].first_seq > to_seq) end--;
  std::vector<size_t> order;
  for (size_t i = end; i-- > 0 && frames[i].last_seq > from_seq;) order.push_back(i);
  // Decompression runs a few frames ahead on a thread of its own, beside
  // fn's writes (as in the full restore), instead of between them.
  const size_t total = order.size();
  journal::FramePrefetcher pf(r, std::move(order));
  while (!done.covers(disk_size)) {
    journal::FramePrefetcher::Frame* f = pf.next();
    if (!f) break;
    if (!f->status) return f->status;
    st.frames_read++;
    st.frame_bytes += frames[f->index].length;
    const std::vector<RecordView>& recs = f->records;
    for (size_t k = recs.size(); k-- > 0;) {
      const RecordView& v = recs[k];
      if (v.seq > to_seq || v.seq <= from_seq) continue;
      bool write = v.type == RecordType::kWrite;
      if (!write && v.type != RecordType::kWriteZeroes && v.type != RecordType::kDiscard)
        continue;
      if (v.offset > disk_size || v.length > disk_size - v.offset)
        return Status(ErrorKind::kDamaged,
                      fmt::format("record {} writes past the disk's end (disk_size {} in the "
                                  "manifest)",
                                  v.seq, disk_size));
      uint64_t e = v.offset + v.length;
      Status err;
      done.cover(v.offset, e, [&](uint64_t b, uint64_t ce) {
        if (!err) return;
        (write ? st.data_bytes : st.zero_bytes) += ce - b;
        const uint8_t* data = write ? v.data + (b - v.offset) : nullptr;
        DeltaSource where{f->index, data ? size_t(data - f->raw.data()) : 0};
        err = fn(b, ce - b, data, where);
      });
      if (!err) return err;
    }
    pf.release(f);
    if (progress) progress(st.frames_read, total);
  }
  return st;
}

}  // namespace kvmcdp
