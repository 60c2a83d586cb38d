#include "restore/qcow2_overlay.h"

#include <fcntl.h>
#include <unistd.h>

#include <map>
#include <vector>

#include "base/fsutil.h"

namespace kvmcdp {
namespace {

constexpr uint64_t kCluster = kQcow2OverlayCluster;
constexpr uint64_t kL2Entries = kCluster / 8;        // 512: an L2 table maps 2 MiB
constexpr uint64_t kRefcountsPerBlock = kCluster / 2;  // 16-bit refcounts
constexpr uint64_t kCopied = 1ull << 63;              // refcount is exactly 1
constexpr uint64_t kZero = 1;                          // L2: the cluster reads as zeroes

void put_be(std::vector<uint8_t>& b, size_t at, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; i++) b[at + i] = uint8_t(v >> (8 * (bytes - 1 - i)));
}

uint64_t clusters_for(uint64_t bytes) { return (bytes + kCluster - 1) / kCluster; }

// Cluster 0: the version 3 header (104 bytes), the backing format
// extension, the end of extensions, then the backing file's name.
Result<std::vector<uint8_t>> header_cluster(uint64_t disk_size, uint64_t l1_entries,
                                            uint64_t l1_offset, uint64_t rt_offset,
                                            uint64_t rt_clusters, const std::string& backing,
                                            const std::string& backing_format) {
  std::vector<uint8_t> h(kCluster, 0);
  size_t fmt_len = backing_format.size(), fmt_padded = (fmt_len + 7) / 8 * 8;
  size_t name_at = 104 + 8 + fmt_padded + 8;
  if (name_at + backing.size() > kCluster)
    return Status(ErrorKind::kUsage, "backing file name too long for a qcow2 header");
  put_be(h, 0, 0x514649fb, 4);  // "QFI\xfb"
  put_be(h, 4, 3, 4);
  put_be(h, 8, name_at, 8);
  put_be(h, 16, backing.size(), 4);
  put_be(h, 20, 12, 4);  // cluster_bits: 4 KiB
  put_be(h, 24, disk_size, 8);
  put_be(h, 36, l1_entries, 4);
  put_be(h, 40, l1_offset, 8);
  put_be(h, 48, rt_offset, 8);
  put_be(h, 56, rt_clusters, 4);
  put_be(h, 96, 4, 4);    // refcount_order: 16 bits
  put_be(h, 100, 104, 4);  // header_length
  put_be(h, 104, 0xe2792aca, 4);  // backing file format name
  put_be(h, 108, fmt_len, 4);
  std::copy(backing_format.begin(), backing_format.end(), h.begin() + 112);
  // then the end-of-extensions marker (8 zero bytes), already zero
  std::copy(backing.begin(), backing.end(), h.begin() + long(name_at));
  return h;
}

}  // namespace

Result<std::optional<DeltaStats>> write_qcow2_overlay(journal::JournalReader& reader,
                                                      uint64_t from_seq, uint64_t to_seq,
                                                      uint64_t disk_size,
                                                      const std::string& backing,
                                                      const std::string& backing_format,
                                                      const std::string& path) {
  fsutil::Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return Status(ErrorKind::kFailure, fsutil::errno_message("create", path));

  // Step 1: the data, packed from cluster 1 on, as the journal gives it,
  // gathered into 1 MiB writes.  Ranges never overlap, so each guest
  // cluster is set once; its L2 entry is noted as we go (a table per
  // 2 MiB region touched, written out in step 2).
  std::map<uint64_t, std::vector<uint64_t>> l2_tables;  // L1 index -> entries
  auto set_l2 = [&](uint64_t cluster, uint64_t entry) {
    auto& t = l2_tables[cluster / kL2Entries];
    if (t.empty()) t.assign(kL2Entries, 0);
    t[cluster % kL2Entries] = entry;
  };
  constexpr uint64_t kStage = 1 << 20;
  std::vector<uint8_t> stage;
  stage.reserve(kStage);
  uint64_t next = 1;    // next free host cluster
  uint64_t staged = 1;  // host cluster where `stage` goes
  auto flush_stage = [&]() -> Status {
    if (auto s = fsutil::pwrite_all(fd.get(), stage.data(), stage.size(), staged * kCluster, path);
        !s)
      return s;
    staged = next;
    stage.clear();
    return Status::ok();
  };
  bool aligned = true;
  auto delta = journal_delta(
      reader, from_seq, to_seq, disk_size,
      [&](uint64_t off, uint64_t len, const uint8_t* data) -> Status {
        if (off % kCluster || len % kCluster) {
          aligned = false;
          return Status(ErrorKind::kUsage, "unaligned");
        }
        uint64_t first = off / kCluster, n = len / kCluster;
        for (uint64_t c = 0; c < n; c++) set_l2(first + c, data ? (next + c) * kCluster | kCopied : kZero);
        if (!data) return Status::ok();
        if (stage.size() + len > kStage)
          if (auto s = flush_stage(); !s) return s;
        next += n;
        if (len >= kStage) {  // big enough to go as it is
          auto s = fsutil::pwrite_all(fd.get(), data, len, staged * kCluster, path);
          staged = next;
          return s;
        }
        stage.insert(stage.end(), data, data + len);
        return Status::ok();
      });
  if (!aligned) return std::optional<DeltaStats>();
  if (!delta) return delta.status();
  if (auto s = flush_stage(); !s) return s;

  // Step 2: the metadata after the data: L2 tables, L1, refcounts.
  uint64_t l1_entries = (clusters_for(disk_size) + kL2Entries - 1) / kL2Entries;
  uint64_t l2_start = next;
  std::vector<uint8_t> l1(clusters_for(l1_entries * 8) * kCluster, 0);
  std::vector<uint8_t> l2_bytes(l2_tables.size() * kCluster, 0);
  uint64_t at = l2_start;
  for (const auto& [index, entries] : l2_tables) {
    for (uint64_t e = 0; e < kL2Entries; e++)
      put_be(l2_bytes, (at - l2_start) * kCluster + e * 8, entries[e], 8);
    put_be(l1, index * 8, at++ * kCluster | kCopied, 8);
  }
  uint64_t l1_start = at;
  uint64_t after_l1 = l1_start + l1.size() / kCluster;
  // The refcount table and blocks count themselves: grow until they cover
  // every cluster, their own included.
  uint64_t blocks = 1, rt_clusters = 1;
  for (;;) {
    uint64_t total = after_l1 + rt_clusters + blocks;
    uint64_t need_blocks = (total + kRefcountsPerBlock - 1) / kRefcountsPerBlock;
    uint64_t need_rt = clusters_for(need_blocks * 8);
    if (need_blocks == blocks && need_rt == rt_clusters) break;
    blocks = need_blocks;
    rt_clusters = need_rt;
  }
  uint64_t rt_start = after_l1, rb_start = rt_start + rt_clusters;
  uint64_t total = rb_start + blocks;
  std::vector<uint8_t> rt(rt_clusters * kCluster, 0), rb(blocks * kCluster, 0);
  for (uint64_t b = 0; b < blocks; b++) put_be(rt, b * 8, (rb_start + b) * kCluster, 8);
  for (uint64_t c = 0; c < total; c++) put_be(rb, c * 2, 1, 2);

  // Step 3: write it all after the data, the header last, then durable.
  auto header = header_cluster(disk_size, l1_entries, l1_start * kCluster, rt_start * kCluster,
                               rt_clusters, backing, backing_format);
  if (!header) return header.status();
  for (auto [bytes, cluster] : {std::pair{&l2_bytes, l2_start}, {&l1, l1_start}, {&rt, rt_start},
                                {&rb, rb_start}, {&*header, uint64_t{0}}})
    if (auto s = fsutil::pwrite_all(fd.get(), bytes->data(), bytes->size(), cluster * kCluster, path);
        !s)
      return s;
  if (::fdatasync(fd.get()) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("fdatasync", path));
  return std::optional<DeltaStats>(*delta);
}

}  // namespace kvmcdp
