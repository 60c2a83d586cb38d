#include "cli/point_options.h"

#include <cstdio>

#include "base/wall_clock.h"

namespace kvmcdp {

PointOptions add_point_options(CLI::App* app, PointSpec* point) {
  PointOptions o;
  o.at = app->add_option("--at", point->at,
                         "a time: 20:52:10, 2026-11-25 20:52 (local), ISO 8601 with "
                         "zone, 10 minutes ago, -1h30m, @EPOCH");
  o.seq = app->add_option("--seq", point->seq, "a record's sequence number (see kvmcdp points)");
  o.mark = app->add_option("--mark", point->mark, "a mark's name");
  o.latest = app->add_flag("--latest", point->latest, "the newest recoverable point");
  o.at->excludes(o.seq, o.mark, o.latest);
  o.seq->excludes(o.mark, o.latest);
  o.mark->excludes(o.latest);
  return o;
}

Result<OpenPoint> open_point(const std::string& store, const PointSpec& point) {
  auto view = open_store_view(store);
  if (!view) return view.status();
  std::string at_meaning;
  auto seq = resolve_point(*view, point, now_ns(), &at_meaning);
  if (!seq) return seq.status();
  if (auto s = journal::check_recoverable(view->ranges, *seq); !s) return s;
  if (!at_meaning.empty()) std::fprintf(stderr, "kvmcdp: %s\n", at_meaning.c_str());
  auto time_ns = record_time(*view->reader, *seq);
  if (!time_ns) return time_ns.status();
  return OpenPoint{std::move(*view), *seq, *time_ns};
}

Status require_point(const PointSpec& point, const std::string& command) {
  if (point.at || point.seq || point.mark || point.latest) return Status::ok();
  return Status(ErrorKind::kUsage, command + " needs one of --at, --seq, --mark, --latest");
}

}  // namespace kvmcdp
