// kvmcdp recover: instant recovery of a VM's disk.  IMAGE is made at once
// as a qcow2 overlay whose backing is kvmcdp's export of the point
// (export/), so a VM can start on it right away: its writes go into
// IMAGE, its reads of what it has not written come from the store.  Then
// QEMU's own block-stream, inside that VM, copies the point into IMAGE
// and drops the backing link when done (the guest does not notice), and
// the export ends.  The export is reached through a unix socket whose path
// IMAGE's header names with a reconnect delay, so if kvmcdp dies the
// VM's reads of uncopied areas wait for `recover --resume`, which serves
// the same point on the same socket again and finishes the copy.
#include <sys/stat.h>
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
#include <nlohmann/json.hpp>

#include "base/crc32c.h"
#include "base/stop_signals.h"
#include "base/wall_clock.h"
#include "cli/cli.h"
#include "cli/point_options.h"
#include "export/export_server.h"
#include "export/point_image.h"
#include "export/scratch_dir.h"
#include "qemu/qmp_client.h"
#include "qemu/snapshot_qemu.h"
#include "qemu/subprocess.h"
#include "restore/output_target.h"
#include "store/point.h"
#include "store/protect_state.h"
#include "store/run_state_file.h"
#include "store/store_pins.h"
#include "store/time_parse.h"

namespace kvmcdp {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct RecoverOptions {
  std::string store;
  PointSpec point;
  std::string to;
  std::string qmp;
  bool resume = false;
  int vm_timeout_s = 600;
  uint64_t copy_speed_mib = 0;  // 0: as fast as it goes
};

// How long the VM's reads wait for a lost export (kvmcdp killed) before
// they fail: time for `recover --resume`.
constexpr int kReconnectDelayS = 300;

std::string state_path(const std::string& image) { return image + ".kvmcdp-recover.json"; }

// A stable socket path per image (the header names it; resume reuses it),
// short enough for sun_path whatever the image's path.
std::string socket_for(const std::string& image) {
  uint32_t h = crc32c(image.data(), image.size());
  return fmt::format("{}/recover-{:08x}.sock", protect_registry_dir(), h);
}

std::string backing_json(const std::string& socket) {
  // Spelled out down to the protocol: a bare nbd object with backing
  // format raw is not opened.
  json j = {{"driver", "raw"},
            {"file",
             {{"driver", "nbd"},
              {"server", {{"type", "unix"}, {"path", socket}}},
              {"reconnect-delay", kReconnectDelayS}}}};
  return "json:" + j.dump();
}

// Whether IMAGE, as the VM has it open, still reads through to a backing.
Result<bool> still_backed(QmpClient& qmp, const std::string& node) {
  QmpReply r = qmp.execute("query-named-block-nodes", json{{"flat", true}});
  if (!r.ok()) return Status(ErrorKind::kQemu, "query-named-block-nodes: " + r.message);
  for (const auto& n : r.value)
    if (n.value("node-name", "") == node) return n.contains("backing_file");
  return Status(ErrorKind::kQemu, fmt::format("the VM has no block node {} any more", node));
}

bool job_running(QmpClient& qmp, const std::string& job) {
  QmpReply r = qmp.execute("query-block-jobs");
  if (!r.ok()) return false;
  for (const auto& j : r.value)
    if (j.value("device", "") == job) return true;
  return false;
}

// Steps 5-6 with a VM: wait for it to have IMAGE open, then stream.
Status copy_in_vm(const RecoverOptions& o, const std::string& image,
                  const std::atomic<bool>& stop) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o.vm_timeout_s);
  std::unique_ptr<QmpClient> qmp;
  std::string node;
  while (!stop) {
    if (!qmp) {
      auto c = QmpClient::connect(o.qmp, Millis(2000));
      if (c) qmp = std::move(*c);
    }
    if (qmp) {
      auto nodes = qemu_format_nodes(*qmp);
      if (!nodes) qmp.reset();
      else if (auto n = find_node_by_file(*nodes, image)) {
        node = n->node_name;
        break;
      }
    }
    if (std::chrono::steady_clock::now() > deadline)
      return Status(ErrorKind::kQemu,
                    fmt::format("no VM at {} opened {} within {} s (start it on the image, or "
                                "run recover --resume later)",
                                o.qmp, image, o.vm_timeout_s));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (stop) return Status::ok();
  std::fprintf(stderr, "kvmcdp: the VM has %s open (node %s): copying the point into it\n",
               image.c_str(), node.c_str());
  const std::string job = "kvmcdp-recover";
  // A job of a recover that was killed may still run (its reads waited
  // for the export to come back): wait for it rather than start another.
  const uint64_t speed = o.copy_speed_mib << 20;
  if (!job_running(*qmp, job)) {
    auto backed = still_backed(*qmp, node);
    if (!backed) return backed.status();
    if (!*backed) return Status::ok();
    json args = {{"job-id", job}, {"device", node}};
    if (speed) args["speed"] = speed;
    QmpReply r = qmp->execute("block-stream", args);
    if (!r.ok()) return Status(ErrorKind::kQemu, "block-stream: " + r.message);
  } else {
    QmpReply r = qmp->execute("block-job-set-speed", {{"device", job}, {"speed", speed}});
    if (!r.ok()) return Status(ErrorKind::kQemu, "block-job-set-speed: " + r.message);
  }
  while (!stop) {
    auto end = wait_block_job(*qmp, job, "block-stream", Millis(500));
    if (end) return *end;
  }
  return Status(ErrorKind::kFailure, "stopped before the copy was complete: the VM's reads of "
                                     "what is not copied wait for recover --resume");
}

Status run_recover(RecoverOptions o) {
  const uint64_t t0 = now_ns();
  // 1. The image: a new file, or with --resume the one a recover began.
  const std::string image = fs::absolute(o.to).lexically_normal().string();
  json state;
  if (o.resume) {
    auto s = read_run_state(state_path(image),
                            fmt::format("{} has no recovery under way (no {})", image,
                                        state_path(image)));
    if (!s) return s.status();
    state = *s;
    o.store = state.value("store", "");
    o.point = PointSpec{};
    o.point.seq = state.value("seq", uint64_t(0));
  } else {
    if (o.store.empty()) return Status(ErrorKind::kUsage, "recover needs --store (or --resume)");
    if (auto s = require_point(o.point, "recover"); !s) return s;
    if (auto s = check_output_outside_store(image, o.store); !s) return s;
    struct stat st;
    if (::lstat(image.c_str(), &st) == 0)
      return Status(ErrorKind::kExists,
                    fmt::format("{} exists: recover writes a new image (or --resume one it began)",
                                image));
  }

  if (o.copy_speed_mib && o.qmp.empty())
    return Status(ErrorKind::kUsage,
                  "--copy-speed limits the copy inside the VM: it needs --qmp (without a VM the "
                  "image is copied here, by qemu-img, at full speed)");

  // 2. The point.
  auto point = open_point(o.store, o.point);
  if (!point) return point.status();
  StoreView* view = &point->view;
  const uint64_t* seq = &point->seq;
  const uint64_t* time_ns = &point->time_ns;
  Pin pin{"recover", ::getpid(), process_start_ticks(::getpid()), *seq, *time_ns, image, now_ns()};
  auto pin_file = PinFile::create(view->store_dir, pin);
  std::optional<PinFile> held;
  if (pin_file) held.emplace(std::move(*pin_file));
  else if (::access(view->store_dir.c_str(), W_OK) == 0) return pin_file.status();

  // 3. The export, on the socket the image's header names.
  auto work = ScratchDir::create("recover");
  if (!work) return work.status();
  auto img = PointImage::open(*view, *seq, work->path(), false);
  if (!img) return img.status();
  const std::string sock = o.resume ? state.value("socket", "") : socket_for(image);
  fs::create_directories(fs::path(sock).parent_path());
  auto lfd = listen_unix(sock);
  if (!lfd) return lfd.status();
  struct Unlink {
    std::string path;
    ~Unlink() { ::unlink(path.c_str()); }
  } unlink_socket{sock};
  (*img)->start_fill();
  std::atomic<bool> stop{false};
  ExportServerStats stats;
  std::thread server([&] { (void)serve_export(lfd->get(), **img, "", stop, &stats); });
  struct Join {
    std::atomic<bool>& stop;
    std::thread& t;
    ~Join() {
      stop = true;
      t.join();
    }
  } join{stop, server};

  // 4. The image, and what --resume needs, before anyone is told.
  if (!o.resume) {
    state = {{"store", fs::absolute(view->store_dir).lexically_normal().string()},
             {"seq", *seq},
             {"socket", sock}};
    if (auto s = write_run_state(state_path(image), state); !s) return s;
    if (auto s = create_overlay(image, backing_json(sock), "raw", view->manifest.disk_size,
                                kSnapshotOverlay);
        !s) {
      ::unlink(state_path(image).c_str());
      return s;
    }
  }
  std::fprintf(stderr,
               "kvmcdp: %s %s (seq %llu, %s) in %.0f ms: start the VM on it (qcow2); what it "
               "has not written is read from the store until the copy is complete\n",
               image.c_str(), o.resume ? "serves again" : "is ready",
               static_cast<unsigned long long>(*seq), format_time_human(*time_ns).c_str(),
               (now_ns() - t0) / 1e6);
  std::printf("%s\n", image.c_str());
  std::fflush(stdout);

  // 5. The copy: in the VM (block-stream), or here when there is none.
  std::atomic<bool> signalled{false};
  std::thread signals([&] {
    sigset_t sigs = stop_signals();
    timespec tick{0, 200 * 1000 * 1000};
    while (!signalled && !stop)
      if (sigtimedwait(&sigs, nullptr, &tick) > 0) signalled = true;
  });
  Status copied = o.qmp.empty() ? rebase_safe(image, "", "") : copy_in_vm(o, image, signalled);
  stop = true;
  signals.join();
  if (!copied) return copied;
  if (signalled && !o.qmp.empty())
    return Status(ErrorKind::kFailure, "stopped before the copy was complete: the VM's reads of "
                                       "what is not copied wait for recover --resume");

  // 6. Done: IMAGE stands alone; the export and the state go.
  ::unlink(state_path(image).c_str());
  std::fprintf(stderr,
               "kvmcdp: recovered: %s holds seq %llu plus what the VM wrote, and no longer "
               "needs the store (%llu bytes read through the export)\n",
               image.c_str(), static_cast<unsigned long long>(*seq),
               static_cast<unsigned long long>(stats.bytes_read.load()));
  return Status::ok();
}

}  // namespace

CommandRunner setup_recover_command(CLI::App* app) {
  auto o = std::make_shared<RecoverOptions>();
  app->add_option("--store", o->store, "the store to recover from");
  auto point = add_point_options(app, &o->point);
  app->add_option("--to", o->to, "the new qcow2 image the VM runs on")->required();
  app->add_option("--qmp", o->qmp,
                              "the QMP socket of the VM started on the image: the copy runs "
                              "inside it (block-stream); without, the copy runs here");
  app->add_flag("--resume", o->resume,
                "serve the point again for an image whose recover was killed, and finish its "
                "copy")
      ->excludes("--store")
      ->excludes(point.at)
      ->excludes(point.seq)
      ->excludes(point.mark)
      ->excludes(point.latest);
  app->add_option("--copy-speed", o->copy_speed_mib,
                  "MiB/s at most for the copy into the image (default: no limit), so that "
                  "it leaves the storage to the VMs")
      ->check(CLI::Range(uint64_t(0), uint64_t(1) << 30));
  app->add_option("--vm-timeout", o->vm_timeout_s,
                  "seconds to wait for the VM to open the image")
      ->capture_default_str();
  return [o]() {
    take_stop_signals_synchronously();
    return run_recover(*o);
  };
}

}  // namespace kvmcdp
