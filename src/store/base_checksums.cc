// The base copy's block checksums (format in base_checksums.h).
//
// The base is written by QEMU (a mirror job) or qemu-img (from kvmcdp's
// NBD export), by a fold's restore, or by the backup server from shipped
// chunks: none of them hands kvmcdp the bytes in order, so the checksums
// are computed from the finished file, right after it was written (its
// pages are still cached) and before the manifest that names it is
// committed.  Holes are found with SEEK_DATA/SEEK_HOLE and never read: a
// hole block's CRC is the zero block's, computed once.
//
// Readers check every block they read, and a hole they skip against the
// zero block's CRC, so a punched-out range is damage too.
#include "store/base_checksums.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "base/crc32c.h"
#include "base/fsutil.h"

namespace kvmcdp {
namespace {

constexpr char kMagic[8] = {'K', 'V', 'C', 'D', 'P', 'B', 'C', 'K'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeader = 32;
constexpr uint64_t kMaxBlocks = uint64_t(1) << 28;  // a 16 TiB disk

void put32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; i++) s->push_back(char(uint8_t(v >> (8 * i))));
}
void put64(std::string* s, uint64_t v) {
  for (int i = 0; i < 8; i++) s->push_back(char(uint8_t(v >> (8 * i))));
}
uint32_t get32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
uint64_t get64(const uint8_t* p) { return uint64_t(get32(p)) | uint64_t(get32(p + 4)) << 32; }

}  // namespace

std::string base_checksums_path(const std::string& store_dir, const std::string& base_image) {
  return store_dir + "/" + base_image + ".crc";
}

std::string encode_base_checksums(const BaseChecksums& c) {
  std::string s(kMagic, sizeof kMagic);
  put32(&s, kVersion);
  put32(&s, c.block_size);
  put64(&s, c.disk_size);
  put64(&s, c.crcs.size());
  for (uint32_t v : c.crcs) put32(&s, v);
  put32(&s, crc32c(s.data(), s.size()));
  return s;
}

Result<BaseChecksums> decode_base_checksums(const std::vector<uint8_t>& b,
                                            const std::string& what) {
  auto bad = [&](const std::string& why) { return Status(ErrorKind::kDamaged, what + ": " + why); };
  if (b.size() < kHeader + 4) return bad("too short for a base checksum file");
  if (std::memcmp(b.data(), kMagic, sizeof kMagic) != 0) return bad("not a base checksum file");
  if (get32(b.data() + 8) != kVersion)
    return bad(fmt::format("unknown version {}", get32(b.data() + 8)));
  BaseChecksums c;
  c.block_size = get32(b.data() + 12);
  c.disk_size = get64(b.data() + 16);
  uint64_t count = get64(b.data() + 24);
  if (c.block_size != kBaseBlock) return bad(fmt::format("block size {}", c.block_size));
  if (count > kMaxBlocks || count != (c.disk_size + c.block_size - 1) / c.block_size)
    return bad("the block count does not match the disk size");
  if (b.size() != kHeader + 4 * count + 4) return bad("the file was cut or extended");
  if (crc32c(b.data(), b.size() - 4) != get32(b.data() + b.size() - 4))
    return bad("checksum mismatch: it was damaged since kvmcdp wrote it");
  c.crcs.resize(count);
  for (uint64_t i = 0; i < count; i++) c.crcs[i] = get32(b.data() + kHeader + 4 * i);
  return c;
}

uint32_t zero_block_crc(uint64_t n) {
  static const uint32_t full = [] {
    std::vector<uint8_t> z(kBaseBlock, 0);
    return crc32c(z.data(), z.size());
  }();
  if (n == kBaseBlock) return full;
  std::vector<uint8_t> z(n, 0);
  return crc32c(z.data(), z.size());
}

bool BaseBlockReader::in_hole(uint64_t b, uint64_t e) {
  if (b >= data_begin_ && b < data_end_) return false;
  if (queried_from_ <= b && (no_more_data_ || b < data_begin_))
    return no_more_data_ || e <= data_begin_;
  queried_from_ = b;
  off_t d = ::lseek(fd_, off_t(b), SEEK_DATA);
  if (d < 0) {
    // ENXIO: only holes to the end; anything else: read it, to be sure.
    no_more_data_ = errno == ENXIO;
    if (!no_more_data_) {
      data_begin_ = b;
      data_end_ = e;
    }
    return no_more_data_;
  }
  no_more_data_ = false;
  off_t h = ::lseek(fd_, d, SEEK_HOLE);
  data_begin_ = uint64_t(d);
  data_end_ = h < 0 ? UINT64_MAX : uint64_t(h);
  if (b >= data_begin_) return false;
  return e <= data_begin_;
}

Status BaseBlockReader::read_block(uint64_t i, std::vector<uint8_t>* buf, bool* hole,
                                   bool fill_holes) {
  uint64_t b = i * kBaseBlock;
  uint64_t n = std::min<uint64_t>(kBaseBlock, size_ - b);
  *hole = in_hole(b, b + n);
  uint32_t crc;
  if (*hole) {
    if (fill_holes) buf->assign(n, 0);
    crc = zero_block_crc(n);
  } else {
    buf->resize(n);
    auto got = fsutil::pread_full(fd_, buf->data(), n, b, path_);
    if (!got) return got.status();
    if (*got != n)
      return Status(ErrorKind::kDamaged,
                    fmt::format("the base copy {} ends at byte {}, inside the disk", path_,
                                b + *got));
    if (!sums_) return Status::ok();
    crc = crc32c(buf->data(), n);
  }
  if (sums_ && (i >= sums_->crcs.size() || sums_->crcs[i] != crc))
    return Status(ErrorKind::kDamaged,
                  fmt::format("the base copy {} is damaged: block at byte offset {} does not "
                              "match its checksum",
                              path_, b));
  return Status::ok();
}

Result<BaseChecksums> compute_base_checksums(const std::string& path, uint64_t disk_size) {
  fsutil::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Status(ErrorKind::kFailure, fsutil::errno_message("open", path));
  struct stat st;
  if (fstat(fd.get(), &st) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("stat", path));
  if (S_ISREG(st.st_mode) && uint64_t(st.st_size) != disk_size)
    return Status(ErrorKind::kDamaged, fmt::format("{} holds {} bytes, the disk {}", path,
                                                   uint64_t(st.st_size), disk_size));
  BaseChecksums c;
  c.disk_size = disk_size;
  BaseBlockReader reader(fd.get(), path, nullptr, disk_size);
  c.crcs.resize(reader.block_count());
  std::vector<uint8_t> buf;
  for (uint64_t i = 0; i < c.crcs.size(); i++) {
    bool hole = false;
    if (auto s = reader.read_block(i, &buf, &hole, false); !s) return s;
    c.crcs[i] = hole ? zero_block_crc(c.block_len(i)) : crc32c(buf.data(), buf.size());
  }
  return c;
}

Status write_base_checksums(const std::string& store_dir, Manifest& m) {
  auto c = compute_base_checksums(store_dir + "/" + m.base_image, m.disk_size);
  if (!c) return c.status();
  if (auto s = fsutil::replace_file_atomic(base_checksums_path(store_dir, m.base_image),
                                           encode_base_checksums(*c));
      !s)
    return s;
  m.extra["base_checksums"] = kBaseChecksumScheme;
  return Status::ok();
}

Result<std::optional<BaseChecksums>> load_base_checksums(const std::string& store_dir,
                                                         const Manifest& m) {
  auto key = m.extra.find("base_checksums");
  if (key == m.extra.end()) return std::optional<BaseChecksums>();
  if (!key->is_string() || key->get<std::string>() != kBaseChecksumScheme)
    return Status(ErrorKind::kFailure,
                  fmt::format("{}: unknown base_checksums {} (this kvmcdp knows \"{}\")",
                              manifest_path(store_dir), key->dump(), kBaseChecksumScheme));
  std::string path = base_checksums_path(store_dir, m.base_image);
  auto bytes = fsutil::read_file(path);
  if (!bytes) {
    if (bytes.status().kind() == ErrorKind::kNotFound)
      return Status(ErrorKind::kDamaged,
                    fmt::format("the base copy's checksum file {} is missing", path));
    return bytes.status();
  }
  auto c = decode_base_checksums(*bytes, "the base copy's checksum file " + path);
  if (!c) return c.status();
  if (c->disk_size != m.disk_size)
    return Status(ErrorKind::kDamaged,
                  fmt::format("the base copy's checksum file {} describes a disk of {} bytes, "
                              "the manifest {}",
                              path, c->disk_size, m.disk_size));
  return std::optional<BaseChecksums>(std::move(*c));
}

bool is_base_damage(const Status& s) {
  return !s && s.kind() == ErrorKind::kDamaged && s.message().rfind("the base copy", 0) == 0;
}

bool is_spool(const Manifest& m) {
  auto s = m.extra.find("spool");
  return s != m.extra.end() && s->is_boolean() && s->get<bool>();
}

Result<BaseCheck> check_base(const std::string& store_dir, const Manifest& m) {
  BaseCheck r;
  // A spool hands its base to the server and deletes it.
  if (!m.base_complete || is_spool(m)) return r;
  auto sums = load_base_checksums(store_dir, m);
  if (!sums) {
    if (sums.status().kind() != ErrorKind::kDamaged) return sums.status();
    r.checked = true;
    r.problem = sums.status().message();
    return r;
  }
  std::string path = store_dir + "/" + m.base_image;
  fsutil::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno != ENOENT) return Status(ErrorKind::kFailure, fsutil::errno_message("open", path));
    r.checked = bool(*sums);
    r.problem = fmt::format("the base copy {} is missing", path);
    return r;
  }
  if (!*sums) return r;
  r.checked = true;
  struct stat st;
  if (fstat(fd.get(), &st) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("stat", path));
  if (uint64_t(st.st_size) != m.disk_size) {
    r.problem = fmt::format("the base copy {} holds {} bytes, the disk {}: it was cut or extended",
                            path, uint64_t(st.st_size), m.disk_size);
    r.first_bad_offset = std::min<uint64_t>(uint64_t(st.st_size), m.disk_size);
  }
  BaseBlockReader reader(fd.get(), path, &**sums, m.disk_size);
  r.blocks = reader.block_count();
  std::vector<uint8_t> buf;
  uint64_t first_bad = 0;
  for (uint64_t i = 0; i < r.blocks; i++) {
    bool hole = false;
    Status s = reader.read_block(i, &buf, &hole, false);
    if (s) continue;
    if (s.kind() != ErrorKind::kDamaged) return s;
    if (r.bad_blocks++ == 0) first_bad = i * kBaseBlock;
  }
  if (r.bad_blocks) {
    std::string bad = fmt::format("{} block{} of {} bad, the first at byte offset {}",
                                  r.bad_blocks, r.bad_blocks == 1 ? "" : "s", r.blocks, first_bad);
    if (r.problem.empty()) {
      r.first_bad_offset = first_bad;
      r.problem = fmt::format("the base copy {} is damaged: {}", path, bad);
    } else {
      r.first_bad_offset = std::min(r.first_bad_offset, first_bad);
      r.problem += "; " + bad;
    }
  }
  return r;
}

}  // namespace kvmcdp
