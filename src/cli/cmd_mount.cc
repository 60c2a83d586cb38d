// kvmcdp mount / umount: file-level restore.  The point is served by
// kvmcdp's own export (export/), QEMU's storage daemon turns that NBD
// export into a file through its FUSE export, a read-only loop device
// (with its partitions) stands on that file, and the file system is
// mounted read-only without replaying its journal.  The host needs no
// nbd kernel module.  `umount` finds everything from the mount point:
// its loop device, the loop's backing file in the mount's work folder,
// and in that folder the pid of the process that keeps it all up.
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
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
#include "qemu/subprocess.h"
#include "store/point.h"
#include "store/run_state_file.h"
#include "store/store_pins.h"
#include "store/time_parse.h"

namespace kvmcdp {
namespace {

namespace fs = std::filesystem;

struct MountOptions {
  std::string store;
  PointSpec point;
  std::string mountpoint;
  int partition = 0;
  bool foreground = false;
};

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string storage_daemon_binary() {
  const char* env = getenv("KVMCDP_QEMU_STORAGE_DAEMON");
  return env && *env ? env : "qemu-storage-daemon";
}

bool on_path(const std::string& prog) {
  if (prog.find('/') != std::string::npos) return ::access(prog.c_str(), X_OK) == 0;
  const char* path = getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':'))
    if (::access((dir + "/" + prog).c_str(), X_OK) == 0) return true;
  return false;
}

// What the host must have; names the first thing missing.
Status check_host() {
  if (!on_path(storage_daemon_binary()))
    return Status(ErrorKind::kFailure,
                  "mount needs QEMU's qemu-storage-daemon with FUSE exports (Debian: "
                  "qemu-system-common), which is not on PATH; kvmcdp export serves the point "
                  "to other NBD clients without it");
  if (::access("/dev/fuse", R_OK | W_OK) != 0)
    return Status(ErrorKind::kFailure,
                  "mount needs /dev/fuse (the fuse kernel module), which is missing here; "
                  "kvmcdp export serves the point to other NBD clients without it");
  for (const char* t : {"losetup", "blkid", "partx", "mount"})
    if (!on_path(t))
      return Status(ErrorKind::kFailure,
                    fmt::format("mount needs {} (Debian: util-linux, mount), which is not on PATH", t));
  return Status::ok();
}

// A directory that is not a mount point already.
Status check_mountpoint(const std::string& mp) {
  struct stat st, parent;
  if (::stat(mp.c_str(), &st) != 0)
    return Status(ErrorKind::kNotFound, fsutil::errno_message("mount point", mp));
  if (!S_ISDIR(st.st_mode))
    return Status(ErrorKind::kUsage, fmt::format("{} is not a directory", mp));
  std::string up = fs::absolute(mp).lexically_normal().parent_path().string();
  if (::stat(up.c_str(), &parent) == 0 && (parent.st_dev != st.st_dev || parent.st_ino == st.st_ino))
    return Status(ErrorKind::kBusy, fmt::format("{} is a mount point already", mp));
  return Status::ok();
}

// The mount options that leave a crash-consistent file system as it is:
// its journal is not replayed (a replay would write to the device).
std::string mount_options(const std::string& fstype) {
  if (fstype == "ext3" || fstype == "ext4") return "ro,noload";
  if (fstype == "xfs") return "ro,norecovery";
  if (fstype == "btrfs") return "ro,rescue=nologreplay";
  return "ro";
}

// One mount's pieces, taken down in reverse order by the destructor.
struct Mounted {
  std::optional<ScratchDir> scratch;  // first: removed last
  std::string mountpoint;
  std::string work;
  std::string loop;
  bool mounted = false;
  pid_t daemon = -1;
  std::atomic<bool> stop{false};
  std::thread server;

  ~Mounted() {
    if (mounted) ::umount2(mountpoint.c_str(), MNT_DETACH);
    if (!loop.empty()) (void)run_capture({"losetup", "-d", loop});
    if (daemon > 0) {
      ::kill(daemon, SIGTERM);
      ::waitpid(daemon, nullptr, 0);
    }
    stop = true;
    if (server.joinable()) server.join();
  }
};

Result<pid_t> spawn_storage_daemon(const std::string& sock, const std::string& file,
                                   const std::string& log) {
  std::vector<std::string> argv = {
      storage_daemon_binary(),
      "--blockdev",
      fmt::format("driver=nbd,server.type=unix,server.path={},node-name=point,read-only=on", sock),
      "--export",
      fmt::format("type=fuse,id=point,node-name=point,mountpoint={},writable=off", file)};
  pid_t pid = fork();
  if (pid < 0) return Status(ErrorKind::kFailure, fsutil::errno_message("fork", argv[0]));
  if (pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, nullptr);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  return pid;
}

// Waits until QEMU's FUSE export covers `file` (its size becomes the disk's).
Status wait_fuse(const std::string& file, uint64_t size, pid_t daemon, const std::string& log) {
  for (int i = 0; i < 200; i++) {
    struct stat st;
    if (::stat(file.c_str(), &st) == 0 && uint64_t(st.st_size) == size) return Status::ok();
    int status;
    if (::waitpid(daemon, &status, WNOHANG) == daemon) {
      std::ifstream in(log);
      std::string line, last;
      while (std::getline(in, line))
        if (!line.empty()) last = line;
      return Status(ErrorKind::kFailure,
                    fmt::format("qemu-storage-daemon could not export the point through FUSE: {}",
                                last.empty() ? "it exited" : last));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return Status(ErrorKind::kFailure, "qemu-storage-daemon's FUSE export did not appear in 10 s");
}

// What to mount, in the exported disk file: the whole disk if it holds a
// file system, else the partition asked for or the only one with a file
// system.  Partitions are read from the table (partx) and given to the
// loop device as offset and size, so no partition device nodes (udev)
// are needed.
struct FsArea {
  int partition = 0;  // 0: the whole disk
  uint64_t offset = 0, size = 0;
  std::string type;
};

std::string fs_type_at(const std::string& file, uint64_t offset, uint64_t size) {
  std::vector<std::string> argv = {"blkid", "-p", "-o", "value", "-s", "TYPE"};
  if (size) {
    argv.insert(argv.end(), {"-O", std::to_string(offset), "-S", std::to_string(size)});
  }
  argv.push_back(file);
  auto out = run_capture(argv);
  return out ? trim(*out) : "";
}

Result<FsArea> pick_area(const std::string& file, int partition) {
  std::vector<FsArea> parts;
  if (auto out = run_capture({"partx", "-g", "-o", "NR,START,SECTORS", file})) {
    std::istringstream in(*out);
    FsArea a;
    uint64_t start, sectors;
    while (in >> a.partition >> start >> sectors) {
      a.offset = start * 512;
      a.size = sectors * 512;
      a.type = fs_type_at(file, a.offset, a.size);
      parts.push_back(a);
    }
  }
  if (partition > 0) {
    for (const auto& a : parts)
      if (a.partition == partition) {
        if (a.type.empty())
          return Status(ErrorKind::kUsage, fmt::format("partition {} holds no file system this "
                                                       "host knows", partition));
        return a;
      }
    return Status(ErrorKind::kUsage,
                  fmt::format("the disk has no partition {} ({} partitions)", partition,
                              parts.size()));
  }
  FsArea whole;
  whole.type = parts.empty() ? fs_type_at(file, 0, 0) : "";
  if (!whole.type.empty()) return whole;
  std::vector<FsArea> found;
  for (const auto& a : parts)
    if (!a.type.empty() && a.type != "swap") found.push_back(a);
  if (found.size() == 1) return found[0];
  if (found.empty()) return Status(ErrorKind::kUsage, "the disk holds no file system this host knows");
  std::string list;
  for (const auto& f : found)
    list += fmt::format("{}{}: {}", list.empty() ? "" : ", ", f.partition, f.type);
  return Status(ErrorKind::kUsage,
                fmt::format("the disk has {} partitions with file systems ({}): choose one with "
                            "--partition N",
                            found.size(), list));
}

// Everything up to the mounted file system; `ready` gets the line to
// print.  Stays up until SIGINT/SIGTERM.
Status mount_and_wait(const MountOptions& o, StoreView& view, uint64_t seq,
                      const std::function<void(const std::string&)>& ready) {
  // Declared before `m`, so they outlive the server thread it stops.
  std::optional<PinFile> held;
  std::unique_ptr<PointImage> image;
  fsutil::Fd lfd;
  ExportServerStats stats;
  Mounted m;
  m.mountpoint = fs::absolute(o.mountpoint).lexically_normal().string();
  auto dir = ScratchDir::create("mount");
  if (!dir) return dir.status();
  m.scratch.emplace(std::move(*dir));
  m.work = m.scratch->path();
  auto time_ns = record_time(*view.reader, seq);
  if (!time_ns) return time_ns.status();
  Pin pin{"mount", ::getpid(), process_start_ticks(::getpid()), seq, *time_ns, m.mountpoint,
          now_ns()};
  auto pin_file = PinFile::create(view.store_dir, pin);
  if (pin_file) held.emplace(std::move(*pin_file));
  else if (::access(view.store_dir.c_str(), W_OK) == 0) return pin_file.status();

  auto opened = PointImage::open(view, seq, m.work, false);
  if (!opened) return opened.status();
  image = std::move(*opened);
  std::string sock = m.work + "/nbd.sock";
  auto listening = listen_unix(sock);
  if (!listening) return listening.status();
  lfd = std::move(*listening);
  image->start_fill();
  m.server = std::thread([&] { (void)serve_export(lfd.get(), *image, "", m.stop, &stats); });

  std::string file = m.work + "/disk";
  { std::ofstream(file).flush(); }
  auto daemon = spawn_storage_daemon(sock, file, m.work + "/qemu-storage-daemon.log");
  if (!daemon) return daemon.status();
  m.daemon = *daemon;
  if (auto s = wait_fuse(file, image->size(), m.daemon, m.work + "/qemu-storage-daemon.log"); !s)
    return s;
  auto area = pick_area(file, o.partition);
  if (!area) return area.status();
  std::vector<std::string> losetup = {"losetup", "--find", "--show", "--read-only"};
  if (area->partition)
    losetup.insert(losetup.end(), {"--offset", std::to_string(area->offset), "--sizelimit",
                                   std::to_string(area->size)});
  losetup.push_back(file);
  auto loop = run_capture(losetup);
  if (!loop) return loop.status();
  m.loop = trim(*loop);
  const std::string& type = area->type;
  std::string opts = mount_options(type);
  if (auto s = run_process({"mount", "-t", type, "-o", opts, m.loop, m.mountpoint}); !s) return s;
  m.mounted = true;
  // For umount: who keeps this mount up.
  if (auto s = write_run_state(m.work + "/owner.json",
                              {{"pid", ::getpid()}, {"daemon", m.daemon}, {"loop", m.loop}});
      !s)
    return s;

  ready(fmt::format("kvmcdp: mounted seq {} ({}) of {} at {}: {}{}, options {}; "
                    "kvmcdp umount {} ends it",
                    seq, format_time_human(*time_ns), o.store, m.mountpoint, type,
                    area->partition ? fmt::format(" on partition {}", area->partition) : "",
                    opts, m.mountpoint));
  sigset_t sigs = stop_signals();
  while (sigwaitinfo(&sigs, nullptr) < 0) {
  }
  return Status::ok();
}

Status run_mount(const MountOptions& o) {
  // 1. Everything that can be refused, before anything is started.
  if (auto s = check_mountpoint(o.mountpoint); !s) return s;
  if (auto s = check_host(); !s) return s;
  auto point = open_point(o.store, o.point);
  if (!point) return point.status();
  StoreView* view = &point->view;
  const uint64_t* seq = &point->seq;

  if (o.foreground)
    return mount_and_wait(o, *view, *seq, [](const std::string& line) {
      std::fprintf(stderr, "%s; or Ctrl-C\n", line.c_str());
    });

  // 2. In the background: a child keeps the mount up; the parent waits
  //    for its first line ("ok ..." or "error KIND ...") and ends with it.
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return Status(ErrorKind::kFailure, "pipe failed");
  std::fflush(nullptr);
  pid_t child = fork();
  if (child < 0) return Status(ErrorKind::kFailure, fsutil::errno_message("fork", "mount"));
  if (child == 0) {
    ::close(p[0]);
    ::setsid();
    int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::dup2(null, 2);
    bool told = false;
    auto tell = [&](const std::string& line) {
      if (told) return;
      told = true;
      (void)!::write(p[1], line.data(), line.size());
      ::close(p[1]);
    };
    Status s = mount_and_wait(o, *view, *seq, [&](const std::string& line) { tell("ok " + line); });
    if (!s) tell(fmt::format("error {} {}", int(s.kind()), s.message()));
    _exit(s ? 0 : 1);
  }
  ::close(p[1]);
  std::string msg;
  char buf[4096];
  for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    msg.append(buf, size_t(n));
  }
  ::close(p[0]);
  if (msg.rfind("ok ", 0) == 0) {
    std::fprintf(stderr, "%s\n", msg.substr(3).c_str());
    return Status::ok();
  }
  ::waitpid(child, nullptr, 0);
  int kind = int(ErrorKind::kFailure);
  std::string text = "the mount process ended without a word";
  if (msg.rfind("error ", 0) == 0) {
    std::istringstream in(msg.substr(6));
    in >> kind;
    std::getline(in, text);
    text = text.empty() ? text : text.substr(1);
  }
  return Status(ErrorKind(kind), text);
}

// The source device of mount point `mp`, from /proc/self/mountinfo.
std::optional<std::string> mount_source(const std::string& mp) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, devno, root, point, rest;
    f >> id >> parent >> devno >> root >> point;
    if (point != mp) continue;
    std::string tok;
    while (f >> tok && tok != "-") {
    }
    std::string fstype, source;
    f >> fstype >> source;
    return source;
  }
  return std::nullopt;
}

std::string read_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// Alive and not a zombie (an orphan's zombie may wait long for its reaper).
bool running(int pid) {
  if (!pid_alive(pid)) return false;
  std::string stat = read_line(fmt::format("/proc/{}/stat", pid));
  auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() || stat[close + 2] != 'Z';
}

Status run_umount(const std::string& mountpoint) {
  std::string mp = fs::absolute(mountpoint).lexically_normal().string();
  auto source = mount_source(mp);
  if (!source) return Status(ErrorKind::kNotFound, fmt::format("{} is not mounted", mp));
  // /dev/loopN or /dev/loopNpM -> loopN -> its backing file -> the work folder.
  std::string dev = fs::path(*source).filename();
  auto p = dev.find('p', 4);
  std::string loop = p == std::string::npos ? dev : dev.substr(0, p);
  std::string backing = read_line("/sys/block/" + loop + "/loop/backing_file");
  std::string owner = fs::path(backing).parent_path().string() + "/owner.json";
  auto j = loop.rfind("loop", 0) == 0 && !backing.empty() ? read_run_state(owner, "")
                                                          : Result<nlohmann::json>(Status(
                                                                ErrorKind::kNotFound, ""));
  if (!j)
    return Status(ErrorKind::kNotFound,
                  fmt::format("{} is not a kvmcdp mount (it is {}): use umount(8)", mp, *source));
  int pid = j->value("pid", 0);
  if (::umount(mp.c_str()) != 0)
    return Status(errno == EBUSY ? ErrorKind::kBusy : ErrorKind::kFailure,
                  errno == EBUSY ? fmt::format("{} is busy: a process uses files under it "
                                               "(fuser -vm {})",
                                               mp, mp)
                                 : fsutil::errno_message("umount", mp));
  if (running(pid)) {
    ::kill(pid, SIGTERM);
    for (int i = 0; i < 200 && running(pid); i++)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (running(pid))
      return Status(ErrorKind::kFailure,
                    fmt::format("unmounted {}, but its kvmcdp mount process {} did not end", mp,
                                pid));
  }
  // Whatever is left (a killed mount process leaves all of it), checked
  // to be still this mount's before it is touched.
  if (read_line("/sys/block/" + loop + "/loop/backing_file") == backing)
    (void)run_capture({"losetup", "-d", "/dev/" + loop});
  int daemon = j->value("daemon", 0);
  const std::string work = fs::path(backing).parent_path().string();
  if (daemon > 0 && running(daemon) &&
      read_line(fmt::format("/proc/{}/cmdline", daemon)).find(work) != std::string::npos)
    ::kill(daemon, SIGTERM);
  std::error_code ec;
  fs::remove_all(work, ec);
  std::fprintf(stderr, "kvmcdp: unmounted %s\n", mp.c_str());
  return Status::ok();
}

}  // namespace

CommandRunner setup_mount_command(CLI::App* app) {
  auto o = std::make_shared<MountOptions>();
  app->add_option("--store", o->store, "the store to mount a point of")->required();
  add_point_options(app, &o->point);
  app->add_option("mountpoint", o->mountpoint, "an existing directory")->required();
  app->add_option("--partition", o->partition,
                  "the partition to mount (default: the whole disk if it holds a file system, "
                  "else its only partition that does)")
      ->check(CLI::Range(1, 128));
  app->add_flag("--foreground", o->foreground, "stay in the foreground; Ctrl-C unmounts");
  return [o]() {
    take_stop_signals_synchronously();
    if (auto s = require_point(o->point, "mount"); !s) return s;
    return run_mount(*o);
  };
}

CommandRunner setup_umount_command(CLI::App* app) {
  auto mp = std::make_shared<std::string>();
  app->add_option("mountpoint", *mp, "where kvmcdp mount mounted a point")->required();
  return [mp]() { return run_umount(*mp); };
}

}  // namespace kvmcdp
