// kvmcdp recover: instant recovery of a VM's disk.
//
// At once, an overlay (IMAGE.kvmcdp-recover.qcow2) whose backing is
// kvmcdp's export of the point (export/): a VM starts on it right away,
// its writes go into the overlay, its reads of what it has not written
// come from the store.  Meanwhile kvmcdp restores the point into IMAGE at
// restore speed (restore/image_restore.h: the same code as `restore`).
// Then inside the VM a mirror job (sync=top) copies only what the VM has
// written into IMAGE and, once it has caught up, moves the VM onto IMAGE
// (block-job-complete: QEMU swaps the node under the device without a
// pause the guest notices); the overlay and the export go.  Without a VM
// on the overlay (none was started, or it has stopped), qemu-img commits
// the overlay's writes into IMAGE instead.
//
// The copy was once QEMU's block-stream through the export: it copies
// 512 KiB at a time, one request in flight, and reached 0.14 of a restore
// on 4 GiB, 0.04 on 16 GiB; restoring beside the VM and mirroring only
// the VM's writes runs at the restore's speed.
//
// Nothing the VM writes is lost at any moment: until the pivot its writes
// are in the overlay, which names the export's socket with a reconnect
// delay, so if kvmcdp dies the VM's reads of the point wait for
// `recover --resume`, which serves the same point on the same socket and
// finishes from where things stand (IMAGE restored or not, the mirror
// running or not, the VM moved or not).
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
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
#include "cli/qemu_options.h"
#include "export/export_server.h"
#include "export/point_image.h"
#include "export/scratch_dir.h"
#include "qemu/libvirt_domain.h"
#include "qemu/libvirt_monitor.h"
#include "qemu/qemu_target.h"
#include "qemu/qmp_client.h"
#include "qemu/snapshot_qemu.h"
#include "qemu/subprocess.h"
#include "restore/image_restore.h"
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
using Clock = std::chrono::steady_clock;

struct RecoverOptions {
  std::string store;
  PointSpec point;
  std::string to;
  std::string format = "raw";
  std::string qmp;
  std::string domain, uri, drive;  // --domain, --connect, --drive
  bool resume = false;
  int vm_timeout_s = 600;
  uint64_t copy_speed_mib = 0;  // 0: as fast as it goes
};

// How long the VM's reads wait for a lost export (kvmcdp killed) before
// they fail: time for `recover --resume`.
constexpr int kReconnectDelayS = 300;
constexpr const char* kJob = "kvmcdp-recover";
constexpr const char* kTargetNode = "kvmcdp-recover-target";

struct RecoverPaths {
  std::string image;    // the result
  std::string overlay;  // what the VM starts on
  std::string state;    // what --resume needs
};

RecoverPaths paths_for(const std::string& to) {
  std::string image = fs::absolute(to).lexically_normal().string();
  return {image, image + ".kvmcdp-recover.qcow2", image + ".kvmcdp-recover.json"};
}

// A stable socket path per image (the overlay's header names it; resume
// reuses it), short enough for sun_path whatever the image's path.
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

bool exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

// The temp files of a restore into IMAGE that was killed (image_restore
// writes .IMAGE.XXXXXX.kvmcdp-partial beside it): only a resume, which
// owns the name IMAGE, removes them.
void remove_killed_restore_temps(const std::string& image) {
  fs::path p(image);
  std::string prefix = "." + p.filename().string() + ".";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(p.parent_path(), ec)) {
    std::string n = e.path().filename().string();
    if (n.size() == prefix.size() + 6 + std::strlen(".kvmcdp-partial") &&
        n.compare(0, prefix.size(), prefix) == 0 && n.ends_with(".kvmcdp-partial"))
      fs::remove(e.path(), ec);
  }
}

// Who must open the files: a libvirt domain's QEMU may run as another
// user (libvirt-qemu, a session daemon's user); it gets the owner of the
// file its disk read before.  Nobody else: --qmp's QEMU is the caller's.
struct Owner {
  uid_t uid;
  gid_t gid;
};
void give(const std::optional<Owner>& owner, const std::string& path) {
  if (owner && ::chown(path.c_str(), owner->uid, owner->gid) != 0)
    std::fprintf(stderr, "kvmcdp: warning: chown %s: %s\n", path.c_str(), std::strerror(errno));
}

struct Interrupted {};

// Sets `stop` and joins `t` when the scope ends, however it ends.
struct StopAndJoin {
  std::atomic<bool>& stop;
  std::thread& t;
  ~StopAndJoin() {
    stop = true;
    t.join();
  }
};

// Progress of the restore into IMAGE: held to --copy-speed (by the
// position in the disk, so that holes cost time too: the limit is for
// planning, not accounting), and a way out when stopped.
RestoreProgressFn paced(uint64_t bytes_per_s, const std::atomic<bool>& stop) {
  auto start = std::make_shared<Clock::time_point>(Clock::now());
  return [=, &stop](const RestoreProgress& p) {
    if (std::strcmp(p.phase, "base") != 0) return;  // throw only from the base pass's loop
    for (;;) {
      if (stop) throw Interrupted{};
      if (!bytes_per_s) return;
      auto due = *start + std::chrono::microseconds(p.done * 1000000 / bytes_per_s);
      if (Clock::now() >= due) return;
      std::this_thread::sleep_for(std::min<Clock::duration>(due - Clock::now(),
                                                            std::chrono::milliseconds(100)));
    }
  };
}

// The restore of the point into IMAGE, in a thread of its own, on a view
// of its own (a journal reader serves one thread: the export's is busy).
class ImageRestorer {
 public:
  ImageRestorer(StoreView view, uint64_t seq, const RecoverPaths& p, const std::string& format,
                uint64_t speed, const std::atomic<bool>& stop)
      : view_(std::move(view)) {
    thread_ = std::thread([this, seq, p, format, speed, &stop] {
      StoreView& view = view_;
      Status s;
      try {
        auto target = check_output_target(p.image, false);
        if (!target) s = target.status();
        else if (auto r = restore_image(view, seq, *target, format, paced(speed, stop)); !r)
          s = r.status();
      } catch (const Interrupted&) {
        s = Status(ErrorKind::kFailure, "stopped");
      }
      result_ = s;
      done_ = true;
    });
  }
  ~ImageRestorer() { wait(); }
  bool done() const { return done_; }
  Status wait() {
    if (thread_.joinable()) thread_.join();
    return result_;
  }

 private:
  StoreView view_;
  std::thread thread_;
  std::atomic<bool> done_{false};
  Status result_;
};

// The VM's node of a file, if it has one open.
struct VmView {
  std::optional<QemuNode> overlay, image;
};
Result<VmView> look(QmpClient& qmp, const RecoverPaths& p) {
  auto nodes = qemu_format_nodes(qmp);
  if (!nodes) return nodes.status();
  return VmView{find_node_by_file(*nodes, p.overlay), find_node_by_file(*nodes, p.image)};
}

struct JobState {
  bool present = false, ready = false;
  uint64_t len = 0;
};
Result<JobState> job_state(QmpClient& qmp) {
  QmpReply r = qmp.execute("query-block-jobs");
  if (!r.ok()) return Status(ErrorKind::kQemu, "query-block-jobs: " + r.message);
  for (const auto& j : r.value)
    if (j.value("device", "") == kJob)
      return JobState{true, j.value("ready", false), j.value("len", uint64_t(0))};
  return JobState{};
}

// Inside the VM: IMAGE as a node beside the overlay, a mirror of only
// what the overlay holds (sync=top: IMAGE already is the point), and the
// switch once it has caught up.  `copied`: the bytes the mirror moved.
Status mirror_and_pivot(QmpClient& qmp, const std::string& overlay_node, const RecoverPaths& p,
                        const std::string& format, uint64_t speed,
                        const std::optional<Owner>& owner, const std::atomic<bool>& stop,
                        uint64_t* copied) {
  auto job = job_state(qmp);
  if (!job) return job.status();
  if (!job->present) {
    auto nodes = qemu_format_nodes(qmp);
    if (!nodes) return nodes.status();
    if (!find_node_by_name(*nodes, kTargetNode)) {
      give(owner, p.image);
      // Opened the way the VM opened the overlay (O_DIRECT or not).
      auto cache = file_cache_options(qmp, overlay_node);
      if (!cache) return cache.status();
      json file = {{"driver", "file"}, {"filename", p.image}};
      if (!cache->empty()) file["cache"] = *cache;
      QmpReply r = qmp.execute("blockdev-add",
                               {{"driver", format}, {"node-name", kTargetNode}, {"file", file}});
      if (!r.ok()) return Status(ErrorKind::kQemu, "blockdev-add " + p.image + ": " + r.message);
    }
    json args = {{"job-id", kJob}, {"device", overlay_node}, {"target", kTargetNode},
                 {"sync", "top"}};
    if (speed) args["speed"] = speed;
    QmpReply r = qmp.execute("blockdev-mirror", args);
    if (!r.ok()) return Status(ErrorKind::kQemu, "blockdev-mirror: " + r.message);
  } else {
    // A mirror a killed recover started: it needs no kvmcdp (both ends
    // are local files), only the word to complete.
    QmpReply r = qmp.execute("block-job-set-speed", {{"device", kJob}, {"speed", speed}});
    if (!r.ok()) return Status(ErrorKind::kQemu, "block-job-set-speed: " + r.message);
  }
  for (;;) {
    if (stop) return Status(ErrorKind::kFailure, "stopped");
    job = job_state(qmp);
    if (!job) return job.status();
    if (!job->present)
      return Status(ErrorKind::kQemu, "the mirror into " + p.image + " ended before it was ready");
    if (job->ready) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  *copied = job->len;
  QmpReply r = qmp.execute("block-job-complete", {{"device", kJob}});
  if (!r.ok()) return Status(ErrorKind::kQemu, "block-job-complete: " + r.message);
  auto end = wait_block_job(qmp, kJob, "the mirror into " + p.image, Millis(600000));
  if (!end) return Status(ErrorKind::kQemu, "the mirror did not complete within 10 minutes");
  return *end;
}

// Without a VM on the overlay: its writes into IMAGE by qemu-img.  The
// overlay first reads through to IMAGE (the same bytes as the export, so
// an unsafe rebase is right), then commit copies what it holds.  Both
// take the overlay's write lock: a VM holding it makes this fail before
// anything changed.
Status merge_offline(const RecoverPaths& p, const std::string& format) {
  if (auto s = run_process({qemu_img_binary(), "rebase", "-q", "-u", "-f", "qcow2", "-b", p.image,
                            "-F", format, p.overlay});
      !s) {
    if (s.message().find("lock") != std::string::npos)
      return Status(ErrorKind::kBusy,
                    fmt::format("{} is open in a VM that is not the one at --qmp: run "
                                "`kvmcdp recover --resume --to {} --qmp SOCK` with its QMP "
                                "socket",
                                p.overlay, p.image));
    return s;
  }
  return run_process({qemu_img_binary(), "commit", "-q", "-d", "-f", "qcow2", p.overlay});
}

enum class MovedBy { kAlready, kMirror, kCommit };

// Steps 5-6: waits for the restore into IMAGE, then moves the VM's writes
// into it: by the mirror in a VM that has the overlay open, else by
// qemu-img.  With --qmp, waits for that VM until --vm-timeout.
Result<MovedBy> move_writes(const RecoverOptions& o, const RecoverPaths& p,
                            const std::string& format, const std::optional<Owner>& owner,
                            ImageRestorer* restorer, const std::atomic<bool>& stop,
                            uint64_t* copied) {
  const QemuTarget target{o.qmp, o.domain, o.uri};
  const bool has_vm = !o.qmp.empty() || !o.domain.empty();
  const auto deadline = Clock::now() + std::chrono::seconds(o.vm_timeout_s);
  std::unique_ptr<QmpClient> qmp;
  bool vm_seen = false;
  bool told = false;
  for (;;) {
    if (stop) return Status(ErrorKind::kFailure, "stopped");
    if (restorer && restorer->done()) {
      if (auto s = restorer->wait(); !s) return s;
      restorer = nullptr;
    }
    std::optional<VmView> vm;
    if (has_vm) {
      if (!qmp) {
        auto c = QmpClient::connect(target, Millis(2000));
        if (c) qmp = std::move(*c);
      }
      if (qmp) {
        auto v = look(*qmp, p);
        if (v) vm = *v;
        else qmp.reset();
      }
    }
    if (vm && vm->image && !vm->overlay) return MovedBy::kAlready;  // a killed recover moved it
    if (vm && vm->overlay) {
      vm_seen = true;
      if (!told) {
        std::fprintf(stderr, "kvmcdp: the VM has %s open (node %s)%s\n", p.overlay.c_str(),
                     vm->overlay->node_name.c_str(),
                     restorer ? ": restoring the point into the image beside it" : "");
        told = true;
      }
      if (!restorer) {
        const std::string node = vm->overlay->node_name;
        auto s = mirror_and_pivot(*qmp, node, p, format, o.copy_speed_mib << 20, owner, stop,
                                  copied);
        if (s) {
          // A node the VM's command line added stays open without its
          // device: close it, or its NBD client waits on a gone export.
          (void)qmp->execute("blockdev-del", {{"node-name", node}});
          return MovedBy::kMirror;
        }
        // A VM that went away meanwhile leaves its writes to qemu-img.
        qmp.reset();
        if (auto c = QmpClient::connect(target, Millis(2000)); c)
          if (auto v = look(**c, p); v && v->overlay) return s;
        continue;
      }
    } else if (!restorer && (!has_vm || vm_seen || Clock::now() > deadline)) {
      // No VM (any more): nothing writes the overlay but us.  Unless a
      // VM restarting on it holds its lock: then wait for it, up to the
      // timeout.
      auto s = merge_offline(p, format);
      if (s) return MovedBy::kCommit;
      if (s.kind() != ErrorKind::kBusy || !has_vm || Clock::now() > deadline) return s;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

Status run_recover(RecoverOptions o) {
  const uint64_t t0 = now_ns();
  // 1. The files: new ones, or with --resume those a recover began.
  const RecoverPaths p = paths_for(o.to);
  json state;
  if (o.resume) {
    auto s = read_run_state(p.state, fmt::format("{} has no recovery under way (no {})", p.image,
                                                 p.state));
    if (!s) return s.status();
    state = *s;
    o.store = state.value("store", "");
    o.format = state.value("format", "raw");
    if (o.qmp.empty() && o.domain.empty()) {  // the VM it was started for
      o.domain = state.value("domain", "");
      o.uri = state.value("connect", "");
    }
    o.point = PointSpec{};
    o.point.seq = state.value("seq", uint64_t(0));
    if (!exists(p.overlay)) {
      // Killed after the overlay went, or before it was made (then no VM
      // can have written): all that is left is the state.
      ::unlink(p.state.c_str());
      if (!exists(p.image)) {
        remove_killed_restore_temps(p.image);
        return Status(ErrorKind::kNotFound,
                      fmt::format("neither {} nor {} exists: nothing to resume", p.image,
                                  p.overlay));
      }
      std::fprintf(stderr, "kvmcdp: recovered: %s was complete already\n", p.image.c_str());
      return Status::ok();
    }
    if (!exists(p.image)) remove_killed_restore_temps(p.image);
  } else {
    if (o.store.empty()) return Status(ErrorKind::kUsage, "recover needs --store (or --resume)");
    if (auto s = require_point(o.point, "recover"); !s) return s;
    if (auto s = check_output_outside_store(p.image, o.store); !s) return s;
    for (const auto& f : {p.image, p.overlay, p.state})
      if (exists(f))
        return Status(ErrorKind::kExists,
                      fmt::format("{} exists: recover writes a new image (or --resume one it "
                                  "began)",
                                  f));
  }
  std::string old_source, old_format;  // --domain: the file its disk read before
  std::optional<Owner> owner;
  if (!o.domain.empty() && !o.resume) {
    if (o.drive.empty())
      return Status(ErrorKind::kUsage,
                    "recover --domain needs --drive DEV: the disk's target in the domain (vda)");
    auto src = libvirt_stopped_disk_source(o.uri, o.domain, o.drive);
    if (!src) return src.status();
    old_source = src->file;
    old_format = src->format;
    struct stat st;
    if (::stat(old_source.c_str(), &st) == 0) owner = Owner{st.st_uid, st.st_gid};
  } else if (o.resume && state.contains("uid")) {
    owner = Owner{state.value("uid", uid_t(0)), state.value("gid", gid_t(0))};
  }

  // 2. The point, pinned against prune while anything reads it.
  auto point = open_point(o.store, o.point);
  if (!point) return point.status();
  StoreView* view = &point->view;
  const uint64_t seq = point->seq;
  Pin pin{"recover", ::getpid(), process_start_ticks(::getpid()), seq, point->time_ns, p.image,
          now_ns()};
  auto pin_file = PinFile::create(view->store_dir, pin);
  std::optional<PinFile> held;
  if (pin_file) held.emplace(std::move(*pin_file));
  else if (::access(view->store_dir.c_str(), W_OK) == 0) return pin_file.status();
  const std::string sock = o.resume ? state.value("socket", "") : socket_for(p.image);
  if (!o.resume) {
    state = {{"store", fs::absolute(view->store_dir).lexically_normal().string()},
             {"seq", seq},
             {"format", o.format},
             {"socket", sock}};
    if (!o.domain.empty()) {
      state["domain"] = o.domain;
      state["connect"] = o.uri;
      state["old_source"] = old_source;
    }
    if (owner) {
      state["uid"] = owner->uid;
      state["gid"] = owner->gid;
    }
    if (auto s = write_run_state(p.state, state); !s) return s;
  }

  // 3. The point into IMAGE, unless a killed run did it: started first,
  //    so that it runs while the export indexes the journal and the VM
  //    starts (it is the longest step).
  std::atomic<bool> stop{false};  // ends the export and this thread
  std::atomic<bool> signalled{false}, abort_restore{false};
  std::thread signals([&] {
    sigset_t sigs = stop_signals();
    timespec tick{0, 200 * 1000 * 1000};
    while (!signalled && !stop)
      if (sigtimedwait(&sigs, nullptr, &tick) > 0) signalled = abort_restore = true;
  });
  StopAndJoin join_signals{stop, signals};
  std::optional<ImageRestorer> restorer;
  if (!exists(p.image)) {
    auto own = open_store_view(view->store_dir);
    if (!own) return own.status();
    restorer.emplace(std::move(*own), seq, p, o.format, o.copy_speed_mib << 20, abort_restore);
  }
  struct Abort {
    std::atomic<bool>& flag;
    ~Abort() { flag = true; }  // whatever ends this run ends the restore first
  } abort_on_exit{abort_restore};

  // 4. The export, on the socket the overlay's header names.  No
  //    background fill: the restore into IMAGE is coming anyway; the VM's
  //    reads until the pivot decompress what they need.
  auto work = ScratchDir::create("recover");
  if (!work) return work.status();
  auto img = PointImage::open(*view, seq, work->path(), false);
  if (!img) return img.status();
  fs::create_directories(fs::path(sock).parent_path());
  auto lfd = listen_unix(sock);
  if (!lfd) return lfd.status();
  struct Unlink {
    std::string path;
    ~Unlink() { ::unlink(path.c_str()); }
  } unlink_socket{sock};
  give(owner, sock);
  ExportServerStats stats;
  std::thread server([&] { (void)serve_export(lfd->get(), **img, "", stop, &stats); });
  StopAndJoin join_server{stop, server};

  // 5. The overlay, and what --resume needs, before anyone is told.
  if (!o.resume) {
    if (auto s = create_overlay(p.overlay, backing_json(sock), "raw", view->manifest.disk_size,
                                kSnapshotOverlay);
        !s) {
      abort_restore = true;
      if (restorer) {
        (void)restorer->wait();
        ::unlink(p.image.c_str());
      }
      ::unlink(p.state.c_str());
      return s;
    }
    give(owner, p.overlay);
  }
  std::fprintf(stderr,
               "kvmcdp: %s %s (seq %llu, %s) in %.0f ms: start the VM on it (qcow2); it moves "
               "onto %s (%s) once that holds the point\n",
               p.overlay.c_str(), o.resume ? "serves again" : "is ready",
               static_cast<unsigned long long>(seq), format_time_human(point->time_ns).c_str(),
               (now_ns() - t0) / 1e6, p.image.c_str(), o.format.c_str());
  std::printf("%s\n", p.overlay.c_str());
  std::fflush(stdout);
  if (!o.domain.empty() && !o.resume) {
    // The domain on the overlay, started.  Its definition names the
    // overlay until the VM is on IMAGE: a restart meanwhile keeps its
    // writes.
    if (auto s = libvirt_repoint_disk(o.uri, o.domain, old_source, p.overlay, "qcow2"); !s)
      return s;
    if (auto s = libvirt_start_domain(o.uri, o.domain); !s) {
      (void)libvirt_repoint_disk(o.uri, o.domain, p.overlay, old_source, old_format);
      return s;
    }
    std::fprintf(stderr, "kvmcdp: libvirt domain %s started on %s\n", o.domain.c_str(),
                 p.overlay.c_str());
  }

  // 6. The VM's writes into IMAGE, and the VM onto it.
  uint64_t copied = 0;
  auto moved = move_writes(o, p, o.format, owner, restorer ? &*restorer : nullptr, signalled,
                           &copied);
  if (!moved) {
    if (signalled)
      return Status(ErrorKind::kFailure,
                    "stopped before the VM was on " + p.image +
                        ": its reads of the point wait for `kvmcdp recover --resume --to " +
                        o.to + "`");
    return moved.status();
  }

  // 7. Done: IMAGE stands alone; the overlay, the export and the state go.
  //    A domain's definition names IMAGE from now on.
  if (!o.domain.empty())
    if (auto s = libvirt_repoint_disk(o.uri, o.domain, p.overlay, p.image, o.format); !s)
      return Status(s.kind(), fmt::format("the VM is on {}, but libvirt domain {}'s definition "
                                          "still names {} ({}): run recover --resume again",
                                          p.image, o.domain, p.overlay, s.message()));
  ::unlink(p.overlay.c_str());
  ::unlink(p.state.c_str());
  std::string how = *moved == MovedBy::kMirror
                        ? fmt::format("the VM runs on it now ({} bytes of its writes moved by "
                                      "the mirror)",
                                      copied)
                    : *moved == MovedBy::kCommit
                        ? std::string("no VM had the overlay open: its writes are merged in; "
                                      "start the VM on it")
                        : std::string("the VM was on it already");
  std::fprintf(stderr,
               "kvmcdp: recovered: %s holds seq %llu plus what the VM wrote; %s; %llu bytes "
               "were read through the export, %.1f s in all\n",
               p.image.c_str(), static_cast<unsigned long long>(seq), how.c_str(),
               static_cast<unsigned long long>(stats.bytes_read.load()), (now_ns() - t0) / 1e9);
  return Status::ok();
}

}  // namespace

CommandRunner setup_recover_command(CLI::App* app) {
  auto o = std::make_shared<RecoverOptions>();
  app->add_option("--store", o->store, "the store to recover from");
  auto point = add_point_options(app, &o->point);
  app->add_option("--to", o->to,
                  "the new image the point is restored into; the VM starts on "
                  "IMAGE.kvmcdp-recover.qcow2 at once and moves onto IMAGE")
      ->required();
  app->add_option("--format", o->format, "IMAGE's format: raw or qcow2")
      ->check(CLI::IsMember({"raw", "qcow2"}))
      ->capture_default_str();
  add_qemu_target_options(app, &o->qmp, &o->domain, &o->uri,
                          "the QMP socket of the VM started on the overlay: its writes are "
                          "mirrored into IMAGE and it moves onto IMAGE; without, qemu-img "
                          "merges them",
                          "instead of --qmp: a libvirt domain, shut off, whose disk --drive "
                          "recover points at the overlay, starts, and moves onto IMAGE");
  app->add_option("--drive", o->drive, "with --domain: the disk's target in the domain (vda)")
      ->needs("--domain");
  app->add_flag("--resume", o->resume,
                "serve the point again for an image whose recover was killed, and finish")
      ->excludes("--store")
      ->excludes("--format")
      ->excludes(point.at)
      ->excludes(point.seq)
      ->excludes(point.mark)
      ->excludes(point.latest);
  app->add_option("--copy-speed", o->copy_speed_mib,
                  "MiB/s at most for the restore into IMAGE and the mirror (default: no "
                  "limit), so that they leave the storage to the VMs")
      ->check(CLI::Range(uint64_t(0), uint64_t(1) << 30));
  app->add_option("--vm-timeout", o->vm_timeout_s,
                  "with --qmp: seconds to wait for the VM to open the overlay before its "
                  "writes, if any, are merged without it")
      ->capture_default_str();
  return [o]() {
    take_stop_signals_synchronously();
    return run_recover(*o);
  };
}

}  // namespace kvmcdp
