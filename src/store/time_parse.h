// Times a person types (--at) and times shown to a person.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/status.h"

namespace kvmcdp {

// What `date -d` users type, read against now_ns and the local zone (TZ):
//   2026-11-21T16:20:05Z, 2026-11-21T17:20:05.25+01:00, ...+0100, ... UTC
//   2026-11-21 17:20:05, 2026-11-21T17:20, 2026-11-21   local time
//   20:52:10, 20:52                                    today, local time
//   yesterday 10:30, today 10:30                       that day, local time
//   now, today (now), yesterday (24 hours ago)
//   10 minutes ago, 1 hour 30 min ago, 2 days ago      before now
//   -30s, -10m, -2h, -1d, -1h30m                       before now
//   @1764100000, @1764100000.5                         seconds since 1970
// A local time that the clocks skip or pass twice at a daylight-saving
// change is refused: only a UTC offset says which instant is meant.
// Result: ns since the epoch.  Errors are ErrorKind::kUsage, one line
// listing the accepted forms.
Result<uint64_t> parse_time(std::string_view text, uint64_t now_ns);

// An instant for a person: local time with its UTC offset (TZ honoured),
// "2026-11-25 20:52:10 +01:00", with milliseconds when it has any
// ("2026-11-25 20:52:10.123 +01:00").  parse_time reads it back.
std::string format_time_human(uint64_t ns);

// What a typed time was read as: "2026-11-25 20:52:10 +01:00 (19:52:10 UTC)".
std::string explain_time(uint64_t ns);

}  // namespace kvmcdp
