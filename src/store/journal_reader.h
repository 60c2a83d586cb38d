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

#include "journal/journal_codec.h"
#include "journal/segment_list.h"
#include "journal/segment_reader.h"
#include "base/status.h"

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
  // The first seq the journal must hold (journal_start_seq()); true when
  // its first segments are gone, so nothing in it can be replayed.
  bool start_missing() const { return start_missing_; }
  uint64_t start_seq() const { return start_seq_; }
  // The last seq protect.json says was written durably, when the journal
  // ends before it (its last segments are gone); 0 otherwise.
  uint64_t missing_tail_seq() const { return missing_tail_seq_; }
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
  uint64_t start_seq_ = 1;
  bool start_missing_ = false;
  uint64_t missing_tail_seq_ = 0;
  uint64_t open_segment_ = 0;
  int fd_ = -1;
  std::vector<uint8_t> scratch_;

 public:
  ~JournalReader();
  JournalReader(const JournalReader&) = delete;
  JournalReader& operator=(const JournalReader&) = delete;
};

// The first seq a store's journal must hold: 1 for a stream the base copy
// started with, folded_seq + 1 once kvmcdp prune folded older records into
// the base (manifest.h).  Deleted first segments leave the journal starting
// later: a hole, since every later point is the base plus all records
// before it.  0 when the manifest cannot be read (nothing to check against).
uint64_t journal_start_seq(const std::string& store_dir);

// What protect.json (protect_state.h) says is durable.  Read it BEFORE
// the journal: protect commits a record and only then publishes its seq,
// so a claim read first is never ahead of a journal read after it, while
// a claim read after a live protect's newer commits would make them look
// like lost segments.
struct DurableClaim {
  uint64_t stream_id = 0;
  uint64_t durable_seq = 0;
};
DurableClaim read_durable_claim(const std::string& store_dir);
// The claimed durable seq when it lies past the journal's `last_seq` for
// the same stream (the last segments are missing), else 0.
uint64_t missing_tail(const DurableClaim& claim, uint64_t stream_id, uint64_t last_seq);
Damage missing_tail_damage(const std::string& store_dir, uint64_t last_seq, uint64_t durable);

// The damage a journal starting at `first` is, given `start`.
Damage missing_start_damage(const std::string& first_segment_path, uint64_t start,
                            uint64_t first, uint64_t file_size);

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
