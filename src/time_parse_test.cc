#include "time_parse.h"

#include <doctest/doctest.h>

namespace kvmcdp {

TEST_CASE("parse_time: ISO 8601 with zones and fractions") {
  const uint64_t base = 1795278005ull * 1000000000ull;  // 2026-11-21T16:20:05Z
  CHECK(*parse_time("2026-11-21T16:20:05Z", 0) == base);
  CHECK(*parse_time("2026-11-21T17:20:05+01:00", 0) == base);
  CHECK(*parse_time("2026-11-21T15:20:05-0100", 0) == base);
  CHECK(*parse_time("2026-11-21T16:20:05.25Z", 0) == base + 250000000);
  CHECK(*parse_time("2026-11-21T16:20:05.123456789123Z", 0) == base + 123456789);
  CHECK(*parse_time("1970-01-01T00:00:00Z", 0) == 0);
  CHECK(*parse_time("2024-02-29T00:00:00Z", 0) == 1709164800ull * 1000000000ull);
}

TEST_CASE("parse_time: relative") {
  const uint64_t now = 1000000ull * 1000000000ull;
  CHECK(*parse_time("-30s", now) == now - 30ull * 1000000000ull);
  CHECK(*parse_time("-10m", now) == now - 600ull * 1000000000ull);
  CHECK(*parse_time("-2h", now) == now - 7200ull * 1000000000ull);
  CHECK(*parse_time("-1d", now) == now - 86400ull * 1000000000ull);
}

TEST_CASE("parse_time: errors are values") {
  for (const char* t : {"", "-", "-5", "-5x", "5m", "2026-11-21T16:20:05",
                        "2026-11-21 16:20Z", "2026-13-01T00:00:00Z",
                        "2025-02-29T00:00:00Z", "2026-11-21T16:20:05+1:00",
                        "2026-11-21T16:20:05.Z", "2026-11-21T16:20:05Zjunk",
                        "1969-12-31T23:59:59Z"}) {
    auto r = parse_time(t, 1000ull * 1000000000ull);
    CHECK_MESSAGE(!r, t);
    if (!r) CHECK(r.status().kind() == ErrorKind::kUsage);
  }
}

}  // namespace kvmcdp
