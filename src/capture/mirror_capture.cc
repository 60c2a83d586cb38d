#include "capture/mirror_capture.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>

#include <fmt/format.h>

#include "base/fsutil.h"

namespace kvmcdp {

MirrorCapture::MirrorCapture(QemuTarget target, std::string node, uint64_t stream_id,
                             std::chrono::milliseconds stall_timeout)
    : target_(std::move(target)), node_(std::move(node)), names_(mirror_names(stream_id)),
      stall_timeout_(stall_timeout),
      socket_(fmt::format("/tmp/kvmcdp-{}-{:016x}.nbd", getpid(), stream_id)) {}

MirrorCapture::~MirrorCapture() {
  if (!mirror_started_ && !server_started_ && !thread_.joinable()) return;
  auto qmp = QmpClient::connect(target_);
  teardown(qmp ? qmp->get() : nullptr);
}

// Undoes what is in place, in reverse order.  The job first: its end
// closes the NBD connection, which ends the receiver.
void MirrorCapture::teardown(QmpClient* qmp) {
  stopping_ = true;
  marks_.reset();
  if (mirror_started_ && qmp) stop_mirror(*qmp, names_);
  mirror_started_ = false;
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  if (resync_) resync_->stop();
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  if (qmp && export_added_)
    qmp->execute("block-export-del", {{"id", names_.export_}, {"mode", "hard"}});
  if (qmp && server_started_) {
    qmp->execute("nbd-server-stop");
    unlink(socket_.c_str());
  }
  server_started_ = export_added_ = false;
}

Status MirrorCapture::prepare(QmpClient& qmp) {
  if (Status s = remove_mirror_leftovers(qmp, names_); !s) return s;
  QmpReply nodes = qmp.execute("query-named-block-nodes", {{"flat", true}});
  if (!nodes.ok()) return nodes.status();
  for (const auto& n : nodes.value)
    if (n.value("node-name", "") == node_ && n.contains("image"))
      disk_size_ = n["image"].value("virtual-size", uint64_t{0});
  if (disk_size_ == 0)
    return Status(ErrorKind::kQemu, fmt::format("QEMU does not say the size of node {}", node_));
  auto server = QemuNbdServer::start(qmp, socket_);
  if (!server) return server.status();
  server_started_ = true;
  if (Status s = server->add_export(qmp, names_.export_, node_); !s) return s;
  export_added_ = true;
  return Status::ok();
}

// The NBD target's connection: one end of a socketpair handed to QEMU
// with getfd (no socket path, which a QEMU running as another user could
// not open), or a private unix socket where QEMU has no getfd.
// blockdev-add connects and negotiates before it returns, so the
// handshake runs on another thread meanwhile.
Status MirrorCapture::connect_target(QmpClient& qmp) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("socketpair", ""));
  std::string fdname = names_.target;
  QmpReply got = qmp.execute_with_fd("getfd", {{"fdname", fdname}}, sv[1]);
  close(sv[1]);
  json addr = {{"type", "fd"}, {"str", fdname}};
  fsutil::Fd listener;
  std::string path;
  if (got.ok()) {
    fd_ = sv[0];
  } else {
    close(sv[0]);
    if (got.error_class != "CommandNotFound") return Status(ErrorKind::kQemu, "getfd: " + got.message);
    // qemu-storage-daemon: a private socket that only this QEMU connects to.
    path = fmt::format("/tmp/kvmcdp-{}-{:016x}.target", getpid(), names_.stream_id);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path.c_str());
    unlink(path.c_str());
    listener = fsutil::Fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (listener.get() < 0 ||
        bind(listener.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
        listen(listener.get(), 1) != 0)
      return Status(ErrorKind::kFailure, fsutil::errno_message("listen", path));
    addr = {{"type", "unix"}, {"path", path}};
  }
  NbdReceiverOptions o;
  o.disk_size = disk_size_;
  o.stall_timeout = stall_timeout_;
  Status shook = Status::ok();
  std::atomic<bool> give_up{false};
  std::thread hs([&] {
    if (fd_ < 0) {
      for (int waited = 0; fd_ < 0 && !give_up && waited < 30000; waited += 100) {
        pollfd p{listener.get(), POLLIN, 0};
        if (poll(&p, 1, 100) == 1) fd_ = accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
      }
      if (fd_ < 0) {
        shook = Status(ErrorKind::kQemu, "QEMU's NBD client did not connect");
        return;
      }
    }
    rx_ = std::make_unique<NbdReceiver>(fd_, writer_, o);
    rx_->set_live(live_durable_, live_counters_, live_mu_);
    rx_->set_resync_compare(compare_);
    shook = rx_->handshake(30000);
  });
  Status started = start_mirror(qmp, node_, names_, addr);
  if (!started) {
    give_up = true;
    if (got.ok()) shutdown(fd_, SHUT_RDWR);  // ends a handshake that waits
  }
  hs.join();
  if (!path.empty()) unlink(path.c_str());
  if (!started) return started;
  mirror_started_ = true;
  return shook;
}

Status MirrorCapture::start(QmpClient& qmp, journal::JournalWriter* writer, bool continuing) {
  writer_ = writer;
  auto kept = bitmap_exists(qmp, node_, names_.bitmap);
  if (!kept) return kept.status();
  bitmap_kept_ = *kept;
  if (!*kept) {
    // A leftover that QEMU marked inconsistent goes; a fresh one starts.
    qmp.execute("block-dirty-bitmap-remove", {{"node", node_}, {"name", names_.bitmap}});
    if (Status s = add_bitmap(qmp, node_, names_.bitmap); !s) return s;
  }
  if (Status s = connect_target(qmp); !s) return s;
  // Resync: from the bitmap QEMU kept, or, without it, the whole disk.
  rx_->start_at(writer->last_durable_seq(), continuing, continuing ? 1 : 0);
  auto reader = DiskReader::connect(socket_, names_.export_, "base:allocation");
  if (!reader) return reader.status();
  auto trim_reader = DiskReader::connect(socket_, names_.export_, "base:allocation");
  if (!trim_reader) return trim_reader.status();
  rx_->set_trim_reader(std::move(*trim_reader));
  resync_ = std::make_unique<MirrorResync>(rx_.get(), std::move(*reader));
  rx_->set_resync_sink([r = resync_.get()](uint64_t off, uint64_t len) { r->add(off, len); });
  thread_ = std::thread([this] { receive(); });
  resync_->start();
  auto marks = MarkServer::start(names_.stream_id, [this](const std::string& n) { return mark(n); });
  if (!marks) return marks.status();
  marks_ = std::move(*marks);
  if (!continuing) return Status::ok();
  if (!*kept) {
    resync_->add(0, disk_size_);
    return Status::ok();
  }
  return scan_bitmap(qmp);
}

// The bitmap's ranges, read after the mirror started: everything written
// since the last checkpoint of the last run, including what was written
// while no kvmcdp ran.  A disabled copy is what an export can offer.
Status MirrorCapture::scan_bitmap(QmpClient& qmp) {
  // A copy left by a protect killed in this very step.
  qmp.execute("block-dirty-bitmap-remove", {{"node", node_}, {"name", names_.frozen}});
  if (Status s = freeze_bitmap(qmp, node_, names_); !s) return s;
  Status result = Status::ok();
  QmpReply added = qmp.execute("block-export-add", {{"type", "nbd"},
                                                    {"id", names_.bitmap_export},
                                                    {"name", names_.bitmap_export},
                                                    {"node-name", node_},
                                                    {"writable", false},
                                                    {"bitmaps", json::array({names_.frozen})}});
  if (!added.ok()) result = Status(ErrorKind::kQemu, "block-export-add: " + added.message);
  uint64_t dirty = 0;
  if (result) {
    result = [&]() -> Status {
      auto reader = DiskReader::connect(socket_, names_.bitmap_export,
                                        "qemu:dirty-bitmap:" + names_.frozen);
      if (!reader) return reader.status();
      auto extents = (*reader)->extents(
          0, disk_size_, std::chrono::steady_clock::now() + std::chrono::seconds(60));
      if (!extents) return extents.status();
      for (const DiskExtent& e : *extents) {
        if (!e.set) continue;
        rx_->expect_range();
        resync_->add(e.offset, e.length);
        dirty += e.length;
      }
      return Status::ok();
    }();
    qmp.execute("block-export-del", {{"id", names_.bitmap_export}, {"mode", "hard"}});
  }
  drop_frozen_bitmap(qmp, node_, names_);
  // The scan itself was the first range of the resync.
  rx_->submit(ResyncItem{true, 0, 0, {}, 0, true});
  scanned_dirty_ = dirty;
  return result;
}

void MirrorCapture::receive() {
  auto end = rx_->run(stop_);
  std::lock_guard l(mu_);
  counters_ = rx_->counters();
  if (!end) error_ = end.status();
  else if (*end == NbdReceiver::End::kDisconnected && !stopping_)
    error_ = Status(ErrorKind::kQemu, "QEMU closed the mirror's NBD connection", Cause::kPeerClosed);
  ended_ = true;
}

Status MirrorCapture::error() const {
  std::lock_guard l(mu_);
  if (!error_.is_ok()) return error_;
  if (resync_) return resync_->error();
  return Status::ok();
}

ReceiverCounters MirrorCapture::counters() const {
  // The receiver publishes through set_live; until then, what it had.
  std::lock_guard l(mu_);
  return counters_;
}

Result<BaseCopyResult> MirrorCapture::take_base(QmpClient& qmp, const std::string& out_path,
                                                bool show_progress) {
  if (Status s = copy_base_through_server(qmp, node_, socket_, out_path, show_progress); !s)
    return s;
  // Every write whose data the copy may hold has reached the journal once
  // the requests in flight have ended: the mirror completes a write only
  // after kvmcdp's reply.
  if (Status s = drain_all(qmp); !s) return s;
  BaseCopyResult r;
  r.complete_seq = rx_->appended_seq();
  return r;
}

Status MirrorCapture::checkpoint(QmpClient& qmp) {
  if (!rx_ || rx_->in_gap() || ended_) return Status::ok();
  return checkpoint_bitmap(qmp, node_, names_.bitmap);
}

Result<uint64_t> MirrorCapture::mark(const std::string& name) {
  if (!rx_ || ended_) return Status(ErrorKind::kFailure, "capture has ended");
  ResyncItem item;
  item.mark = name;
  item.mark_seq = std::make_shared<std::promise<uint64_t>>();
  auto seq = item.mark_seq->get_future();
  rx_->submit(std::move(item));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (seq.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready)
    if (ended_ || std::chrono::steady_clock::now() > deadline)
      return Status(ErrorKind::kFailure, "the journal did not take the mark in time");
  uint64_t s = seq.get();
  while (!(live_durable_ && live_durable_->load() >= s)) {
    if (ended_ || std::chrono::steady_clock::now() > deadline)
      return Status(ErrorKind::kFailure,
                    fmt::format("mark '{}' (seq {}) did not become durable", name, s));
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return s;
}

Status MirrorCapture::stop(QmpClient& qmp) {
  Status result = Status::ok();
  // A last record at the moment capture ends: times up to it stay
  // recoverable after a later restart continues the stream.
  if (!ended_) mark("kvmcdp:stopped");
  stopping_ = true;
  // Nothing written until the job ends is lost: the next protect resends
  // only what the bitmap marks from here on.
  if (!rx_->in_gap() && !ended_) result = checkpoint_bitmap(qmp, node_, names_.bitmap);
  if (mirror_started_) {
    Status s = stop_mirror(qmp, names_);
    if (!s && result) result = s;
    mirror_started_ = false;
  }
  teardown(&qmp);
  return result;
}

}  // namespace kvmcdp
