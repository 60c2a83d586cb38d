// <store>/<base_image>.crc: a CRC32C of every 64 KiB block of the base
// copy, so a bit flip, a zeroed range or a cut in the base is found by
// verify and refused by restore instead of giving a wrong image.
//
// All integers little-endian:
//
//   offset  size  field
//        0     8  magic "KVCDPBCK"
//        8     4  version (1)
//       12     4  block_size (65536)
//       16     8  disk_size: the base's size in bytes
//       24     8  count = ceil(disk_size / block_size)
//       32  4*count  crc32c of each block (the last one may be short)
//   32+4*count  4  crc32c of every byte before it
//
// A block that is a hole reads as zeroes and has the zero block's CRC, so
// checking a hole costs nothing but a comparison.  The manifest names the
// scheme (base_checksums: "crc32c-64k") when it names a base that has the
// file; a manifest without the key is from a store made before the file
// existed, whose base is read unchecked.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "store/manifest.h"
#include "base/status.h"

namespace kvmcdp {

inline constexpr uint32_t kBaseBlock = 64 * 1024;
inline constexpr const char* kBaseChecksumScheme = "crc32c-64k";

struct BaseChecksums {
  uint32_t block_size = kBaseBlock;
  uint64_t disk_size = 0;
  std::vector<uint32_t> crcs;

  uint64_t block_len(uint64_t i) const {
    uint64_t b = i * block_size;
    return std::min<uint64_t>(block_size, disk_size - b);
  }
};

std::string base_checksums_path(const std::string& store_dir, const std::string& base_image);

std::string encode_base_checksums(const BaseChecksums& c);
// kDamaged for anything but an intact file of this format.
Result<BaseChecksums> decode_base_checksums(const std::vector<uint8_t>& bytes,
                                            const std::string& what);

// The CRC32C of `n` zero bytes (memoised for the block size).
uint32_t zero_block_crc(uint64_t n);

// Checksums of the file `path`, which must hold exactly `disk_size` bytes;
// holes are not read.
Result<BaseChecksums> compute_base_checksums(const std::string& path, uint64_t disk_size);

// Computes the checksums of <store>/<base_image> and writes its .crc file
// (atomically), then records the scheme in `m` (the caller writes the
// manifest, which commits both).
Status write_base_checksums(const std::string& store_dir, Manifest& m);

// The checksums the manifest says the base has: nullopt for a store made
// before checksums (no key), kDamaged when the file is missing or bad or
// does not describe disk_size, kFailure for a scheme this kvmcdp does not
// know.
Result<std::optional<BaseChecksums>> load_base_checksums(const std::string& store_dir,
                                                         const Manifest& m);

// Reads the base through its checksums, a block at a time.
class BaseBlockReader {
 public:
  BaseBlockReader(int fd, std::string path, const BaseChecksums* sums, uint64_t disk_size)
      : fd_(fd), path_(std::move(path)), sums_(sums), size_(disk_size) {}

  // Reads block `i` into `buf` (resized to the block's length) and checks
  // it; `*hole` is set when the block is a hole of the file (buf then
  // holds zeroes only if `fill_holes`).  kDamaged names the byte offset.
  Status read_block(uint64_t i, std::vector<uint8_t>* buf, bool* hole, bool fill_holes);

  uint64_t block_count() const { return (size_ + kBaseBlock - 1) / kBaseBlock; }

 private:
  bool in_hole(uint64_t b, uint64_t e);
  int fd_;
  std::string path_;
  const BaseChecksums* sums_;
  uint64_t size_;
  uint64_t data_begin_ = 0, data_end_ = 0;  // the last data extent SEEK_DATA found
  bool no_more_data_ = false;
  uint64_t queried_from_ = UINT64_MAX;
};

// Damage of the base or its checksums (every such status this file
// gives starts "the base copy"), as opposed to damage in the journal.
bool is_base_damage(const Status& s);

// A `protect --spool` directory: its base goes to the server and is
// deleted here.
bool is_spool(const Manifest& m);

// For journal verify: every block of the base checked.  `bad_blocks` and
// the offset of the first one.
struct BaseCheck {
  bool checked = false;     // false: the store predates checksums
  uint64_t blocks = 0;
  uint64_t bad_blocks = 0;
  uint64_t first_bad_offset = 0;
  std::string problem;      // empty: the base is intact
};
Result<BaseCheck> check_base(const std::string& store_dir, const Manifest& m);

}  // namespace kvmcdp
