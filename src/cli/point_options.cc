#include "cli/point_options.h"

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

Status require_point(const PointSpec& point, const std::string& command) {
  if (point.at || point.seq || point.mark || point.latest) return Status::ok();
  return Status(ErrorKind::kUsage, command + " needs one of --at, --seq, --mark, --latest");
}

}  // namespace kvmcdp
