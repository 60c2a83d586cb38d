#include "cli/store_report.h"

#include <fmt/format.h>

#include "store/point.h"
#include "store/time_parse.h"

namespace kvmcdp {

using nlohmann::json;

json ranges_json(const StoreView& v) {
  json out = json::array();
  for (const auto& r : v.ranges)
    out.push_back({{"first_seq", r.first_seq},
                   {"first_time", format_time_ns(r.first_time_ns)},
                   {"first_time_ns", r.first_time_ns},
                   {"last_seq", r.last_seq},
                   {"last_time", format_time_ns(r.last_time_ns)},
                   {"last_time_ns", r.last_time_ns}});
  return out;
}

// The stretches between recoverable ranges, and a damaged tail: where
// restore is refused.
json gaps_json(const StoreView& v) {
  json out = json::array();
  for (size_t i = 1; i < v.ranges.size(); ++i)
    out.push_back({{"after_seq", v.ranges[i - 1].last_seq},
                   {"resumes_seq", v.ranges[i].first_seq},
                   {"from", format_time_ns(v.ranges[i - 1].last_time_ns)},
                   {"to", format_time_ns(v.ranges[i].first_time_ns)}});
  return out;
}

// What the last journal verify found, while it still describes the journal.
json verified_json(const StoreView& v) {
  if (!v.verified) return nullptr;
  json j = {{"seq", v.verified->verified_seq},
            {"time", format_time_ns(v.verified->time_ns)},
            {"time_ns", v.verified->time_ns},
            {"damage", nullptr}};
  if (v.verified->damage) j["damage"] = v.verified->damage->text;
  return j;
}

std::string verified_line(const StoreView& v) {
  if (!v.verified) return "not yet (kvmcdp journal verify reads every byte)";
  return fmt::format("up to seq {} at {}; {}", v.verified->verified_seq,
                     format_time_human(v.verified->time_ns),
                     v.verified->damage ? "damage at " + v.verified->damage->text
                                        : std::string("no damage"));
}

}  // namespace kvmcdp
