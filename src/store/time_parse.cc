// Reading the times a person types, and showing instants to a person.
//
// The accepted forms are the ones `date -d` users reach for, but the
// grammar is closed: every form is matched whole, and anything else is
// refused with the list of forms, so that a typo never turns into a
// different instant.  A time without a zone is local time (TZ); it is
// turned into an instant by asking mktime for both the standard and the
// daylight-saving reading and keeping those that read back unchanged, so
// that a time the clocks skip (none does) or pass twice (two do) at a
// daylight-saving change is detected and refused rather than guessed.
#include "store/time_parse.h"

#include <algorithm>
#include <cstdint>
#include <ctime>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace kvmcdp {
namespace {

constexpr uint64_t kNs = 1000000000ull;

// Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar, and
// back (H. Hinnant's days_from_civil / civil_from_days).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = unsigned(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + int64_t(doe) - 719468;
}

void civil_from_days(int64_t z, int64_t* y, int64_t* m, int64_t* d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = unsigned(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = int64_t(yoe) + era * 400 + (*m <= 2);
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

bool digits(std::string_view s, size_t at, size_t n, int64_t* out) {
  if (at + n > s.size()) return false;
  int64_t v = 0;
  for (size_t i = at; i < at + n; i++) {
    if (!is_digit(s[i])) return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return true;
}

// 1 to max_len digits at *at.
bool number(std::string_view s, size_t* at, size_t max_len, int64_t* out) {
  size_t n = 0;
  while (*at + n < s.size() && is_digit(s[*at + n])) n++;
  if (n == 0 || n > max_len) return false;
  digits(s, *at, n, out);
  *at += n;
  return true;
}

Status bad(std::string_view text) {
  return Status(ErrorKind::kUsage,
                "cannot read the time '" + std::string(text) +
                    "': use 2026-11-25 20:52:37 or 20:52:10 (local time), "
                    "2026-11-25T20:52:37Z or 2026-11-25T20:52:37+01:00, yesterday 10:30, "
                    "10 minutes ago, -1h30m, or @1764100000 (seconds since 1970)");
}

Status before_1970(std::string_view text) {
  return Status(ErrorKind::kUsage, "the time '" + std::string(text) + "' is before 1970");
}

// Instants are ns since 1970 in 64 bits, signed wherever they are
// subtracted: the last one is 2262-04-11T23:47:16.854775807Z.  A time past
// it must be refused here, or its ns wrap around into an ordinary date.
constexpr uint64_t kMaxNs = uint64_t(INT64_MAX);

Status after_2262(std::string_view text) {
  return Status(ErrorKind::kUsage,
                "the time '" + std::string(text) +
                    "' is after 2262-04-11 23:47:16 UTC, the latest time kvmcdp can hold");
}

// secs.frac since 1970 as ns, refused outside 1970..2262.
Result<uint64_t> to_ns(std::string_view text, int64_t secs, int64_t frac_ns) {
  if (secs < 0) return before_1970(text);
  if (uint64_t(secs) > kMaxNs / kNs ||
      (uint64_t(secs) == kMaxNs / kNs && uint64_t(frac_ns) > kMaxNs % kNs))
    return after_2262(text);
  return uint64_t(secs) * kNs + uint64_t(frac_ns);
}

struct Civil {
  int64_t y = 0, mo = 0, d = 0, h = 0, mi = 0, s = 0, frac_ns = 0;
};

bool valid_date(const Civil& c) {
  static const int kDays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (c.y % 4 == 0 && c.y % 100 != 0) || c.y % 400 == 0;
  return c.mo >= 1 && c.mo <= 12 && c.d >= 1 && c.d <= kDays[c.mo - 1] &&
         !(c.mo == 2 && c.d == 29 && !leap);
}

// YYYY-MM-DD at *at.
bool parse_date(std::string_view t, size_t* at, Civil* c) {
  size_t i = *at;
  if (!digits(t, i, 4, &c->y) || i + 10 > t.size() || t[i + 4] != '-' ||
      !digits(t, i + 5, 2, &c->mo) || t[i + 7] != '-' || !digits(t, i + 8, 2, &c->d))
    return false;
  if (i + 10 < t.size() && is_digit(t[i + 10])) return false;
  *at = i + 10;
  return valid_date(*c);
}

// H:MM, HH:MM, HH:MM:SS, HH:MM:SS.fff at *at; leap_second allows :60.
bool parse_clock(std::string_view t, size_t* at, Civil* c, bool leap_second) {
  size_t i = *at;
  if (!number(t, &i, 2, &c->h) || i >= t.size() || t[i] != ':' || !digits(t, i + 1, 2, &c->mi))
    return false;
  i += 3;
  c->s = 0;
  c->frac_ns = 0;
  if (i < t.size() && t[i] == ':') {
    if (!digits(t, i + 1, 2, &c->s)) return false;
    i += 3;
    if (i < t.size() && (t[i] == '.' || t[i] == ',')) {
      i++;
      size_t n = 0;
      int64_t scale = 100000000;
      while (i < t.size() && is_digit(t[i])) {
        if (n < 9) c->frac_ns += (t[i] - '0') * scale, scale /= 10;
        i++, n++;
      }
      if (n == 0) return false;
    }
  }
  if (i < t.size() && (is_digit(t[i]) || t[i] == ':')) return false;
  if (c->h > 23 || c->mi > 59 || c->s > (leap_second ? 60 : 59)) return false;
  *at = i;
  return true;
}

// What follows a date and time: nothing (local time), or a zone: " utc",
// "z", "+01:00", "+0100", "+01", with or without a space before.
// *zone_s is seconds east of UTC.
bool parse_zone(std::string_view t, size_t at, bool* has_zone, int64_t* zone_s) {
  *has_zone = false;
  *zone_s = 0;
  if (at == t.size()) return true;
  if (t[at] == ' ') at++;
  std::string_view z = t.substr(at);
  *has_zone = true;
  if (z == "z" || z == "utc" || z == "gmt") return true;
  if (z.empty() || (z[0] != '+' && z[0] != '-')) return false;
  int64_t zh = 0, zm = 0;
  std::string_view n = z.substr(1);
  if (n.size() == 5 && n[2] == ':' && digits(n, 0, 2, &zh) && digits(n, 3, 2, &zm)) {
  } else if (n.size() == 4 && digits(n, 0, 2, &zh) && digits(n, 2, 2, &zm)) {
  } else if (n.size() == 2 && digits(n, 0, 2, &zh)) {
  } else {
    return false;
  }
  if (zh > 23 || zm > 59) return false;
  *zone_s = (zh * 3600 + zm * 60) * (z[0] == '+' ? 1 : -1);
  return true;
}

Result<uint64_t> from_utc(std::string_view text, const Civil& c, int64_t zone_s) {
  int64_t secs = days_from_civil(c.y, unsigned(c.mo), unsigned(c.d)) * 86400 + c.h * 3600 +
                 c.mi * 60 + c.s - zone_s;
  return to_ns(text, secs, c.frac_ns);
}

std::string offset_text(long gmtoff) {
  long a = gmtoff < 0 ? -gmtoff : gmtoff;
  return fmt::format("{}{:02}:{:02}", gmtoff < 0 ? '-' : '+', a / 3600, a / 60 % 60);
}

// The instants whose local reading is c: one normally, none in the hour
// the clocks skip, two in the hour they pass twice.
Result<uint64_t> from_local(std::string_view text, const Civil& c) {
  std::vector<std::pair<time_t, long>> found;
  for (int dst : {0, 1}) {
    struct tm tm = {};
    tm.tm_year = int(c.y - 1900);
    tm.tm_mon = int(c.mo - 1);
    tm.tm_mday = int(c.d);
    tm.tm_hour = int(c.h);
    tm.tm_min = int(c.mi);
    tm.tm_sec = int(c.s);
    tm.tm_isdst = dst;
    time_t t = mktime(&tm);
    struct tm back = {};
    if (!localtime_r(&t, &back)) continue;
    if (back.tm_year != tm.tm_year || back.tm_mon != int(c.mo - 1) || back.tm_mday != int(c.d) ||
        back.tm_hour != int(c.h) || back.tm_min != int(c.mi) || back.tm_sec != int(c.s))
      continue;
    bool dup = false;
    for (const auto& f : found) dup |= f.first == t;
    if (!dup) found.push_back({t, back.tm_gmtoff});
  }
  std::string shown = fmt::format("{:04}-{:02}-{:02} {:02}:{:02}:{:02}", c.y, c.mo, c.d, c.h,
                                  c.mi, c.s);
  if (found.empty())
    return Status(ErrorKind::kUsage,
                  fmt::format("the local time {} does not exist (the clocks skipped it at a "
                              "daylight-saving change): give it with its UTC offset, "
                              "e.g. {}+00:00",
                              shown, fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", c.y,
                                                 c.mo, c.d, c.h, c.mi, c.s)));
  if (found.size() > 1) {
    if (found[0].first > found[1].first) std::swap(found[0], found[1]);
    std::string iso =
        fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", c.y, c.mo, c.d, c.h, c.mi, c.s);
    return Status(ErrorKind::kUsage,
                  fmt::format("the local time {} happens twice (the clocks went back at a "
                              "daylight-saving change): say which, {}{} (the first) or {}{} "
                              "(the second)",
                              shown, iso, offset_text(found[0].second), iso,
                              offset_text(found[1].second)));
  }
  return to_ns(text, int64_t(found[0].first), c.frac_ns);
}

// The local calendar day `days_back` days before now.
Civil local_day(uint64_t now_ns, int days_back) {
  time_t s = time_t(now_ns / kNs);
  struct tm tm = {};
  localtime_r(&s, &tm);
  Civil c;
  int64_t z = days_from_civil(tm.tm_year + 1900, unsigned(tm.tm_mon + 1), unsigned(tm.tm_mday)) -
              days_back;
  civil_from_days(z, &c.y, &c.mo, &c.d);
  return c;
}

Result<uint64_t> back_from(std::string_view text, uint64_t now, uint64_t secs) {
  if (secs > now / kNs) return before_1970(text);
  uint64_t back = secs * kNs;
  if (back > now) return before_1970(text);
  return now - back;
}

// "-1h30m", "-10m", "-90s": number-unit pairs after a minus.
Result<uint64_t> parse_short_relative(std::string_view text, std::string_view t, uint64_t now) {
  size_t i = 1;
  uint64_t secs = 0;
  if (i >= t.size()) return bad(text);
  while (i < t.size()) {
    int64_t n = 0;
    if (!number(t, &i, 9, &n) || i >= t.size()) return bad(text);
    uint64_t unit;
    switch (t[i++]) {
      case 's': unit = 1; break;
      case 'm': unit = 60; break;
      case 'h': unit = 3600; break;
      case 'd': unit = 86400; break;
      case 'w': unit = 7 * 86400; break;
      default: return bad(text);
    }
    // Saturating: many pairs must not wrap round to a small offset.
    secs = std::min(secs + uint64_t(n) * unit, kMaxNs / kNs + 1);
  }
  return back_from(text, now, secs);
}

// "10 minutes ago", "1 hour 30 min ago", "2days ago": the words before
// " ago" (given without it).
Result<uint64_t> parse_ago(std::string_view text, std::string_view t, uint64_t now) {
  size_t i = 0;
  uint64_t secs = 0;
  if (t.empty()) return bad(text);
  while (i < t.size()) {
    int64_t n = 0;
    if (!number(t, &i, 9, &n)) return bad(text);
    if (i < t.size() && t[i] == ' ') i++;
    size_t w = i;
    while (i < t.size() && t[i] != ' ') i++;
    std::string_view word = t.substr(w, i - w);
    if (i < t.size()) i++;
    uint64_t unit;
    if (word == "sec" || word == "secs" || word == "second" || word == "seconds") unit = 1;
    else if (word == "min" || word == "mins" || word == "minute" || word == "minutes") unit = 60;
    else if (word == "hour" || word == "hours") unit = 3600;
    else if (word == "day" || word == "days") unit = 86400;
    else if (word == "week" || word == "weeks") unit = 7 * 86400;
    else return bad(text);
    secs = std::min(secs + uint64_t(n) * unit, kMaxNs / kNs + 1);
  }
  return back_from(text, now, secs);
}

// Lower case, no space at either end, one space between words.
std::string normalise(std::string_view text) {
  std::string t;
  for (char ch : text) {
    bool space = ch == ' ' || ch == '\t';
    if (space) {
      if (!t.empty() && t.back() != ' ') t += ' ';
    } else {
      t += (ch >= 'A' && ch <= 'Z') ? char(ch - 'A' + 'a') : ch;
    }
  }
  if (!t.empty() && t.back() == ' ') t.pop_back();
  return t;
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

}  // namespace

Result<uint64_t> parse_time(std::string_view text, uint64_t now_ns) {
  tzset();
  std::string norm = normalise(text);
  std::string_view t = norm;
  if (t.empty()) return bad(text);
  if (t == "now" || t == "today") return now_ns;
  if (t == "yesterday") return back_from(text, now_ns, 86400);
  if (t[0] == '@') {
    size_t i = 1;
    int64_t s = 0;
    if (!number(t, &i, 12, &s)) return bad(text);
    int64_t frac = 0;
    if (i < t.size() && t[i] == '.') {
      i++;
      size_t n = 0;
      int64_t scale = 100000000;
      while (i < t.size() && is_digit(t[i])) {
        if (n < 9) frac += (t[i] - '0') * scale, scale /= 10;
        i++, n++;
      }
      if (n == 0) return bad(text);
    }
    if (i != t.size()) return bad(text);
    return to_ns(text, s, frac);
  }
  if (t[0] == '-') return parse_short_relative(text, t, now_ns);
  if (t.size() > 4 && t.substr(t.size() - 4) == " ago")
    return parse_ago(text, t.substr(0, t.size() - 4), now_ns);
  for (auto [word, back] : {std::pair<std::string_view, int>{"today ", 0}, {"yesterday ", 1}}) {
    if (!starts_with(t, word)) continue;
    Civil c = local_day(now_ns, back);
    size_t i = word.size();
    if (!parse_clock(t, &i, &c, false) || i != t.size()) return bad(text);
    return from_local(text, c);
  }
  Civil c;
  size_t i = 0;
  if (parse_date(t, &i, &c)) {
    if (i == t.size()) return from_local(text, c);  // midnight
    if (t[i] != 't' && t[i] != ' ') return bad(text);
    i++;
    if (!parse_clock(t, &i, &c, true)) return bad(text);
    bool has_zone;
    int64_t zone_s;
    if (!parse_zone(t, i, &has_zone, &zone_s)) return bad(text);
    if (has_zone) return from_utc(text, c, zone_s);
    if (c.s == 60) return bad(text);
    return from_local(text, c);
  }
  Civil today = local_day(now_ns, 0);
  i = 0;
  if (parse_clock(t, &i, &today, false) && i == t.size()) return from_local(text, today);
  return bad(text);
}

std::string format_time_human(uint64_t ns) {
  tzset();
  time_t s = time_t(ns / kNs);
  struct tm tm = {};
  localtime_r(&s, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  uint64_t ms = ns / 1000000 % 1000;
  return ms ? fmt::format("{}.{:03} {}", buf, ms, offset_text(tm.tm_gmtoff))
            : fmt::format("{} {}", buf, offset_text(tm.tm_gmtoff));
}

std::string explain_time(uint64_t ns) {
  tzset();
  time_t s = time_t(ns / kNs);
  struct tm local = {}, utc = {};
  localtime_r(&s, &local);
  gmtime_r(&s, &utc);
  char buf[32];
  bool same_day = local.tm_year == utc.tm_year && local.tm_yday == utc.tm_yday;
  strftime(buf, sizeof buf, same_day ? "%H:%M:%S" : "%Y-%m-%d %H:%M:%S", &utc);
  uint64_t ms = ns / 1000000 % 1000;
  std::string utc_text = ms ? fmt::format("{}.{:03}", buf, ms) : std::string(buf);
  return fmt::format("{} ({} UTC)", format_time_human(ns), utc_text);
}

}  // namespace kvmcdp
