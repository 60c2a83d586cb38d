// Turning what the user asked for (--seq, --at, --mark, --latest) into one
// recoverable seq of a store, with errors that name the nearest
// recoverable points.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "store/store_view.h"
#include "store/time_parse.h"

namespace kvmcdp {

struct PointSpec {
  std::optional<uint64_t> seq;
  std::optional<std::string> at;
  std::optional<std::string> mark;
  bool latest = false;
};

// With --at, *at_meaning (if given) says which instant the typed time was
// read as ("--at 20:52:10 means 2026-11-25 20:52:10 +01:00 (19:52:10 UTC)").
// Several marks of the name asked for: refused (kUsage), listing them.
Result<uint64_t> resolve_point(StoreView& view, const PointSpec& spec, uint64_t now_ns,
                               std::string* at_meaning = nullptr);

// For JSON: 2026-11-21T16:20:05.123Z.  For people: format_time_human
// (time_parse.h), local time with its offset.
std::string format_time_ns(uint64_t ns);

// The time of record `seq` (its frame's records are read).
Result<uint64_t> record_time(journal::JournalReader& r, uint64_t seq);

}  // namespace kvmcdp
