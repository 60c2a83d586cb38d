// Snapshot delete and merge, by the patent's rules (man/kvmcdp-tree.5): a
// node with no child is removed; one with a single child is merged into
// it (block-stream when the child is in the running VM's chain, else a
// safe-mode qemu-img rebase) and removed; one with several children is
// marked deleted and removed later, once down to one child.
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include <fmt/format.h>

#include "qemu/image_lock.h"
#include "tree/snapshot_ops.h"
#include "qemu/snapshot_qemu.h"
#include "tree/snapshot_steps.h"
#include "base/crash_point.h"

namespace kvmcdp {

using json = nlohmann::json;
using namespace snapshot_steps;

namespace {

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
  t.intent = TreeIntent{IntentOp::kMerge, {{"node", name}, {"child", child_name},
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

}  // namespace

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

namespace snapshot_steps {

// Finished if the child's header backs onto the parent, else rolled back.
Status repair_merge(Tree& t, const json& a, QmpClient* qmp, OpLog* log) {
  std::string node = a.value("node", ""), child = a.value("child", "");
  std::string parent = a.value("parent", "");
  std::string job = a.value("job", "");
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
                        node, child, job, c->file)};
  Status job_end = Status::ok();
  if (qmp && a.value("online", false)) {
    QmpReply jobs = qmp->execute("query-block-jobs");
    bool running = false;
    if (jobs.ok())
      for (const auto& j : jobs.value) running |= j.value("device", "") == job;
    if (running) {
      log->push_back("repair: waiting for block job " + job);
      auto end = wait_block_job(*qmp, job, "block-stream", std::chrono::minutes(60));
      if (!end)
        return {ErrorKind::kQemu,
                fmt::format("repair: block job {} did not end within an hour; run kvmcdp "
                            "snapshot repair again once it has",
                            job)};
      job_end = *end;
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
  if (auto st = save_tree(t); !st) return st;
  if (!job_end)
    return {job_end.kind(), fmt::format("repair: {}; rolled back the merge of {} into {}",
                                        job_end.message(), node, child)};
  log->push_back(fmt::format("repair: rolled back the merge of {} into {}", node, child));
  return Status::ok();
}

}  // namespace snapshot_steps
}  // namespace kvmcdp
