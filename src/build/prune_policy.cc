// The retention rules, as restic's `forget` applies them: nodes are taken
// newest first; keep-last keeps the first N; keep-hourly (keep-daily)
// keeps a node when its hour (day) differs from the previous kept-or-not
// node's and fewer than N such buckets were kept; keep-within keeps every
// node no older than the duration before the newest node.  A node kept
// by any rule is kept.
#include "build/prune_policy.h"

#include <algorithm>
#include <cctype>

namespace kvmcdp {
namespace {

constexpr uint64_t kSecond = 1000000000ull;

struct Bucketed {
  uint32_t limit;
  uint64_t width_ns;
  const char* reason;
  uint32_t used = 0;
  std::optional<uint64_t> last;
};

}  // namespace

std::vector<PruneDecision> plan_prune(std::vector<PruneCandidate> nodes, const PrunePolicy& p) {
  std::sort(nodes.begin(), nodes.end(), [](const PruneCandidate& a, const PruneCandidate& b) {
    return a.seq > b.seq;
  });
  std::vector<PruneDecision> out;
  Bucketed buckets[] = {{p.keep_hourly, 3600 * kSecond, "hourly"},
                        {p.keep_daily, 86400 * kSecond, "daily"}};
  uint64_t newest_ns = nodes.empty() ? 0 : nodes.front().time_ns;
  for (size_t i = 0; i < nodes.size(); ++i) {
    PruneDecision d{nodes[i], false, {}};
    if (i == 0) d.reasons.push_back("newest");
    if (i < p.keep_last) d.reasons.push_back("last");
    for (auto& b : buckets) {
      uint64_t bucket = nodes[i].time_ns / b.width_ns;
      if (b.used < b.limit && b.last != bucket) {
        d.reasons.push_back(b.reason);
        b.used++;
      }
      b.last = bucket;
    }
    if (p.keep_within_ns && newest_ns - nodes[i].time_ns <= *p.keep_within_ns)
      d.reasons.push_back("within");
    if (!nodes[i].in_use.empty()) d.reasons.push_back("in use: " + nodes[i].in_use);
    d.keep = !d.reasons.empty();
    out.push_back(std::move(d));
  }
  return out;
}

Result<uint64_t> parse_duration(std::string_view text) {
  auto bad = [&]() {
    return Result<uint64_t>(ErrorKind::kUsage,
                            "a duration is like 90s, 15m, 2h, 7d, 1w or 1d12h, not '" +
                                std::string(text) + "'");
  };
  if (text.empty()) return bad();
  uint64_t total = 0;
  size_t i = 0;
  while (i < text.size()) {
    uint64_t n = 0;
    size_t start = i;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])))
      n = n * 10 + uint64_t(text[i++] - '0');
    if (i == start || i == text.size() || i - start > 9) return bad();
    uint64_t unit = 0;
    switch (text[i++]) {
      case 's': unit = 1; break;
      case 'm': unit = 60; break;
      case 'h': unit = 3600; break;
      case 'd': unit = 86400; break;
      case 'w': unit = 7 * 86400; break;
      default: return bad();
    }
    total += n * unit * kSecond;
  }
  if (total == 0) return bad();
  return total;
}

}  // namespace kvmcdp
