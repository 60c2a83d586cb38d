#include "store/store_view.h"

namespace kvmcdp {

Result<StoreView> open_store_view(const std::string& store_dir) {
  auto readers = StoreReaders::shared(store_dir);
  if (!readers) return readers.status();
  auto m = read_manifest(store_dir);
  if (!m) return m.status();
  if (auto s = check_manifest_against_store(store_dir, *m); !s) return s;
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
  view.verified = load_verify_record(store_dir);
  if (view.verified && view.verified->damage) {
    // Restore cannot read past damage that the last journal verify found,
    // though opening the journal did not see it: nothing after the last
    // good record is recoverable.
    uint64_t cut = view.verified->verified_seq;
    uint64_t cut_ns = 0;
    bool found = false;
    if (Status s = view.reader->for_each_record(cut, [&](const journal::RecordView& r) {
          if (r.seq == cut) cut_ns = r.time_ns, found = true;
          return false;
        });
        !s)
      return s;
    std::vector<journal::RecoverableRange> kept;
    for (auto r : view.ranges) {
      if (r.first_seq > cut) break;
      if (r.last_seq > cut) {
        // A range starting at the base copy holds its seq even where no
        // record has it; any other cut point is a record.
        if (!found && r.first_seq != cut) break;
        r.last_seq = cut;
        r.last_time_ns = found ? cut_ns : r.first_time_ns;
      }
      kept.push_back(r);
    }
    view.ranges = std::move(kept);
  }
  return view;
}

}  // namespace kvmcdp
