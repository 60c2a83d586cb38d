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
#include "build_tree.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <deque>
#include <filesystem>

#include <fmt/format.h>
#include <libnbd.h>

#include "fsutil.h"
#include "point.h"
#include "qcow2_overlay.h"
#include "range_coalescer.h"
#include "restore_delta.h"
#include "snapshot_qemu.h"
#include "subprocess.h"
#include "tree_model.h"
#include "writeback_kicker.h"

namespace kvmcdp {
namespace {

namespace fs = std::filesystem;

std::string qemu_nbd_binary() {
  std::string img = qemu_img_binary();
  auto slash = img.rfind('/');
  if (slash == std::string::npos) return "qemu-nbd";
  return img.substr(0, slash + 1) + "qemu-nbd";
}

// The time of record `seq` (its frame's records are read).
Result<uint64_t> record_time(journal::JournalReader& r, uint64_t seq) {
  auto i = r.frame_for_seq(seq);
  if (!i) return Status(ErrorKind::kNotFound, fmt::format("no record {} in the journal", seq));
  std::vector<uint8_t> raw;
  std::vector<journal::RecordView> recs;
  if (auto s = r.read_frame(*i, &raw, &recs); !s) return s;
  for (const auto& v : recs)
    if (v.seq == seq) return v.time_ns;
  return Status(ErrorKind::kNotFound, fmt::format("no record {} in the journal", seq));
}

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
  auto st = restore(view.store_dir, seq, raw);
  if (!st) return st.status();
  Status conv = run_process({qemu_img_binary(), "convert", "-q", "-f", "raw", "-O", "qcow2", raw,
                             qcow + ".kvmcdp-tmp"});
  ::unlink(raw.c_str());
  if (!conv) return conv;
  if (::rename((qcow + ".kvmcdp-tmp").c_str(), qcow.c_str()) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("rename", qcow));
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

const TreeNode* parent_for(const Tree& t, const StoreView& view, uint64_t seq) {
  uint64_t range_first = 0;
  for (const auto& rr : view.ranges)
    if (rr.first_seq <= seq && seq <= rr.last_seq) range_first = rr.first_seq;
  const TreeNode* best = nullptr;
  for (const auto& n : t.nodes)
    if (n.state == NodeState::kLive && n.point && *n.point <= seq && *n.point >= range_first &&
        (!best || *n.point > *best->point))
      best = &n;
  return best;
}

}  // namespace

Result<DeltaStats> write_delta_into(StoreView& view, uint64_t from_seq, uint64_t to_seq,
                                    const std::string& path) {
  // qemu-nbd serves the overlay to us over a socketpair (socket
  // activation, so no socket path and no port); each changed range is one
  // NBD write or write-zeroes (ranges that touch joined into one).
  struct Request {
    int64_t cookie;
    std::vector<uint8_t> data;
  };
  // Declared before the handle, so that on an early return the connection
  // is closed before the buffers of requests still in flight are freed.
  std::deque<Request> inflight;
  struct Handle {
    nbd_handle* h = nbd_create();
    ~Handle() {
      if (h) nbd_close(h);
    }
  } nbd;
  auto nbd_error = [&](const char* what) {
    return Status(ErrorKind::kFailure,
                  fmt::format("{} {} through qemu-nbd: {}", what, path, nbd_get_error()));
  };
  if (!nbd.h) return nbd_error("open");
  std::string server = qemu_nbd_binary();
  std::vector<std::string> args = {server, "-f", "qcow2", "--cache=writeback", path};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  if (nbd_connect_systemd_socket_activation(nbd.h, argv.data()) == -1) return nbd_error("open");
  // Up to kInFlight requests at once: a round trip per 4 KiB write would
  // cost more than the write.  libnbd keeps no copy, so each request owns
  // its bytes until it completes.
  constexpr size_t kInFlight = 64;
  // Data requests up to 1 MiB (at most 64 MiB held in flight); qemu-nbd
  // takes up to 32 MiB.
  constexpr uint64_t kMaxRequest = 1 << 20;
  auto retire_to = [&](size_t n) -> Status {
    while (inflight.size() > n) {
      int done = nbd_aio_command_completed(nbd.h, inflight.front().cookie);
      if (done == -1) return nbd_error("write");
      if (done == 1) {
        inflight.pop_front();
        continue;
      }
      if (nbd_poll(nbd.h, -1) == -1) return nbd_error("write");
    }
    return Status::ok();
  };
  // Adjacent ranges (a sequential burst of small writes) go as one request.
  RangeCoalescer coalesce(kMaxRequest, [&](uint64_t off, uint64_t len,
                                           std::vector<uint8_t> data) -> Status {
    if (auto s = retire_to(kInFlight - 1); !s) return s;
    Request r;
    r.data = std::move(data);
    // A zero range becomes a qcow2 zero cluster, not a hole that would
    // show the parent.
    r.cookie = r.data.empty() ? nbd_aio_zero(nbd.h, len, off, NBD_NULL_COMPLETION, 0)
                              : nbd_aio_pwrite(nbd.h, r.data.data(), len, off,
                                               NBD_NULL_COMPLETION, 0);
    if (r.cookie == -1) return nbd_error("write");
    inflight.push_back(std::move(r));
    return Status::ok();
  });
  auto delta = [&]() -> Result<DeltaStats> {
    WritebackKicker writeback(path, std::chrono::milliseconds(25));
    auto d = journal_delta(*view.reader, from_seq, to_seq, view.manifest.disk_size,
                           [&](uint64_t off, uint64_t len, const uint8_t* data) {
                             return coalesce.add(off, len, data);
                           });
    if (d)
      if (auto s = coalesce.flush(); !s) return s;
    return d;
  }();
  if (!delta) return delta.status();
  if (auto s = retire_to(0); !s) return s;
  if (nbd_flush(nbd.h, 0) == -1 || nbd_shutdown(nbd.h, 0) == -1) return nbd_error("flush");
  return *delta;
}

namespace {

// Steps 2-3 for one point: an overlay on `parent` holding (parent, seq].
Result<BuiltNode> build_one(Tree& t, StoreView& view, const TreeNode& parent, uint64_t seq,
                            const std::string& path) {
  BuiltNode b;
  b.name = built_node_name(seq);
  b.seq = seq;
  b.parent = parent.name;
  const uint64_t size = view.manifest.disk_size;
  // Relative, so that the tree can move with the store.
  std::string backing = relative_backing(path, t.path_of(parent));
  // Whole 4 KiB clusters (what guests write): written by us in one pass
  // (the bench's node, 370 MB of 4 KiB records: 1.5 s against 6.0 s
  // through qemu-nbd); anything else through QEMU, which fills partial
  // clusters from the parent.
  auto direct = write_qcow2_overlay(*view.reader, *parent.point, seq, size, backing, "qcow2", path);
  if (!direct) return direct.status();
  DeltaStats delta;
  if (*direct) {
    delta = **direct;
    b.direct = true;
  } else {
    if (auto s = create_overlay(path, backing, "qcow2", size, kSmallWriteOverlay); !s) return s;
    auto via_qemu = write_delta_into(view, *parent.point, seq, path);
    if (!via_qemu) return via_qemu.status();
    delta = *via_qemu;
  }
  b.data_bytes = delta.data_bytes;
  b.zero_bytes = delta.zero_bytes;
  return b;
}

}  // namespace

std::string built_tree_dir(const std::string& store_dir) { return store_dir + "/tree"; }
std::string built_node_name(uint64_t seq) { return fmt::format("seq-{}", seq); }

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
    const TreeNode* parent = parent_for(t, *view, seq);
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
    if (::rename(tmp_path.c_str(), final_path.c_str()) != 0)
      return Status(ErrorKind::kFailure, fsutil::errno_message("rename", tmp_path));
    if (auto s = fsutil::fsync_dir(t.dir); !s) return s;
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
