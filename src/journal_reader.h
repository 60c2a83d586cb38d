// Read-only access to a store's journal: which frames are reachable, in
// seq order, and reading them.  Opening reads the .idx of closed segments
// and scans the rest (checksums only); the first damage met cuts the
// journal there, and every later segment is unreachable for restore.
// verify_journal() is the thorough check: every byte decompressed.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "journal_codec.h"
#include "segment_list.h"
#include "segment_reader.h"
#include "status.h"

namespace kvmcdp::journal {

class JournalReader {
 public:
  // Takes no lock: a writer may be appending; its unfinished tail then
  // reads as (reported) damage at the end.
  static Result<std::unique_ptr<JournalReader>> open(const std::string& store_dir);

  // Every frame up to the first damage, in seq order.
  const std::vector<FrameInfo>& frames() const { return frames_; }
  const std::vector<uint64_t>& segments() const { return segments_; }
  const std::optional<Damage>& damage() const { return damage_; }
  const std::vector<uint64_t>& unreachable_segments() const { return unreachable_; }
  // Indexes that were present but disagreed with their segment.
  const std::vector<std::string>& index_problems() const { return index_problems_; }
  uint64_t stream_id() const { return stream_id_; }
  bool empty() const { return frames_.empty(); }
  uint64_t first_seq() const { return empty() ? 0 : frames_.front().first_seq; }
  uint64_t last_seq() const { return empty() ? 0 : frames_.back().last_seq; }

  // Index into frames() of the frame holding `seq`, if any.
  std::optional<size_t> frame_for_seq(uint64_t seq) const;
  // Index of the last frame whose first record has time_ns <= t.
  std::optional<size_t> last_frame_starting_at_or_before(uint64_t t_ns) const;

  // Decompresses frames()[i] into `raw` and lists its records (pointing
  // into `raw`).  Damage is ErrorKind::kDamaged naming file and offset.
  Status read_frame(size_t i, std::vector<uint8_t>* raw,
                    std::vector<RecordView>* records);

  // Calls fn for each record with seq >= from_seq, in order, until fn
  // returns false.
  Status for_each_record(uint64_t from_seq,
                         const std::function<bool(const RecordView&)>& fn);

  const std::string& store_dir() const { return store_; }

 private:
  JournalReader() = default;
  int fd_for(uint64_t segment);

  std::string store_;
  std::vector<FrameInfo> frames_;
  std::vector<uint64_t> segments_;
  std::optional<Damage> damage_;
  std::vector<uint64_t> unreachable_;
  std::vector<std::string> index_problems_;
  uint64_t stream_id_ = 0;
  uint64_t open_segment_ = 0;
  int fd_ = -1;
  std::vector<uint8_t> scratch_;

 public:
  ~JournalReader();
  JournalReader(const JournalReader&) = delete;
  JournalReader& operator=(const JournalReader&) = delete;
};

struct VerifyReport {
  uint64_t segments = 0;  // segment files present
  uint64_t frames = 0;    // good frames
  uint64_t records = 0;
  uint64_t first_seq = 0, last_seq = 0;  // of the readable journal
  std::optional<Damage> damage;           // first damage: the cut point
  std::vector<uint64_t> unreachable_segments;
  std::vector<std::string> index_problems;
  // Each segment read, in order, with the size it had then: what this
  // report vouches for (verify_record.h).
  struct Scanned {
    uint64_t segment = 0, size = 0;
  };
  std::vector<Scanned> scanned;
  bool ok() const { return !damage && index_problems.empty(); }
};

// Decompresses and checks everything: frame and segment checksums, record
// structure, seq continuity across the whole journal (kGap being the only
// allowed jump), segment numbering and stream id, and that each .idx
// agrees with its segment.
Result<VerifyReport> verify_journal(const std::string& store_dir);

}  // namespace kvmcdp::journal
