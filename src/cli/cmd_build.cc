// kvmcdp build: materialise journal points as qcow2 nodes of the store's
// snapshot tree (DIR/tree), so that restoring near them reads only the
// journal after the nearest node.
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "build/build_tree.h"
#include "cli/cli.h"
#include "build/journal_fold.h"
#include "store/point.h"
#include "build/prune_policy.h"
#include "tree/tree_lock.h"
#include "base/wall_clock.h"

namespace kvmcdp {
namespace {

struct BuildOptions {
  std::string store;
  std::vector<std::string> at;
  std::vector<uint64_t> seq;
  std::string every;
  bool wait = false;
};

// --every D: one point per D from the base copy to the newest record, each
// the last record at or before that time, in a recoverable range.
Result<std::vector<uint64_t>> every_points(StoreView& view, uint64_t step_ns) {
  std::vector<uint64_t> seqs;
  for (const auto& r : view.ranges) {
    for (uint64_t t = r.first_time_ns + step_ns; t <= r.last_time_ns; t += step_ns) {
      auto p = journal::last_record_at_or_before(*view.reader, t);
      if (!p) return p.status();
      if (*p && (*p)->seq >= r.first_seq && (*p)->seq <= r.last_seq)
        seqs.push_back((*p)->seq);
    }
    seqs.push_back(r.last_seq);
  }
  return seqs;
}

// Every point asked for, resolved and checked before anything is built.
Result<std::vector<uint64_t>> resolve_build_points(const BuildOptions& o) {
  auto view = open_store_view(o.store);
  if (!view) return view.status();
  std::vector<uint64_t> seqs;
  for (const auto& t : o.at) {
    PointSpec spec;
    spec.at = t;
    std::string at_meaning;
    auto s = resolve_point(*view, spec, now_ns(), &at_meaning);
    if (!s) return s.status();
    std::fprintf(stderr, "kvmcdp: %s\n", at_meaning.c_str());
    seqs.push_back(*s);
  }
  for (uint64_t n : o.seq) {
    PointSpec spec;
    spec.seq = n;
    auto s = resolve_point(*view, spec, now_ns());
    if (!s) return s.status();
    seqs.push_back(*s);
  }
  if (!o.every.empty()) {
    auto step = parse_duration(o.every);
    if (!step) return step.status();
    auto s = every_points(*view, *step);
    if (!s) return s.status();
    seqs.insert(seqs.end(), s->begin(), s->end());
  }
  return seqs;
}

Status run_build(const BuildOptions& o) {
  // 1. Which points (the store is read and let go: finishing a fold below
  //    waits for its readers).
  auto seqs = resolve_build_points(o);
  if (!seqs) return seqs.status();

  // 2. One builder at a time: the tree lock.
  std::string dir = built_tree_dir(o.store);
  ::mkdir(dir.c_str(), 0755);
  auto lock = TreeLock::acquire(dir, o.wait);
  if (!lock) return lock.status();

  // 3. Build, printing each node as it joins the tree (after finishing a
  //    fold a killed prune left).
  OpLog log;
  if (auto s = repair_fold(o.store, &log); !s) return s;
  auto built = build_points(o.store, *seqs, &log);
  for (const auto& line : log) std::printf("%s\n", line.c_str());
  if (!built) return built.status();
  return Status::ok();
}

}  // namespace

CommandRunner setup_build_command(CLI::App* app) {
  auto o = std::make_shared<BuildOptions>();
  app->add_option("--store", o->store,
                  "the store to prepare restore points for (they go to STORE/tree)")
      ->required();
  app->add_option("--at", o->at,
                  "a time (20:52:10, 2026-11-25 20:52 local, ISO 8601 with zone, "
                  "10 minutes ago, -1h30m, @EPOCH); repeatable");
  app->add_option("--seq", o->seq, "a record's sequence number (see kvmcdp points); repeatable");
  app->add_option("--every", o->every,
                  "a point every DURATION (90s, 15m, 2h, 1d) over the journal");
  app->add_flag("--wait", o->wait, "wait for the tree lock instead of failing with exit 5");
  return [o]() {
    if (o->at.empty() && o->seq.empty() && o->every.empty())
      return Status(ErrorKind::kUsage, "build needs --at, --seq or --every");
    return run_build(*o);
  };
}

}  // namespace kvmcdp
