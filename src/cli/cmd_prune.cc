// kvmcdp prune: a retention policy over the built nodes of a store's
// snapshot tree.  Nodes the policy does not keep are deleted with the
// snapshot tree's own rules (snapshot_delete: a built node with one child
// is merged into it, so every kept node's image is unchanged).  The root
// (the base) is never pruned, nor is the newest node.  Then the journal
// is folded up to the oldest kept point (journal_fold.h), so it stops
// growing without bound.
//
// A node another process uses is kept, whatever the policy: a VM running
// on a `restore --overlay` image reads through the node and every node
// under it, and an export may serve it (image_lock.h tells).  Its
// ancestors are kept too: deleting one merges it into its child, which
// rewrites the child's image under the reader.  The fold cannot hurt such
// a chain: it removes journal segments and the store's old base-*.raw,
// never a file in STORE/tree (the tree's root is its own qcow2 copy, not a
// file backed by the store's base).  Kept-in-use nodes still count as kept
// for the fold, so their points stay recoverable from the journal too.
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "build/build_tree.h"
#include "cli/cli.h"
#include "qemu/image_lock.h"
#include "build/journal_fold.h"
#include "store/store_pins.h"
#include "store/point.h"
#include "build/prune_policy.h"
#include "tree/snapshot_ops.h"
#include "tree/tree_lock.h"
#include "tree/tree_model.h"

namespace kvmcdp {
namespace {

struct PruneOptions {
  std::string store;
  PrunePolicy policy;
  std::string within;
  bool dry_run = false;
  bool wait = false;
};

// Per node: who holds its image, or which node above it is held; "" for
// nodes no other process uses.
std::map<std::string, std::string> nodes_in_use(const Tree& t) {
  std::map<std::string, std::string> out;
  for (const auto& n : t.nodes) {
    auto holder = image_holder(t.path_of(n));
    if (!holder) continue;
    out[n.name] = *holder;
    for (const TreeNode* p = t.find(n.parent); p; p = t.find(p->parent))
      out.try_emplace(p->name, "under " + n.name + ", which " + *holder + " uses");
  }
  return out;
}

std::string describe(const PruneDecision& d) {
  std::string reasons;
  for (const auto& r : d.reasons) reasons += (reasons.empty() ? "" : ",") + r;
  return fmt::format("{} {} seq {} {}{}", d.keep ? "keep  " : "remove", d.node.name, d.node.seq,
                     format_time_human(d.node.time_ns),
                     reasons.empty() ? "" : " (" + reasons + ")");
}

// Whole sealed segments older than the oldest kept node (kept by the
// policy or because it is in use) go into a new base.
Status fold_to_oldest_kept(const PruneOptions& o, const std::vector<PruneDecision>& plan) {
  const PruneCandidate* oldest = nullptr;
  for (const auto& d : plan)
    if (d.keep && (!oldest || d.node.seq < oldest->seq)) oldest = &d.node;
  if (!oldest) return Status::ok();
  // An export reads the base and the segments the fold would delete.
  if (auto pins = live_pins(o.store); !pins.empty()) {
    for (const Pin& p : pins)
      std::printf("journal: not merged into a new base: %s reads it; the next prune after it "
                  "ends will\n",
                  describe_pin(p).c_str());
    return Status::ok();
  }
  auto fold = plan_fold(o.store, oldest->seq, oldest->time_ns);
  if (!fold) return fold.status();
  std::string sizes = fmt::format("{} segments, {} bytes", fold->journal_segments,
                                  fold->journal_bytes);
  if (fold->empty()) {
    std::printf("journal: %s; no whole sealed segment before seq %llu to merge into a new base\n",
                sizes.c_str(),
                static_cast<unsigned long long>(oldest->seq));
    return Status::ok();
  }
  std::printf("journal: %s; %s %zu segments (%llu bytes) through seq %llu into %s\n",
              sizes.c_str(), o.dry_run ? "would merge" : "merging", fold->segments.size(),
              static_cast<unsigned long long>(fold->segment_bytes),
              static_cast<unsigned long long>(fold->seq), fold->new_base.c_str());
  if (o.dry_run) return Status::ok();
  OpLog log;
  Status s = fold_journal(o.store, *fold, &log);
  for (const auto& line : log) std::printf("%s\n", line.c_str());
  return s;
}

Status run_prune(PruneOptions o) {
  if (!o.within.empty()) {
    auto d = parse_duration(o.within);
    if (!d) return d.status();
    o.policy.keep_within_ns = *d;
  }
  if (o.policy.empty())
    return {ErrorKind::kUsage,
            "prune needs a policy: --keep-last, --keep-hourly, --keep-daily or --keep-within"};

  // 1. The lock, and the tree with no interrupted operation left.
  std::string dir = built_tree_dir(o.store);
  auto lock = TreeLock::acquire(dir, o.wait);
  if (!lock) return lock.status();
  auto tree = load_tree(dir);
  if (!tree) return tree.status();
  OpLog log;
  if (!o.dry_run) {
    if (auto s = repair_fold(o.store, &log); !s) return s;
    if (tree->intent)
      if (auto s = repair_tree(*tree, nullptr, &log); !s) return s;
  }

  // 2. The plan: built nodes only (live, with a point, not the root).
  //    A node in use is kept, and said so, in --dry-run too.
  auto in_use = nodes_in_use(*tree);
  std::vector<PruneCandidate> candidates;
  for (const auto& n : tree->nodes)
    if (!n.parent.empty() && n.state == NodeState::kLive && n.point && n.point_time_ns) {
      auto held = in_use.find(n.name);
      candidates.push_back({n.name, *n.point, *n.point_time_ns,
                            held == in_use.end() ? "" : held->second});
    }
  auto plan = plan_prune(candidates, o.policy);
  size_t removed = 0, held = 0;
  for (const auto& d : plan) {
    std::printf("%s\n", describe(d).c_str());
    removed += !d.keep;
    held += !d.node.in_use.empty();
  }

  // 3. Delete, oldest first, by the tree's rules.
  if (!o.dry_run)
    for (auto it = plan.rbegin(); it != plan.rend(); ++it) {
      if (it->keep) continue;
      Status s = snapshot_delete(*tree, it->node.name, nullptr, &log);
      for (const auto& line : log) std::printf("%s\n", line.c_str());
      log.clear();
      if (!s) return s;
    }
  for (const auto& line : log) std::printf("%s\n", line.c_str());
  std::printf("%s %zu of %zu restore points, kept %zu%s\n", o.dry_run ? "would remove" : "removed",
              removed, plan.size(), plan.size() - removed,
              held ? fmt::format(" ({} in use)", held).c_str() : "");

  // 4. Fold the journal up to the oldest kept point.
  return fold_to_oldest_kept(o, plan);
}

}  // namespace

CommandRunner setup_prune_command(CLI::App* app) {
  auto o = std::make_shared<PruneOptions>();
  app->add_option("--store", o->store, "the store whose restore points to prune")->required();
  app->add_option("--keep-last", o->policy.keep_last, "keep the N newest restore points");
  app->add_option("--keep-hourly", o->policy.keep_hourly,
                  "keep the newest restore point of each of the N newest hours");
  app->add_option("--keep-daily", o->policy.keep_daily,
                  "keep the newest restore point of each of the N newest days (UTC)");
  app->add_option("--keep-within", o->within,
                  "keep every restore point within DURATION (90s, 15m, 2h, 7d) of the newest");
  app->add_flag("--dry-run", o->dry_run, "print what would be removed and kept; change nothing");
  app->add_flag("--wait", o->wait, "wait for the tree lock instead of failing with exit 5");
  app->footer(
      "prune also deletes journal history: the journal before the oldest kept restore point\n"
      "is merged into a new base copy, so no moment before that point can be restored any more.\n"
      "A restore point in use (a VM or an export reads it, e.g. through a restore --overlay\n"
      "image) is kept, with the points it builds on, and listed as kept with who uses it.");
  return [o]() { return run_prune(*o); };
}

}  // namespace kvmcdp
