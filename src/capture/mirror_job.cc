#include "capture/mirror_job.h"

#include <unistd.h>

#include <chrono>

#include <fmt/format.h>

namespace kvmcdp {

MirrorNames mirror_names(uint64_t stream_id) {
  // QEMU takes node names of at most 31 characters.
  return MirrorNames{stream_id,
                     fmt::format("kvmcdp-{:016x}", stream_id),
                     fmt::format("kvmcdp-t-{:016x}", stream_id),
                     fmt::format("kvmcdp-f-{:016x}", stream_id),
                     fmt::format("cdp-{:016x}", stream_id),
                     fmt::format("kvmcdp-r-{:016x}", stream_id),
                     fmt::format("kvmcdp-e-{:016x}", stream_id),
                     fmt::format("kvmcdp-b-{:016x}", stream_id)};
}

namespace {

Status qemu_error(const char* what, const QmpReply& r) {
  return Status(ErrorKind::kQemu, fmt::format("{}: {}", what, r.message));
}

// Our job's end, ignoring every other event.
bool wait_job_end(QmpClient& qmp, const std::string& job, Millis timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto ev = qmp.next_event(Millis(500));
    if (!ev) {
      auto there = job_exists(qmp, job);
      if (there && !*there) return true;
      continue;
    }
    std::string name = ev->value("event", "");
    if ((name == "BLOCK_JOB_COMPLETED" || name == "BLOCK_JOB_CANCELLED") &&
        (*ev)["data"].value("device", "") == job)
      return true;
  }
  return false;
}

bool node_exists(QmpClient& qmp, const std::string& node) {
  QmpReply r = qmp.execute("query-named-block-nodes", {{"flat", true}});
  if (!r.ok() || !r.value.is_array()) return false;
  for (const auto& n : r.value)
    if (n.is_object() && n.value("node-name", "") == node) return true;
  return false;
}

std::string node_driver(QmpClient& qmp, const std::string& node) {
  QmpReply r = qmp.execute("query-named-block-nodes", {{"flat", true}});
  if (!r.ok() || !r.value.is_array()) return "";
  for (const auto& n : r.value)
    if (n.is_object() && n.value("node-name", "") == node) return n.value("drv", "");
  return "";
}

}  // namespace

Result<bool> qemu_has_cdp_filter(QmpClient& qmp) {
  QmpReply r = qmp.execute("query-qmp-schema", nullptr, Millis(30000));
  if (!r.ok()) return r.status();
  if (!r.value.is_array()) return Status(ErrorKind::kQemu, "query-qmp-schema: not a list");
  for (const auto& e : r.value)
    if (e.is_object() && e.value("meta-type", "") == "command" &&
        e.value("name", "") == "cdp-attach")
      return true;
  return false;
}

Result<bool> job_exists(QmpClient& qmp, const std::string& job) {
  QmpReply r = qmp.execute("query-block-jobs");
  if (!r.ok()) return r.status();
  for (const auto& j : r.value)
    if (j.is_object() && j.value("device", "") == job) return true;
  return false;
}

Result<bool> bitmap_exists(QmpClient& qmp, const std::string& node, const std::string& bitmap) {
  QmpReply r = qmp.execute("query-named-block-nodes", {{"flat", true}});
  if (!r.ok()) return r.status();
  if (!r.value.is_array()) return false;
  for (const auto& n : r.value) {
    if (!n.is_object() || n.value("node-name", "") != node) continue;
    for (const auto& b : n.value("dirty-bitmaps", json::array()))
      if (b.is_object() && b.value("name", "") == bitmap)
        return !b.value("inconsistent", false);
  }
  return false;
}

Status remove_mirror_leftovers(QmpClient& qmp, const MirrorNames& n) {
  auto job = job_exists(qmp, n.job);
  if (!job) return job.status();
  if (*job) {
    QmpReply c = qmp.execute("block-job-cancel", {{"device", n.job}, {"force", true}});
    if (!c.ok()) return qemu_error("block-job-cancel of the last protect's mirror job", c);
    if (!wait_job_end(qmp, n.job, Millis(60000)))
      return Status(ErrorKind::kQemu, fmt::format("the mirror job {} did not end", n.job));
  }
  if (node_exists(qmp, n.target)) {
    QmpReply d = qmp.execute("blockdev-del", {{"node-name", n.target}});
    if (!d.ok()) return qemu_error("blockdev-del of the last protect's NBD node", d);
  }
  // Its NBD server, known by its exports (QEMU does not say where a server
  // listens, so a server without them is somebody else's).
  QmpReply e = qmp.execute("query-block-exports");
  bool ours = false;
  if (e.ok() && e.value.is_array())
    for (const auto& x : e.value) {
      std::string id = x.is_object() ? x.value("id", "") : "";
      if (id != n.export_ && id != n.bitmap_export) continue;
      qmp.execute("block-export-del", {{"id", id}, {"mode", "hard"}});
      ours = true;
    }
  if (ours) qmp.execute("nbd-server-stop");
  return Status::ok();
}

Status add_bitmap(QmpClient& qmp, const std::string& node, const std::string& bitmap) {
  json args = {{"node", node}, {"name", bitmap}};
  // Stored in the image at QEMU's exit, so a restarted VM still knows what
  // changed; only qcow2 images can hold it.
  if (node_driver(qmp, node) == "qcow2") args["persistent"] = true;
  QmpReply r = qmp.execute("block-dirty-bitmap-add", args);
  if (!r.ok()) return qemu_error("block-dirty-bitmap-add", r);
  return Status::ok();
}

Status start_mirror(QmpClient& qmp, const std::string& node, const MirrorNames& n,
                    const json& addr) {
  QmpReply t = qmp.execute("blockdev-add", {{"driver", "nbd"},
                                            {"node-name", n.target},
                                            {"server", addr},
                                            {"export", ""}},
                           Millis(30000));
  if (!t.ok()) return qemu_error("blockdev-add of kvmcdp's NBD target", t);
  QmpReply m = qmp.execute("blockdev-mirror", {{"job-id", n.job},
                                               {"device", node},
                                               {"target", n.target},
                                               {"filter-node-name", n.filter},
                                               {"sync", "none"},
                                               {"copy-mode", "write-blocking"},
                                               {"on-target-error", "report"},
                                               {"on-source-error", "report"},
                                               {"auto-finalize", true},
                                               {"auto-dismiss", true}});
  if (!m.ok()) {
    qmp.execute("blockdev-del", {{"node-name", n.target}});
    return qemu_error("blockdev-mirror", m);
  }
  return Status::ok();
}

Status stop_mirror(QmpClient& qmp, const MirrorNames& n) {
  auto job = job_exists(qmp, n.job);
  if (!job) return job.status();
  Status result = Status::ok();
  if (*job) {
    // A READY mirror ends with a soft cancel, leaving the guest on its disk.
    QmpReply c = qmp.execute("block-job-cancel", {{"device", n.job}});
    if (!c.ok()) result = qemu_error("block-job-cancel", c);
    else if (!wait_job_end(qmp, n.job, Millis(60000)))
      result = Status(ErrorKind::kQemu, fmt::format("the mirror job {} did not end", n.job));
  }
  if (node_exists(qmp, n.target)) {
    QmpReply d = qmp.execute("blockdev-del", {{"node-name", n.target}});
    if (!d.ok() && result) result = qemu_error("blockdev-del of kvmcdp's NBD target", d);
  }
  return result;
}

Status drain_all(QmpClient& qmp) {
  QmpReply r = qmp.execute("transaction", {{"actions", json::array()}}, Millis(60000));
  if (!r.ok()) return qemu_error("transaction (drain)", r);
  return Status::ok();
}

Status checkpoint_bitmap(QmpClient& qmp, const std::string& node, const std::string& bitmap) {
  json clear = {{"type", "block-dirty-bitmap-clear"},
                {"data", {{"node", node}, {"name", bitmap}}}};
  QmpReply r = qmp.execute("transaction", {{"actions", json::array({clear})}}, Millis(60000));
  if (!r.ok()) return qemu_error("transaction (bitmap checkpoint)", r);
  return Status::ok();
}

Status freeze_bitmap(QmpClient& qmp, const std::string& node, const MirrorNames& n) {
  json add = {{"type", "block-dirty-bitmap-add"},
              {"data", {{"node", node}, {"name", n.frozen}, {"disabled", true}}}};
  json merge = {{"type", "block-dirty-bitmap-merge"},
                {"data", {{"node", node}, {"target", n.frozen}, {"bitmaps", {n.bitmap}}}}};
  QmpReply r = qmp.execute("transaction", {{"actions", json::array({add, merge})}}, Millis(60000));
  if (!r.ok()) return qemu_error("copying the dirty bitmap", r);
  return Status::ok();
}

Status drop_frozen_bitmap(QmpClient& qmp, const std::string& node, const MirrorNames& n) {
  QmpReply r = qmp.execute("block-dirty-bitmap-remove", {{"node", node}, {"name", n.frozen}});
  if (!r.ok()) return qemu_error("block-dirty-bitmap-remove", r);
  return Status::ok();
}

Result<QemuNbdServer> QemuNbdServer::start(QmpClient& qmp, const std::string& socket) {
  unlink(socket.c_str());
  QmpReply r = qmp.execute("nbd-server-start",
                           {{"addr", {{"type", "unix"}, {"data", {{"path", socket}}}}}});
  if (!r.ok())
    return Status(ErrorKind::kQemu,
                  fmt::format("mirror capture reads the disk through QEMU's NBD server, which "
                              "QEMU refused to start ({}): another tool uses it",
                              r.message));
  QemuNbdServer s;
  s.socket_ = socket;
  return s;
}

Status QemuNbdServer::add_export(QmpClient& qmp, const std::string& name, const std::string& node,
                                 const std::string& bitmap) {
  json args = {{"type", "nbd"}, {"id", name}, {"name", name}, {"node-name", node},
               {"writable", false}};
  if (!bitmap.empty()) args["bitmaps"] = json::array({bitmap});
  QmpReply r = qmp.execute("block-export-add", args);
  if (!r.ok()) return qemu_error("block-export-add", r);
  return Status::ok();
}

void QemuNbdServer::del_export(QmpClient& qmp, const std::string& name) {
  qmp.execute("block-export-del", {{"id", name}, {"mode", "hard"}});
}

void QemuNbdServer::stop(QmpClient& qmp) {
  qmp.execute("nbd-server-stop");
  unlink(socket_.c_str());
}

}  // namespace kvmcdp
