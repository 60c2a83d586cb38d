// kvmcdp restore: write the disk image as of one point of a store.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "cli.h"
#include "point.h"
#include "restore_delta.h"
#include "restore_engine.h"
#include "subprocess.h"
#include "wall_clock.h"

namespace kvmcdp {
namespace {

struct RestoreOptions {
  std::string store;
  PointSpec point;
  std::string output;
  std::string format = "raw";
  bool overlay = false;
  bool from_node = false;
  bool quiet = false;
};

Status run_restore(const RestoreOptions& o) {
  // 1. Which seq the user means, refused unless recoverable.
  auto view = open_store_view(o.store);
  if (!view) return view.status();
  std::string at_meaning;
  auto seq = resolve_point(*view, o.point, now_ns(), &at_meaning);
  if (!seq) return seq.status();
  if (!o.quiet && !at_meaning.empty()) std::fprintf(stderr, "kvmcdp: %s\n", at_meaning.c_str());

  // 2. Rebuild it as a sparse raw image (qcow2: raw first, then QEMU's own
  //    qemu-img writes the qcow2, so no hand-written qcow2 ever exists).
  bool tty = !o.quiet && isatty(2);
  RestoreProgressFn progress;
  if (tty)
    progress = [](const RestoreProgress& p) {
      std::fprintf(stderr, "\rkvmcdp: restoring (%s) %3.0f%%", p.phase,
                   p.total ? 100.0 * p.done / p.total : 100.0);
    };
  //    With --overlay, no full image at all: a qcow2 overlay on the
  //    nearest built node with only the journal after it.
  std::string raw_out = o.format == "raw" || o.overlay ? o.output : o.output + ".raw.tmp";
  //    From the nearest built node at or before the seq when the store has
  //    one (kvmcdp build) and it is cheaper, else from the base
  //    (restore_delta.h).
  auto nearest = o.overlay ? restore_overlay(*view, *seq, o.output)
                           : restore_nearest(*view, *seq, raw_out, progress,
                                             o.from_node ? NodeUse::kAlways : NodeUse::kIfCheaper);
  Result<RestoreStats> stats = nearest ? Result<RestoreStats>(nearest->stats)
                                       : Result<RestoreStats>(nearest.status());
  if (tty) std::fprintf(stderr, "\n");
  if (!stats && stats.status().kind() == ErrorKind::kDamaged)
    return Status(ErrorKind::kNotRecoverable,
                  fmt::format("seq {} lies past damage in the journal ({}); "
                              "`kvmcdp journal verify` shows the last good record",
                              *seq, stats.status().message()));
  if (!stats) return stats.status();
  if (o.format == "qcow2" && !o.overlay) {
    Status s = run_process({qemu_img_binary(), "convert", "-q", "-f", "raw", "-O", "qcow2",
                            raw_out, o.output});
    unlink(raw_out.c_str());
    if (!s) return s;
  }
  if (!o.quiet) {
    std::string from = nearest->from_node.empty()
                           ? std::string("the base")
                           : fmt::format("restore point {} (seq {})", nearest->from_node,
                                         nearest->from_seq);
    std::fprintf(stderr, "kvmcdp: restored seq %llu to %s (%s): %llu bytes from the journal, "
                 "the rest from %s; journal read: %llu bytes in %llu frames\n",
                 static_cast<unsigned long long>(*seq), o.output.c_str(),
                 o.overlay ? "qcow2 overlay" : o.format.c_str(),
                 static_cast<unsigned long long>(stats->journal_bytes), from.c_str(),
                 static_cast<unsigned long long>(stats->frame_bytes),
                 static_cast<unsigned long long>(stats->frames_read));
  }
  std::printf("%llu\n", static_cast<unsigned long long>(*seq));
  return Status::ok();
}

}  // namespace

CommandRunner setup_restore_command(CLI::App* app) {
  auto o = std::make_shared<RestoreOptions>();
  app->add_option("--store", o->store, "the store to restore from")->required();
  auto* at = app->add_option("--at", o->point.at,
                             "a time: 20:52:10, 2026-11-25 20:52 (local), ISO 8601 with "
                             "zone, 10 minutes ago, -1h30m, @EPOCH");
  auto* seq = app->add_option("--seq", o->point.seq,
                              "a record's sequence number (see kvmcdp points)");
  auto* mark = app->add_option("--mark", o->point.mark, "a mark's name");
  auto* latest = app->add_flag("--latest", o->point.latest, "the newest recoverable point");
  at->excludes(seq, mark, latest);
  seq->excludes(mark, latest);
  mark->excludes(latest);
  app->add_option("-o,--output", o->output, "the image file to write")->required();
  auto* format = app->add_option("--format", o->format, "raw or qcow2")
                     ->check(CLI::IsMember({"raw", "qcow2"}))
                     ->capture_default_str();
  app->add_flag("--overlay", o->overlay,
                "write a small qcow2 holding only the changes since the nearest prepared "
                "restore point (kvmcdp build); fast, but it needs that point to stay")
      ->excludes(format);
  app->add_flag("--from-node", o->from_node,
                "start from the nearest prepared restore point (kvmcdp build) even when "
                "reading the journal from its start looks cheaper")
      ->excludes("--overlay");
  app->add_flag("--quiet", o->quiet, "no progress or summary on stderr");
  return [o]() {
    if (!o->point.at && !o->point.seq && !o->point.mark && !o->point.latest)
      return Status(ErrorKind::kUsage, "restore needs one of --at, --seq, --mark, --latest");
    return run_restore(*o);
  };
}

}  // namespace kvmcdp
