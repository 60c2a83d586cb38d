// kvmcdp export: one point of a store served as an NBD export until
// SIGINT/SIGTERM, without writing an image of the disk first.
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "base/stop_signals.h"
#include "base/wall_clock.h"
#include "cli/cli.h"
#include "cli/point_options.h"
#include "export/export_server.h"
#include "export/point_image.h"
#include "export/scratch_dir.h"
#include "store/point.h"
#include "store/store_pins.h"
#include "store/time_parse.h"

namespace kvmcdp {
namespace {

struct ExportOptions {
  std::string store;
  PointSpec point;
  std::string socket;
  std::string listen;
  std::string name;
  bool writable = false;
};

std::string export_uri(const ExportOptions& o) {
  if (!o.socket.empty())
    return fmt::format("nbd+unix:///{}?socket={}", o.name,
                       std::filesystem::absolute(o.socket).lexically_normal().string());
  return fmt::format("nbd://{}/{}", o.listen, o.name);
}

Status run_export(const ExportOptions& o) {
  const uint64_t t0 = now_ns();
  // 1. Where it will be served: refused before any work.
  if (o.socket.empty() == o.listen.empty())
    return Status(ErrorKind::kUsage, "export needs one of --socket PATH or --listen HOST:PORT");
  if (!o.socket.empty() && std::filesystem::exists(o.socket) &&
      !std::filesystem::is_socket(o.socket))
    return Status(ErrorKind::kUsage,
                  fmt::format("{} exists and is not a socket: not replaced", o.socket));

  // 2. The point, refused unless recoverable.
  auto point = open_point(o.store, o.point);
  if (!point) return point.status();
  StoreView* view = &point->view;
  const uint64_t* seq = &point->seq;
  const uint64_t* point_ns = &point->time_ns;

  // 3. Pinned while the view's readers lock is held, so a prune that
  //    starts after this sees the pin and leaves the journal alone
  //    (store_pins.h); a read-only store cannot be pruned: no pin needed.
  Pin pin;
  pin.kind = "export";
  pin.pid = ::getpid();
  pin.start_ticks = process_start_ticks(pin.pid);
  pin.seq = *seq;
  pin.time_ns = *point_ns;
  pin.where = export_uri(o);
  pin.started_ns = now_ns();
  auto pin_file = PinFile::create(view->store_dir, pin);
  std::optional<PinFile> held_pin;
  if (pin_file) held_pin.emplace(std::move(*pin_file));
  else if (::access(view->store_dir.c_str(), W_OK) == 0) return pin_file.status();

  // 4. The index of the point: locations only, no data read.
  auto work = ScratchDir::create("export");
  if (!work) return work.status();
  auto image = PointImage::open(*view, *seq, work->path(), o.writable);
  if (!image) return image.status();

  // 5. Served.
  auto lfd = o.socket.empty() ? listen_tcp(o.listen) : listen_unix(o.socket);
  if (!lfd) return lfd.status();
  struct Unlink {
    std::string path;
    ~Unlink() {
      if (!path.empty()) ::unlink(path.c_str());
    }
  } unlink_socket{o.socket};
  (*image)->start_fill();
  const DeltaStats& ix = (*image)->index().stats();
  std::fprintf(stderr,
               "kvmcdp: exporting seq %llu (%s) of %s, %s, at %s: %zu journal extents "
               "(%llu bytes) over %s, indexed in %.0f ms; Ctrl-C ends it\n",
               static_cast<unsigned long long>(*seq), format_time_human(*point_ns).c_str(),
               o.store.c_str(),
               o.writable ? "writable (writes are thrown away at the end)" : "read-only",
               pin.where.c_str(), (*image)->index().extent_count(),
               static_cast<unsigned long long>(ix.data_bytes + ix.zero_bytes),
               (*image)->below_name().c_str(), (now_ns() - t0) / 1e6);
  std::printf("%s\n", pin.where.c_str());
  std::fflush(stdout);

  std::atomic<bool> stop{false};
  ExportServerStats stats;
  Status served;
  std::thread server([&] { served = serve_export(lfd->get(), **image, o.name, stop, &stats); });
  sigset_t sigs = stop_signals();
  while (sigwaitinfo(&sigs, nullptr) < 0) {
  }
  stop = true;
  server.join();
  if (!served) return served;
  std::fprintf(stderr, "kvmcdp: export of seq %llu ended: %llu connections, %llu bytes read\n",
               static_cast<unsigned long long>(*seq),
               static_cast<unsigned long long>(stats.connections.load()),
               static_cast<unsigned long long>(stats.bytes_read.load()));
  return Status::ok();
}

}  // namespace

CommandRunner setup_export_command(CLI::App* app) {
  auto o = std::make_shared<ExportOptions>();
  app->add_option("--store", o->store, "the store to export from")->required();
  add_point_options(app, &o->point);
  auto* sock = app->add_option("--socket", o->socket,
                               "serve on this unix socket (a stale one is replaced)");
  app->add_option("--listen", o->listen, "serve on TCP HOST:PORT (NBD's port is 10809)")
      ->excludes(sock);
  app->add_option("--name", o->name, "the export's name (default: empty, what clients ask for)");
  app->add_flag("--writable", o->writable,
                "accept writes, kept in a throw-away overlay outside the store until the "
                "export ends");
  return [o]() {
    take_stop_signals_synchronously();
    if (auto s = require_point(o->point, "export"); !s) return s;
    return run_export(*o);
  };
}

}  // namespace kvmcdp
