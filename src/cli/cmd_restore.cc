// kvmcdp restore: write the disk image as of one point of a store.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "store/base_checksums.h"
#include "cli/cli.h"
#include "cli/point_options.h"
#include "base/fsutil.h"
#include "restore/output_target.h"
#include "store/point.h"
#include "cli/progress_throttle.h"
#include "restore/image_restore.h"
#include "restore/restore_delta.h"
#include "restore/restore_engine.h"
#include "qemu/subprocess.h"
#include "base/wall_clock.h"

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
  bool force = false;
};

Status run_restore(const RestoreOptions& o) {
  // 1. May the output be written at all?  Checked before anything else
  //    (output_target.h): inside the store, an existing file, a device,
  //    a terminal.  The store first: --force must not reach its files.
  const bool to_stdout = o.output == "-";
  if (to_stdout && (o.format != "raw" || o.overlay))
    return Status(ErrorKind::kUsage,
                  "-o - writes a raw image to standard output: --format qcow2 and --overlay "
                  "need a file");
  if (auto s = check_output_outside_store(o.output, o.store); !s) return s;
  auto target = check_output_target(o.output, o.force);
  if (!target) return target.status();
  if (target->kind == OutputKind::kBlockDevice && (o.format != "raw" || o.overlay))
    return Status(ErrorKind::kUsage,
                  o.output + " is a block device: it takes a raw image (no --format qcow2, "
                             "no --overlay)");

  // 2. Which seq the user means, refused unless recoverable.
  auto view = open_store_view(o.store);
  if (!view) return view.status();
  std::string at_meaning;
  auto seq = resolve_point(*view, o.point, now_ns(), &at_meaning);
  if (!seq) return seq.status();
  if (!o.quiet && !at_meaning.empty()) std::fprintf(stderr, "kvmcdp: %s\n", at_meaning.c_str());
  const uint64_t disk_size = view->manifest.disk_size;
  if (auto s = check_output_fits(*target, disk_size); !s) return s;

  // 3. Rebuild it: a whole image (image_restore.h), or with --overlay
  //    none at all: a qcow2 overlay on the nearest built node with only
  //    the journal after it.
  bool tty = !o.quiet && isatty(2);
  RestoreProgressFn progress;
  auto throttle = std::make_shared<ProgressThrottle>();
  if (tty)
    progress = [throttle](const RestoreProgress& p) {
      if (!throttle->due(ProgressThrottle::Clock::now(), p.done >= p.total)) return;
      std::fprintf(stderr, "\rkvmcdp: restoring (%s) %3.0f%%", p.phase,
                   p.total ? 100.0 * p.done / p.total : 100.0);
    };
  auto write = [&]() -> Result<NearestRestore> {
    if (!o.overlay)
      return restore_image(*view, *seq, *target, o.format, progress,
                           o.from_node ? NodeUse::kAlways : NodeUse::kIfCheaper);
    auto f = TempBeside::create(target->path, target->kind == OutputKind::kExistingFile);
    if (!f) return f.status();
    auto r = restore_overlay(*view, *seq, f->path());
    if (!r) return restore_failure(r.status(), *seq);
    if (auto s = f->commit(); !s) return s;
    return r;
  };
  auto nearest = write();
  if (tty) std::fprintf(stderr, "\n");
  if (!nearest) return nearest.status();
  const RestoreStats* stats = &nearest->stats;
  if (!o.quiet) {
    std::string from = nearest->from_node.empty()
                           ? std::string("the base")
                           : fmt::format("restore point {} (seq {})", nearest->from_node,
                                         nearest->from_seq);
    std::string where = to_stdout ? std::string("standard output") : o.output;
    if (target->kind == OutputKind::kBlockDevice && target->device_size > disk_size)
      where += fmt::format(" (its first {} bytes; the rest left as it was)", disk_size);
    std::fprintf(stderr, "kvmcdp: restored seq %llu to %s (%s): %llu bytes from the journal, "
                 "the rest from %s; journal read: %llu bytes in %llu frames\n",
                 static_cast<unsigned long long>(*seq), where.c_str(),
                 o.overlay ? "qcow2 overlay" : o.format.c_str(),
                 static_cast<unsigned long long>(stats->journal_bytes), from.c_str(),
                 static_cast<unsigned long long>(stats->frame_bytes),
                 static_cast<unsigned long long>(stats->frames_read));
  }
  // The seq on stdout for scripts, unless stdout carries the image (then
  // it is in the summary above).
  if (!to_stdout) std::printf("%llu\n", static_cast<unsigned long long>(*seq));
  return Status::ok();
}

}  // namespace

CommandRunner setup_restore_command(CLI::App* app) {
  auto o = std::make_shared<RestoreOptions>();
  app->add_option("--store", o->store, "the store to restore from")->required();
  add_point_options(app, &o->point);
  app->add_option("-o,--output", o->output,
                  "where the image goes: a new file; an existing file or a block device "
                  "only with --force; - for standard output (raw)")
      ->required();
  app->add_flag("--force", o->force,
                "replace an existing file, or write onto a block device (in place; refused "
                "while it is mounted or in use, or a VM has the file open)");
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
    if (auto s = require_point(o->point, "restore"); !s) return s;
    return run_restore(*o);
  };
}

}  // namespace kvmcdp
