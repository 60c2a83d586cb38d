// A store's journal as every reader meets it (segment_reader.cc,
// journal_codec.cc, journal_reader.cc): segment files and their indexes,
// damaged in any way.  The input holds segment 1, its index and segment 2:
//   u32 n1 | n1 bytes: 000000000001.seg | u32 n2 | n2 bytes: its .idx |
//   the rest: 000000000002.seg (absent if empty)
// and the journal is opened, read frame by frame and verified.
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "fuzz_util.h"
#include "store/journal_reader.h"
#include "journal/segment_list.h"

namespace {

bool take(const uint8_t*& p, size_t& left, std::vector<uint8_t>* out) {
  if (left < 4) return false;
  uint32_t n;
  std::memcpy(&n, p, 4);
  p += 4;
  left -= 4;
  n = static_cast<uint32_t>(std::min<size_t>(n, left));
  out->assign(p, p + n);
  p += n;
  left -= n;
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmcdp;
  using namespace kvmcdp::journal;
  static const std::string store = fuzz::scratch_root() + "/store";
  std::vector<uint8_t> seg1, idx1;
  const uint8_t* p = data;
  size_t left = size;
  if (!take(p, left, &seg1)) return 0;
  bool has_idx = take(p, left, &idx1);
  std::filesystem::remove_all(store);
  std::filesystem::create_directories(journal_dir(store));
  fuzz::write_file(segment_path(store, 1), seg1.data(), seg1.size());
  if (has_idx) fuzz::write_file(index_path(store, 1), idx1.data(), idx1.size());
  if (left) fuzz::write_file(segment_path(store, 2), p, left);

  uint64_t seg_size = 0;
  std::vector<FrameInfo> frames;
  (void)decode_index(idx1, 1, &seg_size, &frames);
  (void)scan_segment(segment_path(store, 1), 1, ScanDepth::kDecompress,
                     [](const RecordView& v) -> std::optional<std::string> {
                       (void)v.to_record();
                       return std::nullopt;
                     });
  auto r = JournalReader::open(store);
  if (r) {
    std::vector<uint8_t> raw;
    std::vector<RecordView> records;
    for (size_t i = 0; i < (*r)->frames().size(); ++i) (void)(*r)->read_frame(i, &raw, &records);
    (void)(*r)->frame_for_seq((*r)->last_seq());
    (void)(*r)->last_frame_starting_at_or_before(~0ull);
    uint64_t n = 0;
    (void)(*r)->for_each_record(0, [&](const RecordView&) { return ++n < 100000; });
  }
  (void)verify_journal(store);
  return 0;
}
