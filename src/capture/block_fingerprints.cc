#include "capture/block_fingerprints.h"

#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "base/fsutil.h"

namespace kvmcdp {

BlockFingerprints::BlockFingerprints(uint64_t disk_size)
    : disk_size_(disk_size),
      digests_((disk_size + kBlockSize - 1) / kBlockSize),
      known_(digests_.size(), false) {}

BlockFingerprints::Digest BlockFingerprints::digest(const uint8_t* data, size_t len) {
  Digest d{};
  unsigned int n = 0;
  // One-shot EVP: SHA-256 through OpenSSL's provider (hardware SHA where
  // the CPU has it).  It fails only when out of memory.
  if (EVP_Digest(data, len, d.data(), &n, EVP_sha256(), nullptr) != 1 || n != d.size()) abort();
  return d;
}

Result<BlockFingerprints> BlockFingerprints::of_image(int fd, const std::string& path,
                                                      uint64_t disk_size) {
  BlockFingerprints map(disk_size);
  std::vector<uint8_t> buf(kBlockSize);
  const std::vector<uint8_t> zeroes(kBlockSize, 0);
  const Digest zero_full = digest(zeroes.data(), kBlockSize);
  // Where the next data begins: blocks wholly before it are a hole.
  uint64_t data_at = 0;
  for (uint64_t b = 0; b < map.block_count(); b++) {
    uint64_t off = b * kBlockSize;
    size_t len = size_t(std::min<uint64_t>(kBlockSize, disk_size - off));
    if (data_at < off + len) {
      off_t d = ::lseek(fd, off_t(off), SEEK_DATA);
      if (d < 0 && errno != ENXIO)
        return Status(ErrorKind::kFailure, fsutil::errno_message("seek", path));
      data_at = d < 0 ? disk_size : uint64_t(d);
    }
    if (data_at >= off + len) {
      map.set(b, len == kBlockSize ? zero_full : digest(zeroes.data(), len));
      continue;
    }
    auto got = fsutil::pread_full(fd, buf.data(), len, off, path);
    if (!got) return got.status();
    if (*got != len)
      return Status(ErrorKind::kFailure, path + ": shorter than the disk");
    map.set(b, digest(buf.data(), len));
  }
  return map;
}

void BlockFingerprints::set(uint64_t block, const Digest& d) {
  if (block >= digests_.size()) return;
  digests_[block] = d;
  if (!known_[block]) known_count_++;
  known_[block] = true;
}

bool BlockFingerprints::matches(uint64_t block, const uint8_t* data, size_t len) const {
  if (block >= digests_.size() || !known_[block]) return false;
  uint64_t off = block * kBlockSize;
  if (len != std::min<uint64_t>(kBlockSize, disk_size_ - off)) return false;
  return digest(data, len) == digests_[block];
}

void BlockFingerprints::forget(uint64_t offset, uint64_t length) {
  if (length == 0 || offset >= disk_size_) return;
  uint64_t first = offset / kBlockSize;
  uint64_t last = std::min<uint64_t>(digests_.size() - 1, (offset + length - 1) / kBlockSize);
  if (offset + length < offset) last = digests_.size() - 1;  // wrapped: to the end
  for (uint64_t b = first; b <= last; b++) {
    if (known_[b]) known_count_--;
    known_[b] = false;
  }
}

}  // namespace kvmcdp
