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
//
// This file holds the steps the operations share, the repair that
// dispatches on the intent, and check; create and revert are in
// snapshot_create.cc, delete and merge in snapshot_merge.cc, each
// operation's repair beside it.
#include "tree/snapshot_ops.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <filesystem>

#include <fmt/format.h>

#include "base/fsutil.h"
#include "qemu/snapshot_qemu.h"
#include "tree/snapshot_steps.h"
#include "base/crash_point.h"

namespace kvmcdp {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace snapshot_steps {

int64_t now_seconds() { return static_cast<int64_t>(std::time(nullptr)); }

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  return fs::weakly_canonical(a, ec) == fs::weakly_canonical(b, ec);
}

bool owned_by_tree(const std::string& file) { return !file.empty() && file[0] != '/'; }

Status unlink_owned(const Tree& t, const std::string& file) {
  if (!owned_by_tree(file)) return Status::ok();
  std::string path = t.dir + "/" + file;
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    return {ErrorKind::kFailure, fsutil::errno_message("unlink", path)};
  return fsutil::fsync_dir(t.dir);
}

Status drop_node(Tree& t, const std::string& name, const char* op, int step) {
  std::string file = t.find(name)->file;
  std::erase_if(t.nodes, [&](const TreeNode& n) { return n.name == name; });
  t.intent = TreeIntent{IntentOp::kRemove, {{"file", file}}};
  if (auto st = save_tree(t); !st) return st;
  crash_point(op, step);
  if (auto st = unlink_owned(t, file); !st) return st;
  crash_point(op, step + 1);
  t.intent.reset();
  return save_tree(t);
}

bool header_backs_onto(const Tree& t, const TreeNode& c, const std::string& parent) {
  auto info = image_info(t.path_of(c));
  if (!info) return false;
  if (parent.empty()) return info->backing.empty();
  const TreeNode* p = t.find(parent);
  return p && !info->full_backing.empty() && same_file(info->full_backing, t.path_of(*p));
}

void add_active_overlay(Tree& t, const std::string& file, const std::string& parent,
                        const std::string& qemu_node) {
  TreeNode n;
  n.name = active_node_name(file);
  n.file = file;
  n.format = "qcow2";
  n.parent = parent;
  n.created = now_seconds();
  t.nodes.push_back(n);
  t.active = n.name;
  t.active_qemu_node = qemu_node;
}

// A node was dropped from the metadata; its file may still be there.
Status repair_remove(Tree& t, const json& a, OpLog* log) {
  std::string file = a.value("file", "");
  if (auto st = unlink_owned(t, file); !st) return st;
  t.intent.reset();
  log->push_back("repair: finished removing " + file);
  return save_tree(t);
}

}  // namespace snapshot_steps

Status repair_tree(Tree& t, QmpClient* qmp, OpLog* log) {
  using namespace snapshot_steps;
  if (!t.intent) return Status::ok();
  TreeIntent in = *t.intent;
  switch (in.op) {
    case IntentOp::kCreate: return repair_create(t, in.args, qmp, log);
    case IntentOp::kMerge: return repair_merge(t, in.args, qmp, log);
    case IntentOp::kRemove: return repair_remove(t, in.args, log);
    case IntentOp::kRevert: return repair_revert(t, in.args, log);
  }
  return {ErrorKind::kDamaged, "repair: unknown intent"};
}

std::vector<std::string> check_tree(const Tree& t) {
  using snapshot_steps::same_file;
  std::vector<std::string> out;
  if (t.intent)
    out.push_back(fmt::format("an operation ({}) was interrupted; run kvmcdp snapshot repair",
                              intent_name(t.intent->op)));
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
    if (!is_node_file_name(f)) continue;
    bool known = false;
    for (const auto& n : t.nodes) known |= n.file == f;
    if (!known) out.push_back(fmt::format("{}: file not in the tree", f));
  }
  return out;
}

}  // namespace kvmcdp
