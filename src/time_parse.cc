#include "time_parse.h"

#include <string>

namespace kvmcdp {
namespace {

// Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
// (H. Hinnant's days_from_civil).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = unsigned(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + int64_t(doe) - 719468;
}

bool digits(std::string_view s, size_t at, size_t n, int64_t* out) {
  if (at + n > s.size()) return false;
  int64_t v = 0;
  for (size_t i = at; i < at + n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return true;
}

Result<uint64_t> bad(std::string_view text) {
  return Status(ErrorKind::kUsage,
                "cannot parse time '" + std::string(text) +
                    "': expected ISO 8601 with a zone (2026-11-21T16:20:05Z, "
                    "+01:00) or a relative time (-30s, -10m, -2h, -1d)");
}

Result<uint64_t> parse_relative(std::string_view t, uint64_t now) {
  if (t.size() < 3) return bad(t);
  int64_t n;
  if (!digits(t, 1, t.size() - 2, &n) || t.size() - 2 > 9) return bad(t);
  uint64_t unit;
  switch (t.back()) {
    case 's': unit = 1; break;
    case 'm': unit = 60; break;
    case 'h': unit = 3600; break;
    case 'd': unit = 86400; break;
    default: return bad(t);
  }
  uint64_t back = uint64_t(n) * unit * 1000000000ull;
  if (back > now) return Status(ErrorKind::kUsage, "time '" + std::string(t) + "' is before 1970");
  return now - back;
}

}  // namespace

Result<uint64_t> parse_time(std::string_view t, uint64_t now_ns) {
  if (!t.empty() && t[0] == '-') return parse_relative(t, now_ns);
  int64_t y, mo, d, h, mi, s;
  if (!digits(t, 0, 4, &y) || t.size() < 20 || t[4] != '-' || !digits(t, 5, 2, &mo) ||
      t[7] != '-' || !digits(t, 8, 2, &d) || (t[10] != 'T' && t[10] != 't' && t[10] != ' ') ||
      !digits(t, 11, 2, &h) || t[13] != ':' || !digits(t, 14, 2, &mi) ||
      t[16] != ':' || !digits(t, 17, 2, &s))
    return bad(t);
  static const int kDays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (mo < 1 || mo > 12 || d < 1 || d > kDays[mo - 1] || (mo == 2 && d == 29 && !leap) ||
      h > 23 || mi > 59 || s > 60)
    return bad(t);
  size_t at = 19;
  int64_t frac_ns = 0;
  if (at < t.size() && (t[at] == '.' || t[at] == ',')) {
    at++;
    size_t n = 0;
    int64_t scale = 100000000;
    while (at < t.size() && t[at] >= '0' && t[at] <= '9') {
      if (n < 9) frac_ns += (t[at] - '0') * scale, scale /= 10;
      at++, n++;
    }
    if (n == 0) return bad(t);
  }
  int64_t zone_s = 0;
  if (at < t.size() && (t[at] == 'Z' || t[at] == 'z') && at + 1 == t.size()) {
  } else if (at < t.size() && (t[at] == '+' || t[at] == '-')) {
    int64_t zh, zm;
    std::string_view z = t.substr(at + 1);
    if (z.size() == 5 && z[2] == ':' && digits(z, 0, 2, &zh) && digits(z, 3, 2, &zm)) {
    } else if (z.size() == 4 && digits(z, 0, 2, &zh) && digits(z, 2, 2, &zm)) {
    } else {
      return bad(t);
    }
    if (zh > 23 || zm > 59) return bad(t);
    zone_s = (zh * 3600 + zm * 60) * (t[at] == '+' ? 1 : -1);
  } else {
    return bad(t);
  }
  int64_t secs = days_from_civil(y, unsigned(mo), unsigned(d)) * 86400 + h * 3600 +
                 mi * 60 + s - zone_s;
  if (secs < 0) return Status(ErrorKind::kUsage, "time '" + std::string(t) + "' is before 1970");
  return uint64_t(secs) * 1000000000ull + uint64_t(frac_ns);
}

}  // namespace kvmcdp
