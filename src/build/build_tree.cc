// Building snapshot nodes from the journal.  The root goes through QEMU's
// own tools; a node is written by src/qcow2_overlay.h when every change
// since its parent is whole 4 KiB clusters, else through QEMU too:
//
//  1. The root, once: restore() of the base-complete seq to a raw temp
//     file, `qemu-img convert -O qcow2` into DIR/tree/base.qcow2.
//  2. For a point S: the parent is the live node with the largest point
//     <= S in the same recoverable range.  `qemu-img create -f qcow2 -b
//     <parent, relative> -F qcow2` makes an empty overlay (temp name).
//  3. journal_delta(parent, S] gives each changed byte's newest version.
//     Whole 4 KiB clusters: write_qcow2_overlay packs them into a new
//     qcow2 on the parent (4 KiB clusters) and step 2 is skipped.  Else
//     they are written into the overlay through qemu-nbd (QEMU's block
//     layer): data as NBD writes, zero ranges as write-zeroes (a qcow2
//     zero cluster, not a hole that would show the parent).
//  4. Rename the overlay into place, then add the node to tree.json in one
//     atomic write.  A kill before that leaves at most an orphan file,
//     which the next build of the same point overwrites.
#include "build/build_tree.h"
#include "base/crash_point.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <deque>
#include <filesystem>

#include <fmt/format.h>
#include <libnbd.h>

#include "base/fsutil.h"
#include "store/point.h"
#include "restore/node_overlay.h"
#include "restore/restore_engine.h"
#include "qemu/snapshot_qemu.h"
#include "qemu/subprocess.h"
#include "tree/tree_model.h"

namespace kvmcdp {
namespace {

namespace fs = std::filesystem;

// Step 1: the tree and its root, from the disk at the base-complete seq.
Result<Tree> open_or_create_tree(StoreView& view, OpLog* log) {
  std::string dir = built_tree_dir(view.store_dir);
  auto loaded = load_tree(dir);
  if (loaded) {
    if (loaded->intent)
      if (auto s = repair_tree(*loaded, nullptr, log); !s) return s;
    return loaded;
  }
  if (loaded.status().kind() != ErrorKind::kNotFound) return loaded.status();
  uint64_t seq = view.manifest.base_complete_seq;
  std::string raw = dir + "/base.raw.kvmcdp-tmp", qcow = dir + "/base.qcow2";
  auto st = restore(view, seq, raw);
  if (!st) return st.status();
  Status conv = run_process({qemu_img_binary(), "convert", "-q", "-f", "raw", "-O", "qcow2", raw,
                             qcow + ".kvmcdp-tmp"});
  ::unlink(raw.c_str());
  if (!conv) return conv;
  if (auto s = fsutil::rename_durable(qcow + ".kvmcdp-tmp", qcow); !s) return s;
  Tree t;
  t.dir = dir;
  TreeNode root;
  root.name = "base";
  root.file = "base.qcow2";
  root.format = "qcow2";
  root.created = static_cast<int64_t>(std::time(nullptr));
  root.point = seq;
  root.point_time_ns = view.manifest.base_complete_time_ns;
  t.nodes.push_back(root);
  t.active = root.name;
  if (auto s = save_tree(t); !s) return s;
  log->push_back(fmt::format("created the tree in {} with root base (seq {})", dir, seq));
  return t;
}


}  // namespace

namespace {

// Steps 2-3 for one point: an overlay on `parent` holding (parent, seq].
Result<BuiltNode> build_one(Tree& t, StoreView& view, const TreeNode& parent, uint64_t seq,
                            const std::string& path) {
  BuiltNode b;
  b.name = built_node_name(seq);
  b.seq = seq;
  b.parent = parent.name;
  // Relative, so that the tree can move with the store.
  std::string backing = relative_backing(path, t.path_of(parent));
  auto written = write_overlay(view, *parent.point, seq, backing, "qcow2", path);
  if (!written) return written.status();
  const DeltaStats& delta = written->delta;
  b.direct = written->direct;
  b.data_bytes = delta.data_bytes;
  b.zero_bytes = delta.zero_bytes;
  return b;
}

}  // namespace


Result<std::vector<BuiltNode>> build_points(const std::string& store_dir,
                                            std::vector<uint64_t> seqs, OpLog* log) {
  auto view = open_store_view(store_dir);
  if (!view) return view.status();
  for (uint64_t s : seqs)
    if (auto st = journal::check_recoverable(view->ranges, s); !st) return st;
  std::sort(seqs.begin(), seqs.end());
  seqs.erase(std::unique(seqs.begin(), seqs.end()), seqs.end());

  auto tree = open_or_create_tree(*view, log);
  if (!tree) return tree.status();
  Tree& t = *tree;
  std::vector<BuiltNode> built;
  for (uint64_t seq : seqs) {
    auto same = std::find_if(t.nodes.begin(), t.nodes.end(), [&](const TreeNode& n) {
      return n.state == NodeState::kLive && n.point == seq;
    });
    if (same != t.nodes.end()) {
      built.push_back({same->name, seq, same->parent, 0, 0, true});
      log->push_back(fmt::format("seq {} is already node {}", seq, same->name));
      continue;
    }
    const TreeNode* parent = nearest_node(t, *view, seq);
    if (!parent)
      return Status(ErrorKind::kNotRecoverable,
                    fmt::format("seq {}: no node before it in its recoverable range "
                                "(a gap lies between it and the base)", seq));
    std::string name = built_node_name(seq);
    if (t.find(name))  // a logically deleted node of that point: pick a new name
      name = fmt::format("seq-{}-{}", seq, t.next_id++);
    std::string file = name + ".qcow2";
    std::string final_path = t.dir + "/" + file, tmp_path = final_path + ".kvmcdp-tmp";
    auto b = build_one(t, *view, *parent, seq, tmp_path);
    if (!b) {
      ::unlink(tmp_path.c_str());
      return b.status();
    }
    b->name = name;
    crash_point("build", 1);
    if (auto s = fsutil::rename_durable(tmp_path, final_path); !s) return s;
    crash_point("build", 2);
    auto time_ns = record_time(*view->reader, seq);
    if (!time_ns) return time_ns.status();

    // Step 4: the node joins the tree in one atomic write.
    TreeNode n;
    n.name = name;
    n.file = file;
    n.format = "qcow2";
    n.parent = parent->name;
    n.created = static_cast<int64_t>(std::time(nullptr));
    n.point = seq;
    n.point_time_ns = *time_ns;
    const TreeNode* active = t.find(t.active);
    bool newest = !active || !active->point || seq > *active->point;
    t.nodes.push_back(n);
    if (newest) t.active = name;
    if (auto s = save_tree(t); !s) return s;
    crash_point("build", 3);
    log->push_back(fmt::format("built {} (seq {}, {}) on {}: {} bytes written, {} zeroed ({})",
                               name, seq, format_time_human(*time_ns), b->parent, b->data_bytes,
                               b->zero_bytes,
                               b->direct ? "4 KiB clusters, written directly"
                                         : "128 KiB clusters, through qemu-nbd"));
    built.push_back(*b);
  }
  return built;
}

}  // namespace kvmcdp
