// Times given to --at: ISO 8601 with a zone, or relative to now.
#pragma once

#include <cstdint>
#include <string_view>

#include "status.h"

namespace kvmcdp {

// "2026-11-21T16:20:05Z", "2026-11-21T17:20:05.25+01:00", "...+0100":
// a zone is required (a time without one is ambiguous).  "-10m", "-30s",
// "-2h", "-1d": that long before now_ns.  Result: ns since the epoch.
// Errors are ErrorKind::kUsage with what was expected.
Result<uint64_t> parse_time(std::string_view text, uint64_t now_ns);

}  // namespace kvmcdp
