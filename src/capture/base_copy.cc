// The base copy, taken through QEMU because QEMU owns the image (qcow2
// metadata changes under a running guest): its block layer is the only
// consistent reader.  Two ways, both reading the cdp filter node after the
// stream started, so base plus the journal is exact (see base_copy.h):
//
// 1. kvmcdp's own NBD server: a read-only export of the filter node on a
//    private unix socket, copied by qemu-img convert, which reads every
//    block and skips zero areas, leaving holes.  kvmcdp's own process
//    writes the file, so QEMU never needs access to the store.
//
// 2. When QEMU refuses to start that server (it allows only one, and backup
//    tools, libvirt's backup API and storage migration use it), a copy job
//    inside QEMU.  Reusing the running server with an extra export was
//    rejected: QMP does not tell where that server listens (no query for
//    its address), it may be TCP with TLS credentials kvmcdp does not have,
//    and an export there is listed to every client of somebody else's
//    server.  So kvmcdp leaves the server alone and has QEMU copy the disk
//    with blockdev-mirror (sync=full) into a raw file that kvmcdp creates
//    and hands over as a file descriptor (add-fd), then ends the job with a
//    soft block-job-cancel once it is READY: QEMU drains the disk, the
//    target is then the disk at that moment, and the guest keeps its disk
//    (never block-job-complete, which would switch the guest to the copy).
//    Mirror rather than blockdev-backup: backup writes the disk's zero
//    areas with fallocate(ZERO_RANGE), allocating the whole disk size on
//    the store, where mirror punches holes (unmap), and detect-zeroes on
//    the target turns zero data into holes too.
//
// Either way kvmcdp removes exactly what it added (its export and server,
// or its job, node and fd set), also when the copy fails, and nothing else.
#include "capture/base_copy.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <random>

#include <fmt/format.h>

#include "base/fsutil.h"
#include "qemu/qemu_drive.h"
#include "qemu/subprocess.h"

namespace kvmcdp {
namespace {

// Names no other QMP user can guess or collide with (and short enough for
// a node-name: QEMU takes at most 31 characters).
std::string private_name() {
  std::random_device rd;
  uint64_t r = (uint64_t(rd()) << 32) | rd();
  return fmt::format("kvmcdp-base-{:016x}", r);
}

// Makes `tmp` durable and renames it to `out_path`.
Status publish_file(int fd, const std::string& tmp, const std::string& out_path) {
  if (fsync(fd) != 0) return Status(ErrorKind::kFailure, fsutil::errno_message("fsync", tmp));
  if (rename(tmp.c_str(), out_path.c_str()) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("rename", tmp));
  return fsutil::fsync_dir(fsutil::dirname_of(out_path));
}

Status copy_through_own_nbd_server(QmpClient& qmp, const std::string& filter_node,
                                   const std::string& sock, const std::string& tmp,
                                   const std::string& out_path, bool show_progress) {
  std::string export_id = private_name();
  QmpReply exported = qmp.execute("block-export-add", {{"type", "nbd"},
                                                       {"id", export_id},
                                                       {"name", export_id},
                                                       {"node-name", filter_node},
                                                       {"writable", false}});
  Status copied = exported.status();
  if (copied) {
    copied = run_process({qemu_img_binary(), "convert", show_progress ? "-p" : "-q", "-f", "raw",
                          "-O", "raw",
                          fmt::format("nbd+unix:///{}?socket={}", export_id, sock), tmp},
                         show_progress);
    if (copied) {
      int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        copied = Status(ErrorKind::kFailure, fsutil::errno_message("open", tmp));
      } else {
        copied = publish_file(fd, tmp, out_path);
        close(fd);
      }
    }
    if (!copied) unlink(tmp.c_str());
    qmp.execute("block-export-del", {{"id", export_id}, {"mode", "hard"}});
  }
  return copied;
}

// The filter node's size in bytes (the mirror target must have it).
Result<uint64_t> node_size(QmpClient& qmp, const std::string& node) {
  QmpReply r = qmp.execute("query-named-block-nodes", {{"flat", true}});
  if (!r.ok()) return Status(ErrorKind::kQemu, "query-named-block-nodes: " + r.message);
  for (const auto& n : r.value)
    if (n.value("node-name", "") == node && n.contains("image"))
      return n["image"].value("virtual-size", uint64_t{0});
  return Status(ErrorKind::kQemu, fmt::format("QEMU has no block node {}", node));
}

// Our job's next event, ignoring everything else; nullopt on `timeout`.
std::optional<json> next_job_event(QmpClient& qmp, const std::string& job_id, Millis timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<Millis>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    auto ev = qmp.next_event(left);
    if (!ev) return std::nullopt;
    std::string name = ev->value("event", "");
    if (name.rfind("BLOCK_JOB_", 0) != 0 && name != "JOB_STATUS_CHANGE") continue;
    if ((*ev)["data"].value("device", (*ev)["data"].value("id", "")) != job_id) continue;
    return ev;
  }
}

void print_progress(QmpClient& qmp, const std::string& job_id) {
  QmpReply r = qmp.execute("query-jobs");
  if (!r.ok()) return;
  for (const auto& j : r.value) {
    if (j.value("id", "") != job_id) continue;
    uint64_t done = j.value("current-progress", uint64_t{0});
    uint64_t total = j.value("total-progress", uint64_t{0});
    if (total) fmt::print(stderr, "    ({:.2f}/100%)\r", 100.0 * double(done) / double(total));
  }
}

// Runs the mirror job `id` from `filter_node` into node `id` until it is a
// copy of the disk and has ended.  On any failure the job is cancelled.
Status run_mirror(QmpClient& qmp, const std::string& filter_node, const std::string& id,
                  bool show_progress) {
  QmpReply started = qmp.execute("blockdev-mirror", {{"job-id", id},
                                                     {"device", filter_node},
                                                     {"target", id},
                                                     {"sync", "full"},
                                                     {"auto-finalize", true},
                                                     {"auto-dismiss", true}});
  if (!started.ok()) return Status(ErrorKind::kQemu, "blockdev-mirror: " + started.message);
  Status result = Status::ok();
  bool cancel_sent = false;  // the soft cancel that ends a READY mirror
  for (;;) {
    auto ev = next_job_event(qmp, id, Millis(1000));
    if (!ev) {
      // No news within a second: the job runs; QMP must still answer.
      QmpReply alive = qmp.execute("query-jobs");
      if (!alive.ok()) {
        result = Status(ErrorKind::kQemu, "lost QMP during the base copy: " + alive.message);
        break;
      }
      if (show_progress && !cancel_sent) print_progress(qmp, id);
      continue;
    }
    std::string name = ev->value("event", "");
    const json& data = (*ev)["data"];
    if (name == "BLOCK_JOB_READY" && !cancel_sent) {
      // Ready: source and copy agree.  A soft cancel drains the disk, makes
      // the copy the disk at that moment and leaves the guest on its disk.
      QmpReply c = qmp.execute("block-job-cancel", {{"device", id}});
      if (!c.ok()) {
        result = Status(ErrorKind::kQemu, "block-job-cancel: " + c.message);
        break;
      }
      cancel_sent = true;
    } else if (name == "BLOCK_JOB_COMPLETED") {
      if (data.contains("error"))
        return Status(ErrorKind::kQemu, "the copy failed: " + data.value("error", ""));
      if (!cancel_sent) return Status(ErrorKind::kQemu, "the copy job ended before it was ready");
      if (show_progress) fmt::print(stderr, "    (100.00/100%)\n");
      return Status::ok();
    } else if (name == "BLOCK_JOB_CANCELLED") {
      return Status(ErrorKind::kQemu, "the copy job was cancelled by someone else");
    }
    // BLOCK_JOB_ERROR needs nothing: with the default error policy
    // (report) the job ends and BLOCK_JOB_COMPLETED says why.
  }
  // Failure with the job still there: end it hard, and wait for it to go so
  // that its node can be deleted.
  qmp.execute("block-job-cancel", {{"device", id}, {"force", true}});
  for (int i = 0; i < 60; ++i) {
    auto ev = next_job_event(qmp, id, Millis(1000));
    if (ev && (ev->value("event", "") == "BLOCK_JOB_CANCELLED" ||
               ev->value("event", "") == "BLOCK_JOB_COMPLETED"))
      break;
  }
  return result;
}

Status copy_with_mirror_job(QmpClient& qmp, const std::string& filter_node,
                            const std::string& tmp, const std::string& out_path,
                            bool show_progress) {
  auto size = node_size(qmp, filter_node);
  if (!size) return size.status();
  // A fresh inode: a job left running by a killed kvmcdp may still write
  // into an older tmp file.
  unlink(tmp.c_str());
  int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) return Status(ErrorKind::kFailure, fsutil::errno_message("create", tmp));
  Status result = Status::ok();
  if (ftruncate(fd, static_cast<off_t>(*size)) != 0)
    result = Status(ErrorKind::kFailure, fsutil::errno_message("truncate", tmp));

  std::string id = private_name();
  int64_t fdset = -1;
  bool node_added = false;
  if (result) {
    QmpReply added = qmp.execute_with_fd("add-fd", {{"opaque", id}}, fd);
    if (added.ok()) fdset = added.value.value("fdset-id", int64_t{-1});
    else result = Status(ErrorKind::kQemu, "add-fd: " + added.message);
  }
  if (result) {
    QmpReply node = qmp.execute("blockdev-add", {{"driver", "file"},
                                                 {"node-name", id},
                                                 {"filename", fmt::format("/dev/fdset/{}", fdset)},
                                                 {"discard", "unmap"},
                                                 {"detect-zeroes", "unmap"}});
    node_added = node.ok();
    if (!node_added) result = Status(ErrorKind::kQemu, "blockdev-add: " + node.message);
  }
  if (result) result = run_mirror(qmp, filter_node, id, show_progress);
  if (node_added) {
    QmpReply del = qmp.execute("blockdev-del", {{"node-name", id}});
    if (!del.ok() && result)
      result = Status(ErrorKind::kQemu, "blockdev-del of the copy's target: " + del.message);
  }
  // QEMU 7.2 closes a removed fd only while the VM runs: in a paused VM
  // it keeps the (marked removed) descriptor until it runs again and the
  // next fd-set cleanup (a QMP disconnect) comes.
  if (fdset >= 0) qmp.execute("remove-fd", {{"fdset-id", fdset}});
  if (result) result = publish_file(fd, tmp, out_path);
  close(fd);
  if (!result) unlink(tmp.c_str());
  return result;
}

}  // namespace

Result<BaseCopyResult> take_base_copy(QmpClient& qmp, const std::string& filter_node,
                                      const std::string& out_path, bool show_progress) {
  std::string tmp = out_path + ".tmp";
  std::string sock = fmt::format("/tmp/kvmcdp-nbd-{}.sock", getpid());
  unlink(sock.c_str());

  QmpReply started = qmp.execute(
      "nbd-server-start", {{"addr", {{"type", "unix"}, {"data", {{"path", sock}}}}}});
  Status copied = Status::ok();
  if (started.ok()) {
    copied = copy_through_own_nbd_server(qmp, filter_node, sock, tmp, out_path, show_progress);
    qmp.execute("nbd-server-stop");  // ours: it started above
    unlink(sock.c_str());
  } else {
    // Not ours (most likely another tool's server is running): leave it.
    copied = copy_with_mirror_job(qmp, filter_node, tmp, out_path, show_progress);
    if (!copied)
      copied = Status(copied.kind(),
                      fmt::format("{} (copied inside QEMU because its NBD server is taken: {})",
                                  copied.message(), started.message));
  }
  if (!copied) return copied;
  // The copy ended before this query: every seq from here on is exact.
  auto info = query_cdp(qmp, filter_node);
  if (!info) return info.status();
  if (!*info) return Status(ErrorKind::kQemu, "the cdp filter disappeared during the base copy");
  BaseCopyResult r;
  r.complete_seq = (*info)->seq;
  return r;
}

Status copy_base_through_server(QmpClient& qmp, const std::string& node,
                                const std::string& socket, const std::string& out_path,
                                bool show_progress) {
  return copy_through_own_nbd_server(qmp, node, socket, out_path + ".tmp", out_path,
                                     show_progress);
}

}  // namespace kvmcdp
