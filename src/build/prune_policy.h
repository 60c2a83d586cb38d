// Which built nodes a retention policy keeps (kvmcdp prune), restic/borg
// style.  Pure: no files, no QEMU, so the rules are unit-tested on their own.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace kvmcdp {

struct PrunePolicy {
  uint32_t keep_last = 0;    // the N newest points
  uint32_t keep_hourly = 0;  // the newest point of each of the N newest hours that have one
  uint32_t keep_daily = 0;   // the same per day (UTC)
  std::optional<uint64_t> keep_within_ns;  // every point within this of the newest point
  bool empty() const { return !keep_last && !keep_hourly && !keep_daily && !keep_within_ns; }
};

struct PruneCandidate {
  std::string name;
  uint64_t seq = 0;
  uint64_t time_ns = 0;
  // Non-empty: another process uses the image or one above it (who, or
  // why); such a node is kept whatever the policy says.
  std::string in_use;
};

struct PruneDecision {
  PruneCandidate node;
  bool keep = false;
  std::vector<std::string> reasons;  // "last", "hourly", "daily", "within", "newest", "in use: ..."
};

// Decisions in newest-first order.  The newest point is always kept: the
// next build extends it; so is a node in use (it does not count towards
// the policy's numbers).
std::vector<PruneDecision> plan_prune(std::vector<PruneCandidate> nodes, const PrunePolicy& p);

// "90s", "15m", "2h", "7d", "1w", "1d12h": ns.  kUsage otherwise.
Result<uint64_t> parse_duration(std::string_view text);

}  // namespace kvmcdp
