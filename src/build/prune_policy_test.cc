#include "build/prune_policy.h"

#include <doctest/doctest.h>

namespace kvmcdp {
namespace {

constexpr uint64_t kMin = 60ull * 1000000000ull;

std::vector<std::string> kept(const std::vector<PruneDecision>& ds) {
  std::vector<std::string> out;
  for (const auto& d : ds)
    if (d.keep) out.push_back(d.node.name);
  return out;
}

// One node every 20 minutes for 6 hours: n0 (oldest) .. n17 (newest).
std::vector<PruneCandidate> every_20_minutes() {
  std::vector<PruneCandidate> v;
  for (uint64_t i = 0; i < 18; ++i)
    v.push_back({"n" + std::to_string(i), 100 + i, (1000 * 60 + i * 20) * kMin});
  return v;
}

}  // namespace

TEST_CASE("plan_prune: keep-last keeps the newest N, newest first") {
  auto ds = plan_prune(every_20_minutes(), {.keep_last = 3});
  CHECK(kept(ds) == std::vector<std::string>{"n17", "n16", "n15"});
  CHECK(ds.size() == 18);
  CHECK(ds[0].reasons == std::vector<std::string>{"newest", "last"});
}

TEST_CASE("plan_prune: keep-hourly keeps the newest node of each of N hours") {
  auto ds = plan_prune(every_20_minutes(), {.keep_hourly = 2});
  // Hours hold (n15 n16 n17), (n12 n13 n14), ...: the newest of the first two.
  CHECK(kept(ds) == std::vector<std::string>{"n17", "n14"});
}

TEST_CASE("plan_prune: keep-daily, keep-within, and rules combine") {
  auto ds = plan_prune(every_20_minutes(), {.keep_daily = 5});
  CHECK(kept(ds) == std::vector<std::string>{"n17"});  // one day
  ds = plan_prune(every_20_minutes(), {.keep_last = 1, .keep_within_ns = 40 * kMin});
  CHECK(kept(ds) == std::vector<std::string>{"n17", "n16", "n15"});
  ds = plan_prune(every_20_minutes(), {.keep_last = 2, .keep_hourly = 3});
  CHECK(kept(ds) == std::vector<std::string>{"n17", "n16", "n14", "n11"});
}

TEST_CASE("plan_prune: the newest node is kept whatever the policy") {
  auto ds = plan_prune(every_20_minutes(), {.keep_within_ns = 0});
  CHECK(kept(ds) == std::vector<std::string>{"n17"});
  CHECK(plan_prune({}, {.keep_last = 3}).empty());
}

TEST_CASE("plan_prune: a node in use is kept, saying by whom, and does not use up the policy") {
  auto nodes = every_20_minutes();
  nodes[3].in_use = "qemu-system-x86 pid 42";
  auto ds = plan_prune(nodes, {.keep_last = 2});
  CHECK(kept(ds) == std::vector<std::string>{"n17", "n16", "n3"});
  for (const auto& d : ds)
    if (d.node.name == "n3") CHECK(d.reasons == std::vector<std::string>{"in use: qemu-system-x86 pid 42"});
}

TEST_CASE("parse_duration") {
  CHECK(*parse_duration("90s") == 90ull * 1000000000ull);
  CHECK(*parse_duration("15m") == 15 * kMin);
  CHECK(*parse_duration("1d12h") == 36 * 60 * kMin);
  CHECK(*parse_duration("1w") == 7 * 24 * 60 * kMin);
  for (const char* bad : {"", "h", "10", "5x", "-5m", "0s", "1h-"})
    CHECK_MESSAGE(parse_duration(bad).status().kind() == ErrorKind::kUsage, bad);
}

}  // namespace kvmcdp
