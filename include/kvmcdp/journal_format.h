// The on-disk format of a kvmcdp store's write journal.  Prose
// specification with a worked example: man/kvmcdp-journal.5.
//
// Store layout (the prose is in man/kvmcdp-journal.5):
//   <store>/manifest.json          see src/store/manifest.h
//   <store>/lock                   flock()ed by the one writer (src/store/store_lock.h)
//   <store>/readers.lock           shared by readers, exclusive for prune (src/store/store_readers.h)
//   <store>/base.raw               sparse raw copy of the disk (base-F.raw after a fold)
//   <store>/base.raw.crc           its block checksums, see src/store/base_checksums.h
//   <store>/protect.json           the running protect's state (src/store/protect_state.h)
//   <store>/verify.json            what the last journal verify found (src/store/verify_record.h)
//   <store>/serve.json             a backup server's state of the store (src/remote/serve_state.h)
//   <store>/fold.json              a fold in progress (src/build/journal_fold.h)
//   <store>/tree/                  nodes built by kvmcdp build (man/kvmcdp-tree.5)
//   <store>/journal/NNNNNNNNNNNN.seg   segments, 12 decimal digits, from 1
//   <store>/journal/NNNNNNNNNNNN.idx   frame index of a closed segment
//
// All integers are little-endian.  Checksums are CRC-32C (Castagnoli).
//
// Segment file = segment header, then frames back to back, nothing else.
//
// Segment header (64 bytes):
//   offset size field
//        0    4 magic        0x534a434b ("KCJS" as bytes)
//        4    4 version      kVersion
//        8    8 segment      the number in the file name
//       16    8 stream_id    the filter instance the records came from
//       24    8 created_ns   CLOCK_REALTIME when the segment was opened
//       32   28 reserved     zero
//       60    4 crc          CRC-32C of bytes 0..59
//
// Frame = frame header + `payload_len` bytes: one zstd frame whose
// decompressed content is `raw_len` bytes of serialized records.
//
// Frame header (64 bytes):
//        0    4 magic        0x464a434b ("KCJF")
//        4    4 payload_len  compressed bytes after this header
//        8    8 first_seq    seq of the first record in the frame
//       16    8 last_seq     seq of the last record
//       24    8 first_ns     time_ns of the first record
//       32    8 last_ns      time_ns of the last record
//       40    4 count        number of records (>= 1)
//       44    4 raw_len      decompressed size of the payload
//       48    4 payload_crc  CRC-32C of the payload_len compressed bytes
//       52    4 flags        kFrameHas* bits: which special records are in
//                            it, so ranges are found without decompressing
//       56    4 reserved     zero
//       60    4 crc          CRC-32C of bytes 0..59
//
// Serialized record (40 bytes, then data_len bytes):
//        0    8 seq
//        8    8 time_ns
//       16    8 offset       byte offset on the disk (kGap: first missing seq)
//       24    8 length       bytes of the disk affected
//       32    2 type         wire::MsgType
//       34    2 flags        wire::MsgFlag bits
//       36    4 data_len     kWrite: == length; kMark: name bytes; else 0
//
// A kWrite with kFlagResync may hold less than the filter resent, down to
// length 0 (it then writes nothing): protect continuing a stream journals
// only the resent 64 KiB blocks that differ from the journal's image
// (src/capture/resync_compare.h).
//
// Index file (written once, when its segment is closed):
//   header (32 bytes):
//        0    4 magic        0x494a434b ("KCJI")
//        4    4 version      kVersion
//        8    8 segment
//       16    8 seg_size     size of the segment file it describes
//       24    4 count        number of entries
//       28    4 reserved     zero
//   count entries (56 bytes each), one per frame in file order:
//        0    8 offset       of the frame header in the segment
//        8    4 length       frame header + payload
//       12    4 count        records
//       16    8 first_seq
//       24    8 last_seq
//       32    8 first_ns
//       40    8 last_ns
//       48    4 flags        the frame's flags
//       52    4 reserved     zero
//   then a 4-byte CRC-32C of all bytes before it.
// An index that disagrees with its segment (size, CRC) is ignored and the
// segment is scanned instead; verify reports the disagreement.
#pragma once

#include <cstdint>
#include <cstring>

namespace kvmcdp::journal {

inline constexpr uint32_t kSegmentMagic = 0x534a434b;  // "KCJS"
inline constexpr uint32_t kFrameMagic = 0x464a434b;    // "KCJF"
inline constexpr uint32_t kIndexMagic = 0x494a434b;    // "KCJI"
inline constexpr uint32_t kVersion = 1;

inline constexpr uint32_t kSegmentHeaderSize = 64;
inline constexpr uint32_t kFrameHeaderSize = 64;
inline constexpr uint32_t kRecordHeaderSize = 40;
inline constexpr uint32_t kIndexHeaderSize = 32;
inline constexpr uint32_t kIndexEntrySize = 56;

// A frame larger than this is damage, not data: it bounds what a reader
// allocates for one untrusted header.
inline constexpr uint32_t kMaxFrameRaw = 64u << 20;

inline constexpr int kSegmentNameDigits = 12;
inline constexpr const char* kSegmentSuffix = ".seg";
inline constexpr const char* kIndexSuffix = ".idx";

enum FrameFlag : uint32_t {
  kFrameHasGap = 1u << 0,
  kFrameHasResyncDone = 1u << 1,
  kFrameHasMark = 1u << 2,
};

// Little-endian field access on unaligned bytes.  x86 and aarch64 are
// little-endian; a big-endian port would swap here and nowhere else.
inline void put16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
inline void put32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline void put64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
inline uint16_t get16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t get32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t get64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

}  // namespace kvmcdp::journal
