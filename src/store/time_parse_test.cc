#include "store/time_parse.h"

#include <doctest/doctest.h>

#include <cstdlib>
#include <ctime>
#include <optional>
#include <string>

namespace kvmcdp {
namespace {

constexpr uint64_t kS = 1000000000ull;

// Sets TZ for one test and puts the old value back.
struct ZoneGuard {
  std::optional<std::string> old;
  explicit ZoneGuard(const char* zone) {
    if (const char* o = std::getenv("TZ")) old = o;
    setenv("TZ", zone, 1);
    tzset();
  }
  ~ZoneGuard() {
    if (old) setenv("TZ", old->c_str(), 1);
    else unsetenv("TZ");
    tzset();
  }
};

// An instant written with its zone (checked against fixed numbers below).
uint64_t utc(const char* iso) {
  auto r = parse_time(iso, 0);
  REQUIRE_MESSAGE(r, iso);
  return *r;
}

void check_refused(const char* text, uint64_t now, const char* says) {
  auto r = parse_time(text, now);
  CHECK_MESSAGE(!r, text);
  if (r) return;
  CHECK(r.status().kind() == ErrorKind::kUsage);
  CHECK_MESSAGE(r.status().message().find(says) != std::string::npos, r.status().message());
  CHECK(r.status().message().find('\n') == std::string::npos);
}

}  // namespace

TEST_CASE("parse_time: ISO 8601 with zones and fractions") {
  ZoneGuard berlin("Europe/Berlin");  // a zone must not change these
  const uint64_t base = 1795278005ull * kS;  // 2026-11-21T16:20:05Z
  CHECK(*parse_time("2026-11-21T16:20:05Z", 0) == base);
  CHECK(*parse_time("2026-11-21T17:20:05+01:00", 0) == base);
  CHECK(*parse_time("2026-11-21T15:20:05-0100", 0) == base);
  CHECK(*parse_time("2026-11-21T18:20:05+02", 0) == base);
  CHECK(*parse_time("2026-11-21 16:20:05 UTC", 0) == base);
  CHECK(*parse_time("2026-11-21 17:20:05 +01:00", 0) == base);
  CHECK(*parse_time("2026-11-21T16:20:05.25Z", 0) == base + 250000000);
  CHECK(*parse_time("2026-11-21T16:20:05.123456789123Z", 0) == base + 123456789);
  CHECK(*parse_time("2026-11-21T16:20Z", 0) == base - 5 * kS);
  CHECK(*parse_time("1970-01-01T00:00:00Z", 0) == 0);
  CHECK(*parse_time("2024-02-29T00:00:00Z", 0) == 1709164800ull * kS);
}

TEST_CASE("parse_time: relative to now") {
  const uint64_t now = 1795640400ull * kS;  // 2026-11-25T21:00:00Z
  ZoneGuard berlin("Europe/Berlin");
  CHECK(*parse_time("-30s", now) == now - 30 * kS);
  CHECK(*parse_time("-10m", now) == now - 600 * kS);
  CHECK(*parse_time("-2h", now) == now - 7200 * kS);
  CHECK(*parse_time("-1d", now) == now - 86400 * kS);
  CHECK(*parse_time("-1h30m", now) == now - 5400 * kS);
  CHECK(*parse_time("-1d2h3m4s", now) == now - (86400 + 7200 + 180 + 4) * kS);
  CHECK(*parse_time("10 minutes ago", now) == now - 600 * kS);
  CHECK(*parse_time("1 minute ago", now) == now - 60 * kS);
  CHECK(*parse_time("10min ago", now) == now - 600 * kS);
  CHECK(*parse_time("1 hour 30 min ago", now) == now - 5400 * kS);
  CHECK(*parse_time("  2 Days  ago ", now) == now - 2 * 86400 * kS);
  CHECK(*parse_time("45 seconds ago", now) == now - 45 * kS);
  CHECK(*parse_time("1 week ago", now) == now - 7 * 86400 * kS);
  CHECK(*parse_time("now", now) == now);
  CHECK(*parse_time("today", now) == now);
  CHECK(*parse_time("yesterday", now) == now - 86400 * kS);
  CHECK(*parse_time("@1764100000", now) == 1764100000ull * kS);
  CHECK(*parse_time("@1764100000.5", now) == 1764100000ull * kS + kS / 2);
}

TEST_CASE("parse_time: local time without a zone (TZ=Europe/Berlin)") {
  ZoneGuard berlin("Europe/Berlin");
  const uint64_t now = 1795640400ull * kS;  // 2026-11-25T21:00:00Z = 22:00 +01:00
  CHECK(utc("2026-11-25T19:52:10Z") == 1795636330ull * kS);
  CHECK(*parse_time("20:52:10", now) == utc("2026-11-25T19:52:10Z"));
  CHECK(*parse_time("20:52", now) == utc("2026-11-25T19:52:00Z"));
  CHECK(*parse_time("9:05", now) == utc("2026-11-25T08:05:00Z"));
  CHECK(*parse_time("2026-11-25 20:52:37", now) == utc("2026-11-25T19:52:37Z"));
  CHECK(*parse_time("2026-11-25T20:52:37.5", now) == utc("2026-11-25T19:52:37.5Z"));
  CHECK(*parse_time("2026-11-25 20:52", now) == utc("2026-11-25T19:52:00Z"));
  CHECK(*parse_time("2026-11-25", now) == utc("2026-11-24T23:00:00Z"));
  CHECK(*parse_time("yesterday 10:30", now) == utc("2026-11-24T09:30:00Z"));
  CHECK(*parse_time("today 10:30", now) == utc("2026-11-25T09:30:00Z"));
  // Summer time: +02:00.
  CHECK(*parse_time("2026-07-01 12:00:00", now) == utc("2026-07-01T10:00:00Z"));
  // Just after local midnight the local day is not the UTC day.
  const uint64_t after_midnight = utc("2026-11-25T23:30:00Z");  // 00:30 on the 26th
  CHECK(*parse_time("00:10", after_midnight) == utc("2026-11-25T23:10:00Z"));
  CHECK(*parse_time("yesterday 23:00", after_midnight) == utc("2026-11-25T22:00:00Z"));
}

TEST_CASE("parse_time: daylight-saving changes (TZ=Europe/Berlin)") {
  ZoneGuard berlin("Europe/Berlin");
  const uint64_t now = 1795640400ull * kS;
  // 2026-03-29: 02:00 +01:00 becomes 03:00 +02:00.
  CHECK(*parse_time("2026-03-29 01:59:59", now) == utc("2026-03-29T00:59:59Z"));
  CHECK(*parse_time("2026-03-29 03:00:00", now) == utc("2026-03-29T01:00:00Z"));
  check_refused("2026-03-29 02:30:00", now, "does not exist");
  check_refused("2026-03-29 02:00", now, "does not exist");
  // 2026-10-25: 03:00 +02:00 becomes 02:00 +01:00, 02:xx happens twice.
  CHECK(*parse_time("2026-10-25 01:59:59", now) == utc("2026-10-24T23:59:59Z"));
  CHECK(*parse_time("2026-10-25 03:00:00", now) == utc("2026-10-25T02:00:00Z"));
  check_refused("2026-10-25 02:30:00", now, "happens twice");
  check_refused("2026-10-25 02:30:00", now, "2026-10-25T02:30:00+02:00 (the first)");
  // With the offset it is one instant again.
  CHECK(*parse_time("2026-10-25T02:30:00+02:00", now) == utc("2026-10-25T00:30:00Z"));
  CHECK(*parse_time("2026-10-25T02:30:00+01:00", now) == utc("2026-10-25T01:30:00Z"));
  // "yesterday" over the change: the local day before, not 24 hours.
  const uint64_t sunday_noon = utc("2026-03-29T12:00:00Z");  // 14:00 +02:00
  CHECK(*parse_time("yesterday 10:30", sunday_noon) == utc("2026-03-28T09:30:00Z"));
  CHECK(*parse_time("today 10:30", sunday_noon) == utc("2026-03-29T08:30:00Z"));
  CHECK(*parse_time("01:30", sunday_noon) == utc("2026-03-29T00:30:00Z"));
  check_refused("02:30", sunday_noon, "does not exist");
}

TEST_CASE("parse_time: other zones") {
  const uint64_t now = 1795640400ull * kS;
  {
    ZoneGuard z("UTC");
    CHECK(*parse_time("20:52:10", now) == utc("2026-11-25T20:52:10Z"));
  }
  {
    ZoneGuard z("America/New_York");  // 16:00 -05:00
    CHECK(*parse_time("20:52:10", now) == utc("2026-11-26T01:52:10Z"));
    CHECK(*parse_time("2026-11-25 20:52:37", now) == utc("2026-11-26T01:52:37Z"));
  }
}

TEST_CASE("parse_time: what is not one clear instant is refused") {
  ZoneGuard berlin("Europe/Berlin");
  const uint64_t now = 1795640400ull * kS;
  for (const char* t :
       {"", " ", "-", "-5", "-5x", "-m", "-1h30", "5m", "10 minutes", "in 10 minutes",
        "1 month ago", "1 year ago", "ago", "10 parsecs ago", "tomorrow", "yesterday 25:00",
        "25:00", "20:60", "20:52:61", "2026-11-25 20:52:60", "11/25/2026", "25.11.2026",
        "2026-13-01T00:00:00Z", "2025-02-29T00:00:00Z", "2026-11-21T16:20:05+1:00",
        "2026-11-21T16:20:05.Z", "2026-11-21T16:20:05Zjunk", "2026-11-21T16:20:05 CET",
        "20:52:10Z", "2026-11-2120:52", "@", "@12x", "@-5", "1969-12-31T23:59:59Z",
        "1969-12-31 23:00", "-999999999w", "1764100000"}) {
    CAPTURE(t);
    check_refused(t, now, "");
  }
  check_refused("soon", now, "use 2026-11-25 20:52:37 or 20:52:10 (local time)");
  check_refused("soon", now, "10 minutes ago, -1h30m, or @1764100000");
  check_refused("1969-12-31T23:59:59Z", now, "before 1970");
}

TEST_CASE("parse_time: times 64-bit ns since 1970 cannot hold are refused, never wrapped") {
  ZoneGuard berlin("Europe/Berlin");
  const uint64_t now = 1795640400ull * kS;  // 2026-11-25T21:00:00Z
  // The last instant that fits, and the first one past it.
  CHECK(*parse_time("2262-04-11T23:47:16.854775807Z", now) == uint64_t(INT64_MAX));
  check_refused("2262-04-11T23:47:16.854775808Z", now, "after 2262-04-11 23:47:16 UTC");
  // 584 years ahead wraps 2^64 ns round to this year; 2999 wraps to 2414.
  for (const char* t : {"2610-11-25T21:00:00Z", "2610-11-25 22:00", "2999-01-01T00:00:00Z",
                        "2999-01-01", "9999-12-31 23:59:59", "2263-01-01T00:00:00+01:00",
                        "@9223372037", "@999999999999", "@9223372036.9"}) {
    CAPTURE(t);
    check_refused(t, now, "after 2262-04-11 23:47:16 UTC");
  }
  CHECK(*parse_time("@9223372036.8", now) == 9223372036ull * kS + 800000000);
  // Offsets back past 1970, however they are summed.
  for (const char* t : {"-999999999d", "-999999999w", "999999999 weeks ago",
                        "-999999999w999999999w999999999w999999999w999999999w",
                        "999999999 days 999999999 weeks ago"}) {
    CAPTURE(t);
    check_refused(t, now, "before 1970");
  }
}

TEST_CASE("format_time_human: local time with its offset, read back by parse_time") {
  const uint64_t t = 1795278005ull * kS;  // 2026-11-21T16:20:05Z
  {
    ZoneGuard z("Europe/Berlin");
    CHECK(format_time_human(t) == "2026-11-21 17:20:05 +01:00");
    CHECK(format_time_human(t + 123456789) == "2026-11-21 17:20:05.123 +01:00");
    CHECK(format_time_human(utc("2026-07-01T10:00:00Z")) == "2026-07-01 12:00:00 +02:00");
    CHECK(explain_time(utc("2026-11-25T19:52:10Z")) ==
          "2026-11-25 20:52:10 +01:00 (19:52:10 UTC)");
    CHECK(explain_time(utc("2026-11-25T23:30:00.25Z")) ==
          "2026-11-26 00:30:00.250 +01:00 (2026-11-25 23:30:00.250 UTC)");
    // What points prints can be given back to --at, even in the hour that
    // happens twice (the offset says which).
    for (uint64_t x : {t + 123000000, utc("2026-10-25T00:30:00Z"), utc("2026-10-25T01:30:00Z")})
      CHECK(*parse_time(format_time_human(x), 0) == x);
  }
  {
    ZoneGuard z("America/New_York");
    CHECK(format_time_human(t) == "2026-11-21 11:20:05 -05:00");
  }
  {
    ZoneGuard z("UTC");
    CHECK(format_time_human(t) == "2026-11-21 16:20:05 +00:00");
  }
}

}  // namespace kvmcdp
