// Encoding and decoding of the journal's on-disk structures
// (include/kvmcdp/journal_format.h): segment header, frame header,
// serialized records, index files.  Decoders never trust their input: they
// return an error string saying what is wrong instead of a value.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "kvmcdp/journal_format.h"
#include "journal/record.h"

namespace kvmcdp::journal {

struct SegmentHeader {
  uint64_t segment = 0;
  uint64_t stream_id = 0;
  uint64_t created_ns = 0;
};

struct FrameHeader {
  uint32_t payload_len = 0;
  uint64_t first_seq = 0, last_seq = 0;
  uint64_t first_ns = 0, last_ns = 0;
  uint32_t count = 0;
  uint32_t raw_len = 0;
  uint32_t payload_crc = 0;
  uint32_t flags = 0;
};

// Where a frame is and what it holds: an index entry, or what a scan found.
struct FrameInfo {
  uint64_t segment = 0;
  uint64_t offset = 0;  // of the frame header in the segment file
  uint32_t length = 0;  // header + payload
  uint32_t count = 0;
  uint64_t first_seq = 0, last_seq = 0;
  uint64_t first_ns = 0, last_ns = 0;
  uint32_t flags = 0;
  bool operator==(const FrameInfo&) const = default;
};

// A record inside a decompressed frame; `data` points into that buffer.
struct RecordView {
  uint64_t seq = 0;
  uint64_t time_ns = 0;
  RecordType type = RecordType::kWrite;
  uint16_t flags = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
  const uint8_t* data = nullptr;
  uint32_t data_len = 0;
  Record to_record() const;
};

void encode_segment_header(const SegmentHeader& h, uint8_t out[kSegmentHeaderSize]);
// Error strings name the field ("bad magic", "unknown format version 7").
std::optional<std::string> decode_segment_header(const uint8_t* p,
                                                 SegmentHeader* out);

void encode_frame_header(const FrameHeader& h, uint8_t out[kFrameHeaderSize]);
std::optional<std::string> decode_frame_header(const uint8_t* p,
                                               FrameHeader* out);

// Writes the 40-byte record header of `r` (its data follows it).
void encode_record_header(const Record& r, uint8_t out[kRecordHeaderSize]);
void encode_record_header(const RecordView& r, uint8_t out[kRecordHeaderSize]);
// Views that borrow the data of an owning record, or of a stream message
// still in the receive buffer (so it is copied once, into the frame).
RecordView view_of(const Record& r);
RecordView view_of(const wire::MsgHeader& h, const uint8_t* payload);
// Appends the 40-byte record header and the record's data to `buf`.
void serialize_record(const Record& r, std::vector<uint8_t>* buf);
inline size_t serialized_size(const Record& r) {
  return kRecordHeaderSize + r.data.size();
}
uint32_t frame_flag_for(RecordType t);

// Calls `fn` for each record in a decompressed frame, in order.  Returns an
// error if the bytes do not parse exactly into records.
std::optional<std::string> parse_records(
    const uint8_t* raw, size_t n,
    const std::function<void(const RecordView&)>& fn);
// The same, collected.
std::optional<std::string> parse_records(const uint8_t* raw, size_t n,
                                         std::vector<RecordView>* out);

// Checks the payload CRC and decompresses it into `raw` (resized to
// raw_len).  Errors say which check failed.
std::optional<std::string> decode_payload(const FrameHeader& h,
                                          const uint8_t* payload,
                                          std::vector<uint8_t>* raw);

std::vector<uint8_t> encode_index(uint64_t segment, uint64_t seg_size,
                                  const std::vector<FrameInfo>& frames);
std::optional<std::string> decode_index(const std::vector<uint8_t>& bytes,
                                        uint64_t segment, uint64_t* seg_size,
                                        std::vector<FrameInfo>* frames);

}  // namespace kvmcdp::journal

namespace kvmcdp::journal {

// The journal's one continuity rule: each record's seq is prev + 1, except
// a kGap record, which announces that seqs [offset, seq) are missing and
// so must have offset == prev + 1 and seq >= offset.  Returns why `next`
// may not follow a record with seq `prev`, or nullopt if it may.
std::optional<std::string> continuity_error(uint64_t prev, uint64_t seq,
                                            RecordType type, uint64_t offset);

// Checks a decompressed frame against its header: record count, first and
// last seq and time, flags, and continuity inside the frame.
std::optional<std::string> check_frame_records(const FrameHeader& h,
                                               const uint8_t* raw, size_t n);

}  // namespace kvmcdp::journal
