// The snapshot tree's operations, step by step as in the patent
// (man/kvmcdp-tree.5):
//
//   create: pre-create the overlay with qemu-img (outside the pause), then
//     switch the running disk to it with blockdev-snapshot inside a QMP
//     transaction, which drains the disk's I/O for just the graph change.
//   delete: no child -> remove the file; one child -> merge into the child
//     (block-stream when the child is in the running VM's chain, else a
//     safe-mode qemu-img rebase) and remove the file; several children ->
//     mark deleted, removed later once down to one child.
//
// Every multi-step operation first writes an intent into tree.json; the
// metadata change and the next intent are written together, so that a kill
// at any step leaves a state repair_tree() can finish or roll back from the
// images' own headers.  Files are only ever unlinked after the metadata no
// longer refers to them, and a merge is only recorded once the child's
// header says it now backs onto the grandparent.
#include "tree/snapshot_ops.h"
#include "base/crash_point.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>

#include <fmt/format.h>

#include "base/fsutil.h"
#include "qemu/image_lock.h"
#include "qemu/qemu_drive.h"
#include "qemu/snapshot_qemu.h"

namespace kvmcdp {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

int64_t now_seconds() { return static_cast<int64_t>(std::time(nullptr)); }

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  return fs::weakly_canonical(a, ec) == fs::weakly_canonical(b, ec);
}

// Imported roots (absolute paths) belong to the user: never unlinked.
bool owned_by_tree(const std::string& file) { return !file.empty() && file[0] != '/'; }

Status unlink_owned(const Tree& t, const std::string& file) {
  if (!owned_by_tree(file)) return Status::ok();
  std::string path = t.dir + "/" + file;
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    return {ErrorKind::kFailure, fsutil::errno_message("unlink", path)};
  return fsutil::fsync_dir(t.dir);
}

void erase_node(Tree& t, const std::string& name) {
  std::erase_if(t.nodes, [&](const TreeNode& n) { return n.name == name; });
}

// Drops node `name`: metadata first (with the intent to unlink), then its
// file.  Kills are injected at `op`:step and `op`:step+1.
Status drop_node(Tree& t, const std::string& name, const char* op, int step) {
  std::string file = t.find(name)->file;
  erase_node(t, name);
  t.intent = TreeIntent{"remove", {{"file", file}}};
  if (auto st = save_tree(t); !st) return st;
  crash_point(op, step);
  if (auto st = unlink_owned(t, file); !st) return st;
  crash_point(op, step + 1);
  t.intent.reset();
  return save_tree(t);
}

// Step "remove" of a leaf.
Status remove_leaf(Tree& t, const std::string& name, OpLog* log) {
  std::string file = t.find(name)->file;
  if (auto st = drop_node(t, name, "remove", 1); !st) return st;
  log->push_back(owned_by_tree(file)
                     ? fmt::format("deleted {} (no child): removed {}", name, file)
                     : fmt::format("deleted {} (no child); {} is outside the tree, left in place",
                                   name, file));
  return Status::ok();
}

// The merge's last part, shared with repair: the child's header already
// backs onto the grandparent.
Status finish_merge(Tree& t, const std::string& name, const std::string& child, OpLog* log) {
  std::string parent = t.find(name)->parent;
  t.find(child)->parent = parent;
  if (auto st = drop_node(t, name, "merge", 3); !st) return st;
  log->push_back(fmt::format("merged {} into {}{}", name, child,
                             parent.empty() ? " (now the root)" : ", now a child of " + parent));
  return Status::ok();
}

bool header_backs_onto(const Tree& t, const TreeNode& c, const std::string& parent) {
  auto info = image_info(t.path_of(c));
  if (!info) return false;
  if (parent.empty()) return info->backing.empty();
  const TreeNode* p = t.find(parent);
  return p && !info->full_backing.empty() && same_file(info->full_backing, t.path_of(*p));
}

// Rule 2: merge `name` into its only child and give the child its parent.
Status merge_into_child(Tree& t, const std::string& name, QmpClient* qmp, OpLog* log) {
  const TreeNode* s = t.find(name);
  auto kids = t.children(name);
  const TreeNode* c = kids.at(0);
  const TreeNode* p = s->parent.empty() ? nullptr : t.find(s->parent);
  bool online = qmp && t.in_active_chain(c->name);
  std::string job = "kvmcdp-merge-" + std::to_string(::getpid());
  std::string child_name = c->name;
  std::string cpath = t.path_of(*c), spath = t.path_of(*s);
  std::string ppath = p ? t.path_of(*p) : "", pformat = p ? p->format : "";

  // Step 1: the intent.
  t.intent = TreeIntent{"merge", {{"node", name}, {"child", child_name},
                                  {"parent", s->parent}, {"online", online}, {"job", job}}};
  if (auto st = save_tree(t); !st) return st;
  crash_point("merge", 1);

  // Step 2: the data.  Online, block-stream copies into the running chain
  // and switches the backing link under a drained section; offline a
  // safe-mode rebase copies what the child would lose.
  auto t0 = std::chrono::steady_clock::now();
  if (online) {
    auto nodes = qemu_format_nodes(*qmp);
    if (!nodes) return nodes.status();
    auto cn = find_node_by_file(*nodes, cpath);
    auto sn = find_node_by_file(*nodes, spath);
    if (!cn) return {ErrorKind::kQemu, fmt::format("the VM has no block node for {}", cpath)};
    std::string base_node;
    if (p) {
      auto pn = find_node_by_file(*nodes, ppath);
      if (!pn) return {ErrorKind::kQemu, fmt::format("the VM has no block node for {}", ppath)};
      base_node = pn->node_name;
    }
    if (auto st = stream_and_wait(*qmp, job, cn->node_name, base_node,
                                  p ? relative_backing(cpath, ppath) : "");
        !st)
      return st;
    // A node added with blockdev-add stays until deleted; it is out of the
    // chain now.  Implicit nodes are already gone, so an error is fine.
    if (sn) qmp->execute("blockdev-del", {{"node-name", sn->node_name}});
  } else {
    if (auto st = rebase_safe(cpath, p ? relative_backing(cpath, ppath) : "", pformat); !st)
      return st;
  }
  crash_point("merge", 2);
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (!header_backs_onto(t, *t.find(child_name), p ? p->name : ""))
    return {ErrorKind::kDamaged,
            fmt::format("after merging, {} does not back onto {}; run kvmcdp snapshot repair",
                        cpath, p ? ppath : "nothing")};
  log->push_back(fmt::format("{} {} into {} in {:.1f} ms", online ? "streamed" : "rebased", name,
                             child_name, ms));
  // Steps 3-4: metadata, then the file.
  return finish_merge(t, name, child_name, log);
}

// Removing `name` (no child, or merging into its only child) rewrites
// the child and unlinks the node's file, unless the merge runs inside the
// VM (block-stream): refused while another process has either file open,
// before anything changes.  A running VM holds its whole chain, so without
// --qmp that is the message; other holders (an export, a VM on a restore
// overlay) must stop first.
Status refuse_in_use(const Tree& t, const std::string& name, QmpClient* qmp) {
  const TreeNode* s = t.find(name);
  auto kids = t.children(name);
  if (kids.size() > 1) return Status::ok();  // only marked deleted
  const TreeNode* c = kids.empty() ? nullptr : kids[0];
  if (c && qmp && t.in_active_chain(c->name)) return Status::ok();
  for (const TreeNode* n : {c, s}) {
    if (!n) continue;
    std::string path = t.path_of(*n);
    auto holder = image_holder(path);
    if (!holder) continue;
    if (!qmp && t.in_active_chain(n->name))
      return {ErrorKind::kBusy, fmt::format("the VM uses this chain ({} is held by {}): pass "
                                            "--qmp SOCK", path, *holder)};
    return {ErrorKind::kBusy,
            fmt::format("{} is in use (held by {}); stop what uses it first", path, *holder)};
  }
  return Status::ok();
}

// Removes logically deleted nodes that are down to one child or none; one
// whose files are in use waits for a later delete.
Status collapse_deferred(Tree& t, QmpClient* qmp, OpLog* log) {
  std::vector<std::string> waiting;
  for (bool again = true; again;) {
    again = false;
    for (const auto& n : t.nodes) {
      if (n.state != NodeState::kDeleted) continue;
      size_t kids = t.children(n.name).size();
      if (kids > 1 || std::find(waiting.begin(), waiting.end(), n.name) != waiting.end()) continue;
      std::string name = n.name;
      if (auto busy = refuse_in_use(t, name, qmp); !busy) {
        log->push_back(fmt::format("{} stays logically deleted for now: {}", name,
                                   busy.message()));
        waiting.push_back(name);
        continue;
      }
      log->push_back(fmt::format("{} was logically deleted and has {} child{} now", name, kids,
                                 kids == 1 ? "" : "ren"));
      Status st = kids == 0 ? remove_leaf(t, name, log) : merge_into_child(t, name, qmp, log);
      if (!st) return st;
      again = true;
      break;
    }
  }
  return Status::ok();
}

Status refuse_active(const Tree& t, const std::string& name) {
  if (name == t.active)
    return {ErrorKind::kFailure,
            fmt::format("{} is the disk the VM writes into; it cannot be deleted or merged "
                        "(create a snapshot or revert first)",
                        name)};
  return Status::ok();
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

Result<CreateReport> snapshot_create(const std::string& dir, const CreateRequest& request,
                                     OpLog* log) {
  if (auto st = validate_snapshot_name(request.name); !st) return st;
  // --drive names the disk as protect's does: a drive id, a device id or a
  // node name; the tree keeps the image's node name.
  CreateRequest req = request;
  if (req.qmp && !req.drive.empty()) {
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
  std::string new_name = "@" + fs::path(file).stem().string();
  std::string qnode = "kvmcdp-" + fs::path(file).stem().string();
  std::string path = dir + "/" + file;
  std::string old_name = old->name;

  // The intent, before the first step.
  t.intent = TreeIntent{"create", {{"name", req.name}, {"old", old_name}, {"file", file},
                                   {"qemu_node", req.qmp ? qnode : ""}}};
  if (auto st = save_tree(t); !st) return st;
  crash_point("create", 1);

  // Step 2 of the patent (prepare the file) before step 1 (pause), so that
  // the pause covers only the switch.
  if (auto st = create_overlay(path, relative_backing(path, old_path), old->format, size); !st)
    return st;
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
      return Status(ErrorKind::kQemu, "blockdev-snapshot: " + sw.message);
    }
  }
  crash_point("create", 3);

  // The old top is the snapshot now; the overlay is the active disk.
  old->name = req.name;
  old->created = now_seconds();
  TreeNode n;
  n.name = new_name;
  n.file = file;
  n.format = "qcow2";
  n.parent = req.name;
  n.created = now_seconds();
  t.nodes.push_back(n);
  t.active = new_name;
  t.active_qemu_node = req.qmp ? qnode : "";
  t.intent.reset();
  if (auto st = save_tree(t); !st) return st;
  log->push_back(fmt::format("created snapshot {}; the disk now writes into {}", req.name, file));
  return report;
}

Status snapshot_delete(Tree& t, const std::string& name, QmpClient* qmp, OpLog* log) {
  const TreeNode* s = t.find(name);
  if (!s) return {ErrorKind::kNotFound, "no snapshot named " + name};
  if (auto st = refuse_active(t, name); !st) return st;
  if (s->state != NodeState::kDeleted)
    if (auto st = refuse_in_use(t, name, qmp); !st) return st;
  if (s->state == NodeState::kDeleted) {
    log->push_back(name + " is already logically deleted");
    return collapse_deferred(t, qmp, log);
  }
  size_t kids = t.children(name).size();
  Status st;
  if (kids == 0) {
    st = remove_leaf(t, name, log);
  } else if (kids == 1) {
    st = merge_into_child(t, name, qmp, log);
  } else {
    t.find(name)->state = NodeState::kDeleted;
    st = save_tree(t);
    if (st)
      log->push_back(fmt::format("{} has {} children: logically deleted; it is removed once "
                                 "down to one child",
                                 name, kids));
  }
  if (!st) return st;
  return collapse_deferred(t, qmp, log);
}

Status snapshot_merge(Tree& t, const std::string& name, QmpClient* qmp, OpLog* log) {
  const TreeNode* s = t.find(name);
  if (!s) return {ErrorKind::kNotFound, "no snapshot named " + name};
  if (auto st = refuse_active(t, name); !st) return st;
  size_t kids = t.children(name).size();
  if (kids != 1)
    return {ErrorKind::kUsage,
            fmt::format("{} has {} children; merge needs exactly one", name, kids)};
  if (auto st = refuse_in_use(t, name, qmp); !st) return st;
  if (auto st = merge_into_child(t, name, qmp, log); !st) return st;
  return collapse_deferred(t, qmp, log);
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
  std::string new_name = "@" + fs::path(file).stem().string();
  std::string path = t.dir + "/" + file;
  t.intent = TreeIntent{"revert", {{"file", file}}};
  if (auto st = save_tree(t); !st) return st;
  crash_point("revert", 1);
  if (auto st = create_overlay(path, relative_backing(path, tpath), format, info->virtual_size); !st)
    return st;
  crash_point("revert", 2);
  std::string old_active = t.active;
  TreeNode n;
  n.name = new_name;
  n.file = file;
  n.format = "qcow2";
  n.parent = name;
  n.created = now_seconds();
  t.nodes.push_back(n);
  t.active = new_name;
  t.active_qemu_node.clear();
  t.intent.reset();
  if (auto st = save_tree(t); !st) return st;
  log->push_back(fmt::format("reverted to {}: start the VM on {} (the old disk {} stays in the tree)",
                             name, path, old_active));
  return Status::ok();
}

Status repair_tree(Tree& t, QmpClient* qmp, OpLog* log) {
  if (!t.intent) return Status::ok();
  TreeIntent in = *t.intent;
  const json& a = in.args;
  if (in.op == "remove") {
    std::string file = a.value("file", "");
    if (auto st = unlink_owned(t, file); !st) return st;
    t.intent.reset();
    log->push_back("repair: finished removing " + file);
    return save_tree(t);
  }
  if (in.op == "merge") {
    std::string node = a.value("node", ""), child = a.value("child", ""), parent = a.value("parent", "");
    const TreeNode* c = t.find(child);
    if (!t.find(node) || !c || (!parent.empty() && !t.find(parent)))
      return {ErrorKind::kDamaged, "repair: the merge intent names nodes that do not exist"};
    // An online stream outlives a killed kvmcdp: let it end first.  Without
    // the VM to ask, the job may still be about to switch the child's
    // backing file, so deciding now could contradict it: refuse while a
    // QEMU holds the child open (once QEMU is gone, so is its job).
    if (!qmp && a.value("online", false) && image_in_use(t.path_of(*c)))
      return {ErrorKind::kUsage,
              fmt::format("repair: the interrupted merge of {} into {} ran as block job {} in a "
                          "QEMU that still has {} open; run kvmcdp snapshot repair --qmp SOCKET "
                          "so that repair can wait for the job",
                          node, child, a.value("job", ""), c->file)};
    if (qmp && a.value("online", false)) {
      QmpReply jobs = qmp->execute("query-block-jobs");
      bool running = false;
      if (jobs.ok())
        for (const auto& j : jobs.value) running |= j.value("device", "") == a.value("job", "");
      if (running) {
        log->push_back("repair: waiting for block job " + a.value("job", ""));
        qmp->wait_event("BLOCK_JOB_COMPLETED", std::chrono::minutes(60));
      }
    }
    if (header_backs_onto(t, *c, parent)) {
      log->push_back(fmt::format("repair: {} already backs onto {}; finishing the merge", child,
                                 parent.empty() ? "nothing" : parent));
      return finish_merge(t, node, child, log);
    }
    // The header still names the node: nothing was switched.  Whatever a
    // safe rebase copied equals what the child read through the node.
    t.intent.reset();
    log->push_back(fmt::format("repair: rolled back the merge of {} into {}", node, child));
    return save_tree(t);
  }
  if (in.op == "create") {
    std::string file = a.value("file", ""), name = a.value("name", ""), old = a.value("old", "");
    std::string qnode = a.value("qemu_node", "");
    std::string path = t.dir + "/" + file;
    TreeNode* o = t.find(old);
    if (!o) return {ErrorKind::kDamaged, "repair: the create intent names a node that does not exist"};
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
      std::string new_name = "@" + fs::path(file).stem().string();
      o->name = name;
      TreeNode n;
      n.name = new_name;
      n.file = file;
      n.format = "qcow2";
      n.parent = name;
      n.created = now_seconds();
      t.nodes.push_back(n);
      t.active = new_name;
      t.active_qemu_node = qnode;
      t.intent.reset();
      log->push_back(fmt::format("repair: finished creating snapshot {}", name));
      return save_tree(t);
    }
    if (image_in_use(path))
      return {ErrorKind::kDamaged,
              fmt::format("repair: {} is in use by a running QEMU but the VM cannot be asked; "
                          "run kvmcdp snapshot repair --qmp SOCKET",
                          path)};
    ::unlink(path.c_str());
    t.intent.reset();
    log->push_back(fmt::format("repair: rolled back creating snapshot {}", name));
    return save_tree(t);
  }
  if (in.op == "revert") {
    std::string file = a.value("file", "");
    ::unlink((t.dir + "/" + file).c_str());
    t.intent.reset();
    log->push_back("repair: rolled back a revert");
    return save_tree(t);
  }
  return {ErrorKind::kDamaged, "repair: unknown intent '" + in.op + "'"};
}

std::vector<std::string> check_tree(const Tree& t) {
  std::vector<std::string> out;
  if (t.intent) out.push_back("an operation (" + t.intent->op + ") was interrupted; run kvmcdp snapshot repair");
  for (const auto& n : t.nodes) {
    std::string path = t.path_of(n);
    auto info = image_info(path);
    if (!info) {
      out.push_back(fmt::format("{}: {}", n.name, info.status().message()));
      continue;
    }
    if (info->format != n.format)
      out.push_back(fmt::format("{}: {} is {}, metadata says {}", n.name, n.file, info->format, n.format));
    const TreeNode* p = n.parent.empty() ? nullptr : t.find(n.parent);
    if (!p) {
      if (!info->backing.empty())
        out.push_back(fmt::format("{}: the root has backing file {}", n.name, info->backing));
      continue;
    }
    std::string ppath = t.path_of(*p);
    if (info->full_backing.empty() || !same_file(info->full_backing, ppath))
      out.push_back(fmt::format("{}: backs onto '{}', metadata says {} ({})", n.name,
                                info->backing, p->name, p->file));
    else if (info->backing != relative_backing(path, ppath))
      out.push_back(fmt::format("{}: backing file '{}' is not the relative '{}'", n.name,
                                info->backing, relative_backing(path, ppath)));
    if (info->backing_format != p->format)
      out.push_back(fmt::format("{}: backing format '{}', metadata says {}", n.name,
                                info->backing_format.empty() ? "(none)" : info->backing_format,
                                p->format));
  }
  // Files of ours that the metadata does not know.
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(t.dir, ec)) {
    std::string f = e.path().filename().string();
    if (f.size() != 11 || f[0] != 'n' || e.path().extension() != ".qcow2") continue;
    bool known = false;
    for (const auto& n : t.nodes) known |= n.file == f;
    if (!known) out.push_back(fmt::format("{}: file not in the tree", f));
  }
  return out;
}

}  // namespace kvmcdp
