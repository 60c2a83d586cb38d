// Restoring from a built node.  A full restore reads the journal back to
// the base; with a snapshot tree built from the journal (kvmcdp build) a
// point only needs the nearest node at or before it plus the records
// after that node:
//
//  1. Pick the node: live, with a point <= target in the same recoverable
//     range (across a gap the records between would not describe the disk),
//     and, unless asked to always use it, only if reading its chain costs
//     less than reading the journal back to the base (node_is_cheaper).
//  2. qemu-img convert its chain into the raw output (a temp file, or a
//     device written in place): QEMU reads the qcow2s, kvmcdp never
//     parses them.
//  3. journal_delta(node, target]: the same newest-first walk as the full
//     restore (an ExtentMap keeps each byte's newest version), but it stops
//     at the node's seq, so the journal read grows with the changes since
//     the node, not with the journal.  Data is written in place, zero
//     ranges are punched as holes.
//  4. The caller makes it durable and puts it in place (output_target.h).
#include "restore/restore_delta.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <vector>

#include <fmt/format.h>

#include "base/fsutil.h"
#include "store/point.h"
#include "qemu/snapshot_qemu.h"
#include "qemu/subprocess.h"
#include "restore/node_overlay.h"
#include "tree/tree_model.h"

namespace kvmcdp {

namespace {

// Whether starting from `node` reads less than the full restore would.
// Both write the whole image; they differ in what they read first: the
// full restore decompresses the journal back to the base (or the fold
// point), the node path has QEMU read every allocated byte of the node's
// chain instead of the frames up to the node.  The journal's compressed
// size and the chain's allocated size are cheap proxies for both (the
// index and st_blocks), and QEMU's convert is no faster per byte than the
// journal, so the node wins only when the journal up to it is the bigger.
bool node_is_cheaper(const Tree& t, const TreeNode& node, const StoreView& view) {
  uint64_t journal = 0;
  for (const auto& f : view.reader->frames())
    if (f.last_seq > view.manifest.folded_seq && f.first_seq <= *node.point) journal += f.length;
  uint64_t chain = 0;
  for (const TreeNode* n = &node; n; n = n->parent.empty() ? nullptr : t.find(n->parent)) {
    struct stat st;
    if (::stat(t.path_of(*n).c_str(), &st) == 0) chain += uint64_t(st.st_blocks) * 512;
  }
  return journal > chain;
}

}  // namespace

Result<NearestRestore> restore_nearest(StoreView& view, uint64_t target_seq, ImageOutput& out,
                                       const RestoreProgressFn& progress, NodeUse use) {
  const std::string& store_dir = view.store_dir;
  NearestRestore result;
  auto full = [&]() -> Result<NearestRestore> {
    auto st = restore_into(view, target_seq, out, progress);
    if (!st) return st.status();
    result.stats = *st;
    return result;
  };

  // Step 1: a usable node?  No tree, or one in the middle of a change:
  // the journal alone.
  auto tree = load_tree(built_tree_dir(store_dir));
  if (!tree || tree->intent) return full();
  if (auto s = journal::check_recoverable(view.ranges, target_seq); !s) return s;
  const TreeNode* node = nearest_node(*tree, view, target_seq);
  if (!node || (use == NodeUse::kIfCheaper && !node_is_cheaper(*tree, *node, view)))
    return full();

  // Step 2: the node's image, through QEMU, into the output as it is
  // (-n): a fresh temp file reads as zeroes already, a device does not,
  // so there QEMU writes the zeroes too.
  std::vector<std::string> argv = {qemu_img_binary(), "convert", "-q", "-n"};
  if (!out.in_place()) argv.push_back("--target-is-zero");
  for (const std::string& a : {std::string("-f"), node->format, std::string("-O"),
                               std::string("raw"), tree->path_of(*node), out.path()})
    argv.push_back(a);
  if (auto s = run_process(argv); !s) return s;

  // Step 3: only the records after the node.
  uint64_t size = view.manifest.disk_size;
  auto delta = journal_delta(*view.reader, *node->point, target_seq, size,
                             [&](uint64_t off, uint64_t len, const uint8_t* data) {
                               if (!data) return out.zero(off, len);
                               return fsutil::pwrite_all(out.fd(), data, len, off, out.path());
                             });
  if (!delta) return delta.status();
  if (progress) progress({"journal", 1, 1});

  result.from_node = node->name;
  result.from_seq = *node->point;
  result.stats.disk_size = size;
  result.stats.frames_read = delta->frames_read;
  result.stats.frame_bytes = delta->frame_bytes;
  result.stats.journal_bytes = delta->data_bytes;
  result.stats.zero_bytes = delta->zero_bytes;
  result.stats.base_bytes = size - delta->data_bytes - delta->zero_bytes;
  return result;
}

Result<NearestRestore> restore_nearest(const std::string& store_dir, uint64_t target_seq,
                                       const std::string& out_path,
                                       const RestoreProgressFn& progress, NodeUse use) {
  auto view = open_store_view(store_dir);
  if (!view) return view.status();
  auto out = ImageOutput::replace_file(out_path, view->manifest.disk_size);
  if (!out) return out.status();
  auto r = restore_nearest(*view, target_seq, *out, progress, use);
  if (!r) return r;
  if (auto s = out->commit(); !s) return s;
  return r;
}

Result<NearestRestore> restore_overlay(StoreView& view, uint64_t target_seq,
                                       const std::string& out_path) {
  const std::string& store_dir = view.store_dir;
  // Step 1: the node to stand on.
  auto tree = load_tree(built_tree_dir(store_dir));
  if (!tree)
    return Status(ErrorKind::kNotFound,
                  fmt::format("{} has no prepared restore points: run kvmcdp build first",
                              store_dir));
  if (tree->intent)
    return Status(ErrorKind::kBusy, "the store's tree has an interrupted change: run "
                                    "kvmcdp snapshot repair --tree " +
                                        built_tree_dir(store_dir));
  if (auto s = journal::check_recoverable(view.ranges, target_seq); !s) return s;
  const TreeNode* node = nearest_node(*tree, view, target_seq);
  if (!node)
    return Status(ErrorKind::kNotFound,
                  fmt::format("no prepared restore point at or before seq {}: "
                              "run kvmcdp build --seq {} (or an earlier point)",
                              target_seq, target_seq));

  // Step 2: an empty overlay on it, then only the records after it.
  const std::string& tmp = out_path;
  std::string backing = std::filesystem::absolute(tree->path_of(*node)).lexically_normal();
  auto written = write_overlay(view, *node->point, target_seq, backing, node->format, tmp);
  if (!written) return written.status();
  const DeltaStats& delta = written->delta;

  // Step 3: durable (the caller renames it into place).
  fsutil::Fd f(::open(tmp.c_str(), O_RDONLY | O_CLOEXEC));
  if (!f.valid() || ::fsync(f.get()) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("fsync", tmp));

  NearestRestore result;
  result.from_node = node->name;
  result.from_seq = *node->point;
  result.stats.disk_size = view.manifest.disk_size;
  result.stats.frames_read = delta.frames_read;
  result.stats.frame_bytes = delta.frame_bytes;
  result.stats.journal_bytes = delta.data_bytes;
  result.stats.zero_bytes = delta.zero_bytes;
  return result;
}

}  // namespace kvmcdp
