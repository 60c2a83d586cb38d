// What the journal's image holds, block by block, as a SHA-256 of each
// 64 KiB block: the map a resync compares the filter's resent data with
// (resync_compare.h), so that blocks the journal already holds are not
// journaled a second time.
//
// 64 KiB is the filter's dirty-bitmap granularity: its resync records
// start on a block boundary and cover whole blocks (the disk's last block
// may be short).  The digest has to be cryptographic: the guest chooses
// the data, and a block it could make collide with the journal's would be
// a real change dropped without a trace.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace kvmcdp {

class BlockFingerprints {
 public:
  static constexpr uint64_t kBlockSize = 64 * 1024;
  using Digest = std::array<uint8_t, 32>;

  BlockFingerprints() = default;
  // Every block unknown.
  explicit BlockFingerprints(uint64_t disk_size);

  // The map of the raw image in `fd` (`path` for messages), `disk_size`
  // bytes.  Holes (SEEK_HOLE) are not read: they are the zero block.
  static Result<BlockFingerprints> of_image(int fd, const std::string& path,
                                            uint64_t disk_size);
  static Digest digest(const uint8_t* data, size_t len);

  uint64_t disk_size() const { return disk_size_; }
  uint64_t block_count() const { return digests_.size(); }
  uint64_t known_count() const { return known_count_; }
  void set(uint64_t block, const Digest& d);
  // Whether block `block` is known and holds exactly `data` (`len` bytes,
  // the whole block: shorter only for the disk's last block).
  bool matches(uint64_t block, const uint8_t* data, size_t len) const;
  // The blocks [offset, offset+length) touches are no longer known.
  void forget(uint64_t offset, uint64_t length);

 private:
  uint64_t disk_size_ = 0;
  std::vector<Digest> digests_;
  std::vector<bool> known_;
  uint64_t known_count_ = 0;
};

}  // namespace kvmcdp
