// Snapshot create and revert: both end in a new overlay that becomes the
// node the VM writes into (see snapshot_ops.cc for the intent protocol).
// Create pre-creates the overlay with qemu-img outside the pause, then, with
// the VM running, switches the disk to it with blockdev-snapshot inside a
// QMP transaction, which drains the disk's I/O for just the graph change.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

#include <fmt/format.h>

#include "qemu/qemu_drive.h"
#include "tree/snapshot_ops.h"
#include "qemu/snapshot_qemu.h"
#include "tree/snapshot_steps.h"
#include "base/crash_point.h"

namespace kvmcdp {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace snapshot_steps;

namespace {

// A new overlay belongs to whoever owns the image under it, with its
// mode: the QEMU that opens it may run as another user (libvirt runs it
// as libvirt-qemu, a session daemon as its user) and must write it.
void inherit_owner(const std::string& path, const std::string& from) {
  struct stat st;
  if (::stat(from.c_str(), &st) != 0) return;
  if (::chown(path.c_str(), st.st_uid, st.st_gid) != 0) return;  // not root: ours is right
  ::chmod(path.c_str(), st.st_mode & 0777);
}

Result<Tree> init_tree(const std::string& dir, const CreateRequest& req) {
  Tree t;
  t.dir = dir;
  TreeNode root;
  root.name = "@base";
  root.created = now_seconds();
  if (req.qmp) {
    auto nodes = qemu_format_nodes(*req.qmp);
    if (!nodes) return nodes.status();
    auto top = find_node_by_name(*nodes, req.drive);
    if (!top) return Status(ErrorKind::kNotFound, "the VM has no block node " + req.drive);
    if (top->filename.empty() || top->filename[0] != '/')
      return Status(ErrorKind::kUsage,
                    fmt::format("node {} has file '{}'; kvmcdp needs QEMU to open the image "
                                "by an absolute path",
                                req.drive, top->filename));
    root.file = top->filename;
    root.format = top->driver;
    t.active_qemu_node = req.drive;
  } else {
    if (req.base.empty())
      return Status(ErrorKind::kUsage,
                    fmt::format("no snapshot tree in {} yet: give --qmp and --drive of the "
                                "running VM, or --base IMAGE",
                                dir));
    auto info = image_info(req.base);
    if (!info) return info.status();
    root.file = fs::absolute(req.base).lexically_normal().string();
    root.format = info->format;
  }
  // An image inside the tree dir is the tree's own and stored relative.
  std::string rel = fs::path(root.file).lexically_relative(fs::absolute(dir).lexically_normal());
  if (!rel.empty() && rel.find("..") != 0) root.file = rel;
  t.nodes.push_back(root);
  t.active = root.name;
  return t;
}

}  // namespace

// protect --capture mirror puts its job's filter node (kvmcdp-f-STREAM)
// on top of the drive, and QEMU does not switch the source of a running
// mirror job to an overlay: say so before anything is written.
static Status refuse_mirror_capture(QmpClient& qmp, const std::string& drive) {
  auto top = resolve_drive(qmp, drive);
  if (!top) return top.status();
  QmpReply nodes = qmp.execute("query-named-block-nodes", {{"flat", true}});
  if (!nodes.ok()) return nodes.status();
  for (const auto& n : nodes.value)
    if (n.value("node-name", "") == *top && n.value("drv", "") == "mirror_top" &&
        top->rfind("kvmcdp-f-", 0) == 0)
      return Status(ErrorKind::kBusy,
                    fmt::format("the disk is captured by kvmcdp protect in mirror mode (node {}), "
                                "and QEMU does not snapshot the source of a mirror job: stop "
                                "protect, create the snapshot, start protect again (it resends "
                                "what changed meanwhile)",
                                *top));
  return Status::ok();
}

Result<CreateReport> snapshot_create(const std::string& dir, const CreateRequest& request,
                                     OpLog* log) {
  if (auto st = validate_snapshot_name(request.name); !st) return st;
  // --drive names the disk as protect's does: a drive id, a device id or a
  // node name; the tree keeps the image's node name.
  CreateRequest req = request;
  if (req.qmp && !req.drive.empty()) {
    if (auto st = refuse_mirror_capture(*req.qmp, req.drive); !st) return st;
    auto node = resolve_image_node(*req.qmp, req.drive);
    if (!node) return node.status();
    req.drive = *node;
  }
  auto loaded = load_tree(dir);
  if (!loaded && loaded.status().kind() != ErrorKind::kNotFound) return loaded.status();
  Tree t = loaded ? std::move(*loaded) : Tree{};
  if (!loaded) {
    auto made = init_tree(dir, req);
    if (!made) return made.status();
    t = std::move(*made);
    log->push_back(fmt::format("new snapshot tree in {}, root {}", dir, t.nodes[0].file));
  } else if (!req.base.empty()) {
    return Status(ErrorKind::kUsage, "--base is only for the first snapshot of a tree");
  }
  if (t.find(req.name)) return Status(ErrorKind::kUsage, "a node named " + req.name + " exists");
  TreeNode* old = t.find(t.active);
  std::string old_path = t.path_of(*old);

  // Where the running disk is, and its size (the overlay's).
  uint64_t size = 0;
  std::string top_node;
  if (req.qmp) {
    top_node = req.drive.empty() ? t.active_qemu_node : req.drive;
    if (top_node.empty())
      return Status(ErrorKind::kUsage, "--drive is needed (the disk's drive id, device id or node name)");
    auto nodes = qemu_format_nodes(*req.qmp);
    if (!nodes) return nodes.status();
    auto top = find_node_by_name(*nodes, top_node);
    if (!top) return Status(ErrorKind::kNotFound, "the VM has no block node " + top_node);
    if (!same_file(top->filename, old_path))
      return Status(ErrorKind::kFailure,
                    fmt::format("node {} is {}, but the tree's current disk is {}", top_node,
                                top->filename, old_path));
    size = top->virtual_size;
  } else {
    if (image_in_use(old_path))
      return Status(ErrorKind::kBusy,
                    fmt::format("{} is open in a running QEMU; give --qmp and --drive", old_path));
    auto info = image_info(old_path);
    if (!info) return info.status();
    size = info->virtual_size;
  }

  std::string file = t.take_file_name();
  std::string qnode = overlay_qemu_node_name(file);
  std::string path = dir + "/" + file;
  std::string old_name = old->name;

  // The intent, before the first step.
  t.intent = TreeIntent{IntentOp::kCreate, {{"name", req.name}, {"old", old_name}, {"file", file},
                                   {"qemu_node", req.qmp ? qnode : ""}}};
  if (auto st = save_tree(t); !st) return st;
  crash_point("create", 1);

  // Step 2 of the patent (prepare the file) before step 1 (pause), so that
  // the pause covers only the switch.
  if (auto st = create_overlay(path, relative_backing(path, old_path), old->format, size,
                               kSnapshotOverlay);
      !st)
    return st;
  inherit_owner(path, old_path);
  crash_point("create", 2);

  CreateReport report;
  report.active_file = path;
  if (req.qmp) {
    // Opened like the disk's own file (cache.direct, cache.no-flush): with
    // QEMU's default (the page cache) under a cache=none disk, the guest's
    // writes pile up as dirty pages that the next snapshot's flush writes
    // back inside the pause (13 ms median of 50 under fio, against 4 ms).
    auto cache = file_cache_options(*req.qmp, top_node);
    if (!cache) return cache.status();
    json file = {{"driver", "file"}, {"filename", path}};
    if (!cache->empty()) file["cache"] = *cache;
    QmpReply add = req.qmp->execute(
        "blockdev-add", {{"driver", "qcow2"}, {"node-name", qnode}, {"file", file},
                         {"backing", nullptr}});
    if (!add.ok()) return Status(ErrorKind::kQemu, "blockdev-add: " + add.message);
    // Steps 1, 3, 4: the transaction drains the disk, switches it to the
    // overlay and lets I/O go on.
    auto t0 = std::chrono::steady_clock::now();
    QmpReply sw = req.qmp->execute(
        "transaction",
        {{"actions", json::array({{{"type", "blockdev-snapshot"},
                                    {"data", {{"node", top_node}, {"overlay", qnode}}}}})}});
    report.pause_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!sw.ok()) {
      req.qmp->execute("blockdev-del", {{"node-name", qnode}});
      unlink(path.c_str());
      return Status(ErrorKind::kQemu, "blockdev-snapshot: " + sw.message);
    }
  }
  crash_point("create", 3);

  // The old top is the snapshot now; the overlay is the active disk.
  old->name = req.name;
  old->created = now_seconds();
  add_active_overlay(t, file, req.name, req.qmp ? qnode : "");
  t.intent.reset();
  if (auto st = save_tree(t); !st) return st;
  log->push_back(fmt::format("created snapshot {}; the disk now writes into {}", req.name, file));
  return report;
}

Status snapshot_revert(Tree& t, const std::string& name, OpLog* log) {
  const TreeNode* target = t.find(name);
  if (!target) return {ErrorKind::kNotFound, "no snapshot named " + name};
  if (target->state == NodeState::kDeleted)
    return {ErrorKind::kUsage, name + " is logically deleted"};
  if (name == t.active) return {ErrorKind::kUsage, name + " is already the current disk"};
  const TreeNode* active = t.find(t.active);
  if (image_in_use(t.path_of(*active)))
    return {ErrorKind::kBusy, fmt::format("{} is open in a running QEMU; stop the VM first",
                                          t.path_of(*active))};
  std::string tpath = t.path_of(*target);
  auto info = image_info(tpath);
  if (!info) return info.status();
  std::string format = target->format;
  std::string file = t.take_file_name();
  std::string path = t.dir + "/" + file;
  t.intent = TreeIntent{IntentOp::kRevert, {{"file", file}}};
  if (auto st = save_tree(t); !st) return st;
  crash_point("revert", 1);
  if (auto st = create_overlay(path, relative_backing(path, tpath), format, info->virtual_size,
                               kSnapshotOverlay);
      !st)
    return st;
  inherit_owner(path, tpath);
  crash_point("revert", 2);
  std::string old_active = t.active;
  add_active_overlay(t, file, name, "");
  t.intent.reset();
  if (auto st = save_tree(t); !st) return st;
  log->push_back(fmt::format("reverted to {}: start the VM on {} (the old disk {} stays in the tree)",
                             name, path, old_active));
  return Status::ok();
}

namespace snapshot_steps {

// Forward if the overlay exists on the old node and, when the VM can be
// asked, the VM writes into it; otherwise the overlay goes.
Status repair_create(Tree& t, const json& a, QmpClient* qmp, OpLog* log) {
  std::string file = a.value("file", ""), name = a.value("name", ""), old = a.value("old", "");
  std::string qnode = a.value("qemu_node", "");
  std::string path = t.dir + "/" + file;
  TreeNode* o = t.find(old);
  if (!o)
    return {ErrorKind::kDamaged, "repair: the create intent names a node that does not exist"};
  bool forward = false;
  auto info = image_info(path);
  bool valid = info && same_file(info->full_backing, t.path_of(*o));
  if (valid && !qnode.empty() && qmp) {
    // Did the running disk switch?  Only then is the overlay in use.
    auto nodes = qemu_format_nodes(*qmp);
    forward = nodes && find_node_by_name(*nodes, qnode) && image_in_use(path);
    if (!forward && nodes && find_node_by_name(*nodes, qnode))
      qmp->execute("blockdev-del", {{"node-name", qnode}});
  } else if (valid) {
    // Without the VM to ask: keeping the overlay never loses data (it
    // reads through to the old disk); dropping it could.
    forward = true;
  }
  if (forward) {
    o->name = name;
    add_active_overlay(t, file, name, qnode);
    t.intent.reset();
    log->push_back(fmt::format("repair: finished creating snapshot {}", name));
    return save_tree(t);
  }
  if (image_in_use(path))
    return {ErrorKind::kDamaged,
            fmt::format("repair: {} is in use by a running QEMU but the VM cannot be asked; "
                        "run kvmcdp snapshot repair --qmp SOCKET",
                        path)};
  if (auto st = unlink_owned(t, file); !st) return st;
  t.intent.reset();
  log->push_back(fmt::format("repair: rolled back creating snapshot {}", name));
  return save_tree(t);
}

// A revert is only recorded once its overlay is the active node, so an
// interrupted one leaves at most the overlay behind.
Status repair_revert(Tree& t, const json& a, OpLog* log) {
  std::string file = a.value("file", "");
  if (auto st = unlink_owned(t, file); !st) return st;
  t.intent.reset();
  log->push_back("repair: rolled back a revert");
  return save_tree(t);
}

}  // namespace snapshot_steps
}  // namespace kvmcdp
