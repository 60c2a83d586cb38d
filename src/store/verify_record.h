// The result of the last `kvmcdp journal verify`, kept in STORE/verify.json
// so that points, status and restore know of damage that only a full read
// finds (a bad byte inside a closed, indexed segment passes the quick
// checks of opening the journal).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "store/journal_reader.h"
#include "base/status.h"

namespace kvmcdp {

struct VerifyRecord {
  uint64_t time_ns = 0;        // when verify ran
  uint64_t verified_seq = 0;   // the last good record it read
  struct Segment {
    uint64_t number = 0, size = 0, mtime_ns = 0;
  };
  std::vector<Segment> segments;  // what it read, in order
  struct DamageAt {
    uint64_t segment = 0, offset = 0;
    std::string text;  // Damage::to_string()
  };
  std::optional<DamageAt> damage;
};

std::string verify_record_path(const std::string& store_dir);

// Keeps `report` (the journal as verify_journal read it at time_ns).
// Returns false, writing nothing, when a segment verify read changed
// while it was read (a writer appended to the damaged one, say: the
// damage may have been its unfinished tail).
Result<bool> save_verify_record(const std::string& store_dir,
                                const journal::VerifyReport& report, uint64_t time_ns);

// The kept result if it still describes the journal: every segment it
// read is there unchanged (same size and mtime), except that the last one
// may have grown if it was not the damaged one; segments folded away by
// prune are allowed to be gone.  nullopt when there is none, or it no
// longer applies.
std::optional<VerifyRecord> load_verify_record(const std::string& store_dir);

}  // namespace kvmcdp
