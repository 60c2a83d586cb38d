#include "export/point_image.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "qemu/subprocess.h"
#include "restore/node_overlay.h"
#include "tree/tree_model.h"

namespace kvmcdp {
namespace {

namespace fs = std::filesystem;

// qemu-nbd on a local file answers at once; a minute means it is stuck.
DiskReader::Deadline node_deadline() {
  return std::chrono::steady_clock::now() + std::chrono::minutes(1);
}

// A read past the end of a sparse file reads zeroes.
Status pread_full(int fd, uint8_t* p, uint64_t n, uint64_t off, const std::string& what) {
  auto got = fsutil::pread_full(fd, p, n, off, what);
  if (!got) return got.status();
  if (*got < n) std::memset(p + *got, 0, n - *got);
  return Status::ok();
}

Result<fsutil::Fd> scratch_file(const std::string& path, uint64_t size) {
  fsutil::Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) return Status(ErrorKind::kFailure, fsutil::errno_message("create", path));
  if (::ftruncate(fd.get(), off_t(size)) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("size", path));
  return fd;
}

}  // namespace

Result<std::unique_ptr<PointImage>> PointImage::open(StoreView& view, uint64_t seq,
                                                     const std::string& work_dir,
                                                     bool writable) {
  const Manifest& m = view.manifest;
  // The nearest built node, if the store has a tree without an unfinished
  // change; else the base.
  std::optional<Tree> tree;
  const TreeNode* node = nullptr;
  if (auto t = load_tree(built_tree_dir(view.store_dir)); t && !t->intent) {
    tree.emplace(std::move(*t));
    node = nearest_node(*tree, view, seq);
    // The tree's root is the base again, as a qcow2: the base file itself
    // reads faster (no qemu-nbd) and knows its holes.
    if (node && node->parent.empty()) node = nullptr;
  }
  auto index = PointIndex::build(*view.reader, node ? *node->point : m.folded_seq, seq,
                                 m.disk_size);
  if (!index) return index.status();
  std::unique_ptr<PointImage> img(new PointImage(view, std::move(*index)));
  img->writable_ = writable;
  if (node) {
    std::string path = fs::absolute(tree->path_of(*node)).lexically_normal();
    auto reader = DiskReader::spawn(
        {qemu_nbd_binary(), "--read-only", "--format", node->format, "--cache", "none", path},
        "base:allocation");
    if (!reader) return reader.status();
    img->node_ = std::move(*reader);
    img->below_name_ = fmt::format("restore point {} (seq {})", node->name, *node->point);
  } else {
    std::string base = view.store_dir + "/" + m.base_image;
    img->below_ = fsutil::Fd(::open(base.c_str(), O_RDONLY | O_CLOEXEC));
    if (!img->below_.valid())
      return Status(ErrorKind::kFailure, fsutil::errno_message("open", base));
  }
  img->scratch_path_ = work_dir + "/fill.raw";
  auto scratch = scratch_file(img->scratch_path_, m.disk_size);
  if (!scratch) return scratch.status();
  img->scratch_ = std::move(*scratch);
  if (writable) {
    img->overlay_path_ = work_dir + "/writes.raw";
    auto ov = scratch_file(img->overlay_path_, m.disk_size);
    if (!ov) return ov.status();
    img->overlay_ = std::move(*ov);
  }
  img->filled_ = std::vector<std::atomic<bool>>(view.reader->frames().size());
  return img;
}

PointImage::~PointImage() {
  stop_fill_ = true;
  if (filler_.joinable()) filler_.join();
  if (!scratch_path_.empty()) ::unlink(scratch_path_.c_str());
  if (!overlay_path_.empty()) ::unlink(overlay_path_.c_str());
}

Status PointImage::fill(size_t frame) {
  if (filled_[frame].load(std::memory_order_acquire)) return Status::ok();
  std::lock_guard lock(fill_mu_);
  if (filled_[frame].load(std::memory_order_relaxed)) return Status::ok();
  std::vector<uint8_t> raw;
  std::vector<journal::RecordView> records;
  if (auto s = view_.reader->read_frame(frame, &raw, &records); !s) return s;
  for (const PointPiece& p : index_.frame_pieces(frame)) {
    if (p.where.raw_offset + (p.end - p.begin) > raw.size())
      return Status(ErrorKind::kDamaged, fmt::format("journal frame {} is shorter than its "
                                                     "index says",
                                                     frame));
    if (auto s = fsutil::pwrite_all(scratch_.get(), raw.data() + p.where.raw_offset, p.end - p.begin,
                             p.begin, scratch_path_);
        !s)
      return s;
  }
  filled_[frame].store(true, std::memory_order_release);
  filled_count_++;
  return Status::ok();
}

void PointImage::start_fill() {
  filler_ = std::thread([this] {
    for (size_t f : index_.frames()) {
      if (stop_fill_) return;
      // A failed fill is left to the read that needs the frame, which
      // reports it to its client.
      if (!fill(f)) return;
    }
  });
}

Status PointImage::read_point(uint64_t offset, uint64_t length, uint8_t* out) {
  Status err;
  index_.pieces(offset, length, [&](const PointPiece& p) {
    if (!err) return;
    uint8_t* dst = out + (p.begin - offset);
    const uint64_t n = p.end - p.begin;
    switch (p.from) {
      case PointPiece::From::kZero:
        std::memset(dst, 0, n);
        break;
      case PointPiece::From::kBelow:
        if (node_) {
          err = read_node(p.begin, n, dst);
          break;
        }
        // Holes of the base are not read: zeroes are cheaper made here.
      {
        Status read_err;
        Status seek_err = below_extents(p.begin, p.end, [&](uint64_t b, uint64_t e, bool zero) {
          if (!read_err) return;
          if (zero) std::memset(out + (b - offset), 0, e - b);
          else read_err = pread_full(below_.get(), out + (b - offset), e - b, b, "the store's base");
        });
        err = !seek_err ? seek_err : read_err;
        break;
      }
      case PointPiece::From::kJournal:
        err = fill(p.where.frame);
        if (err) err = pread_full(scratch_.get(), dst, n, p.begin, scratch_path_);
        break;
    }
  });
  return err;
}

Status PointImage::read_node(uint64_t offset, uint64_t length, uint8_t* out) {
  std::lock_guard lock(node_mu_);
  return node_->read(out, length, offset, node_deadline());
}

Status PointImage::below_extents(uint64_t b, uint64_t e, const ExtentFn& fn) {
  if (node_) {
    std::lock_guard lock(node_mu_);
    auto ext = node_->extents(b, e - b, node_deadline());
    if (!ext) return ext.status();
    for (const DiskExtent& x : *ext) fn(x.offset, x.offset + x.length, x.set);
    return Status::ok();
  }
  uint64_t at = b;
  while (at < e) {
    off_t data = ::lseek(below_.get(), off_t(at), SEEK_DATA);
    if (data < 0 && errno != ENXIO)
      return Status(ErrorKind::kFailure, fsutil::errno_message("seek in", "the store's base"));
    uint64_t d = data < 0 ? e : std::min<uint64_t>(uint64_t(data), e);
    if (d > at) fn(at, d, true);
    if (d >= e) break;
    off_t hole = ::lseek(below_.get(), data, SEEK_HOLE);
    uint64_t h = hole < 0 ? e : std::min<uint64_t>(uint64_t(hole), e);
    fn(d, h, false);
    at = h;
  }
  return Status::ok();
}

Status PointImage::point_extents(uint64_t offset, uint64_t length, const ExtentFn& fn) {
  Status err;
  index_.pieces(offset, length, [&](const PointPiece& p) {
    if (!err) return;
    if (p.from == PointPiece::From::kBelow) err = below_extents(p.begin, p.end, fn);
    else fn(p.begin, p.end, p.from == PointPiece::From::kZero);
  });
  return err;
}

Status PointImage::split_written(uint64_t offset, uint64_t length, const RangeFn& written,
                                 const RangeFn& point) {
  std::vector<std::pair<uint64_t, uint64_t>> below;
  {
    std::lock_guard lock(overlay_mu_);
    written_.uncovered(offset, offset + length,
                       [&](uint64_t b, uint64_t e) { below.emplace_back(b, e); });
  }
  uint64_t at = offset;
  for (auto [b, e] : below) {
    if (b > at)
      if (auto s = written(at, b); !s) return s;
    if (auto s = point(b, e); !s) return s;
    at = e;
  }
  if (at < offset + length) return written(at, offset + length);
  return Status::ok();
}

Status PointImage::extents(uint64_t offset, uint64_t length, const ExtentFn& fn) {
  if (offset > size() || length > size() - offset)
    return Status(ErrorKind::kUsage, "past the end of the disk");
  if (!writable_) return point_extents(offset, length, fn);
  // What the client wrote is data; the rest is the point's.
  return split_written(
      offset, length,
      [&](uint64_t b, uint64_t e) {
        fn(b, e, false);
        return Status::ok();
      },
      [&](uint64_t b, uint64_t e) { return point_extents(b, e - b, fn); });
}

Status PointImage::read(uint64_t offset, uint64_t length, uint8_t* out) {
  if (offset > size() || length > size() - offset)
    return Status(ErrorKind::kUsage, "read past the end of the disk");
  if (!writable_) return read_point(offset, length, out);
  // The client's writes first; what they do not cover, from the point.
  return split_written(
      offset, length,
      [&](uint64_t b, uint64_t e) {
        return pread_full(overlay_.get(), out + (b - offset), e - b, b, overlay_path_);
      },
      [&](uint64_t b, uint64_t e) { return read_point(b, e - b, out + (b - offset)); });
}

Status PointImage::write(uint64_t offset, uint64_t length, const uint8_t* data) {
  if (!writable_) return Status(ErrorKind::kUsage, "the export is read-only");
  if (offset > size() || length > size() - offset)
    return Status(ErrorKind::kUsage, "write past the end of the disk");
  if (auto s = fsutil::pwrite_all(overlay_.get(), data, length, offset, overlay_path_); !s) return s;
  std::lock_guard lock(overlay_mu_);
  written_.cover(offset, offset + length, [](uint64_t, uint64_t) {});
  return Status::ok();
}

Status PointImage::write_zeroes(uint64_t offset, uint64_t length) {
  if (!writable_) return Status(ErrorKind::kUsage, "the export is read-only");
  if (offset > size() || length > size() - offset)
    return Status(ErrorKind::kUsage, "write past the end of the disk");
  if (::fallocate(overlay_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(offset),
                  off_t(length)) != 0) {
    std::vector<uint8_t> zeroes(std::min<uint64_t>(length, 1 << 20), 0);
    for (uint64_t done = 0; done < length;) {
      uint64_t n = std::min<uint64_t>(zeroes.size(), length - done);
      if (auto s = fsutil::pwrite_all(overlay_.get(), zeroes.data(), n, offset + done, overlay_path_);
          !s)
        return s;
      done += n;
    }
  }
  std::lock_guard lock(overlay_mu_);
  written_.cover(offset, offset + length, [](uint64_t, uint64_t) {});
  return Status::ok();
}

}  // namespace kvmcdp
