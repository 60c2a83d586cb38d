// Byte-level codec of the journal format.  Every structure carries its own
// CRC so that a reader can tell "torn or flipped" from "valid", and every
// decoder checks sizes before it reads so hostile input cannot make it
// read out of bounds or allocate without limit.
#include "journal/journal_codec.h"

#include <zstd.h>

#include <cstring>

#include "base/crc32c.h"

namespace kvmcdp::journal {

Record RecordView::to_record() const {
  Record r;
  r.seq = seq;
  r.time_ns = time_ns;
  r.type = type;
  r.flags = flags;
  r.offset = offset;
  r.length = length;
  r.data.assign(data, data + data_len);
  return r;
}

void encode_segment_header(const SegmentHeader& h, uint8_t* out) {
  std::memset(out, 0, kSegmentHeaderSize);
  put32(out + 0, kSegmentMagic);
  put32(out + 4, kVersion);
  put64(out + 8, h.segment);
  put64(out + 16, h.stream_id);
  put64(out + 24, h.created_ns);
  put32(out + 60, crc32c(out, 60));
}

std::optional<std::string> decode_segment_header(const uint8_t* p,
                                                 SegmentHeader* out) {
  if (get32(p) != kSegmentMagic) return "bad segment magic";
  if (get32(p + 60) != crc32c(p, 60)) return "segment header checksum mismatch";
  // The version is checked after the CRC so that a flipped bit reads as
  // damage, and a real newer file reads as "unknown version".
  if (uint32_t v = get32(p + 4); v != kVersion)
    return "unknown journal format version " + std::to_string(v) +
           " (this kvmcdp reads version " + std::to_string(kVersion) + ")";
  out->segment = get64(p + 8);
  out->stream_id = get64(p + 16);
  out->created_ns = get64(p + 24);
  return std::nullopt;
}

void encode_frame_header(const FrameHeader& h, uint8_t* out) {
  std::memset(out, 0, kFrameHeaderSize);
  put32(out + 0, kFrameMagic);
  put32(out + 4, h.payload_len);
  put64(out + 8, h.first_seq);
  put64(out + 16, h.last_seq);
  put64(out + 24, h.first_ns);
  put64(out + 32, h.last_ns);
  put32(out + 40, h.count);
  put32(out + 44, h.raw_len);
  put32(out + 48, h.payload_crc);
  put32(out + 52, h.flags);
  put32(out + 60, crc32c(out, 60));
}

std::optional<std::string> decode_frame_header(const uint8_t* p,
                                               FrameHeader* out) {
  if (get32(p) != kFrameMagic) return "bad frame magic";
  if (get32(p + 60) != crc32c(p, 60)) return "frame header checksum mismatch";
  FrameHeader h;
  h.payload_len = get32(p + 4);
  h.first_seq = get64(p + 8);
  h.last_seq = get64(p + 16);
  h.first_ns = get64(p + 24);
  h.last_ns = get64(p + 32);
  h.count = get32(p + 40);
  h.raw_len = get32(p + 44);
  h.payload_crc = get32(p + 48);
  h.flags = get32(p + 52);
  if (h.count == 0) return "frame with no records";
  if (h.last_seq < h.first_seq) return "frame seq range reversed";
  if (h.raw_len > kMaxFrameRaw) return "frame raw size over limit";
  if (h.payload_len > ZSTD_compressBound(kMaxFrameRaw))
    return "frame payload size over limit";
  *out = h;
  return std::nullopt;
}

uint32_t frame_flag_for(RecordType t) {
  switch (t) {
    case RecordType::kGap: return kFrameHasGap;
    case RecordType::kResyncDone: return kFrameHasResyncDone;
    case RecordType::kMark: return kFrameHasMark;
    default: return 0;
  }
}

void serialize_record(const Record& r, std::vector<uint8_t>* buf) {
  size_t at = buf->size();
  buf->resize(at + kRecordHeaderSize + r.data.size());
  uint8_t* p = buf->data() + at;
  encode_record_header(r, p);
  if (!r.data.empty())
    std::memcpy(p + kRecordHeaderSize, r.data.data(), r.data.size());
}

void encode_record_header(const Record& r, uint8_t* p) {
  encode_record_header(view_of(r), p);
}

void encode_record_header(const RecordView& r, uint8_t* p) {
  put64(p + 0, r.seq);
  put64(p + 8, r.time_ns);
  put64(p + 16, r.offset);
  put64(p + 24, r.length);
  put16(p + 32, static_cast<uint16_t>(r.type));
  put16(p + 34, r.flags);
  put32(p + 36, r.data_len);
}

RecordView view_of(const Record& r) {
  return RecordView{r.seq,    r.time_ns, r.type,
                    r.flags,  r.offset,  r.length,
                    r.data.data(), static_cast<uint32_t>(r.data.size())};
}

RecordView view_of(const wire::MsgHeader& h, const uint8_t* payload) {
  return RecordView{h.seq,    h.time_ns, static_cast<RecordType>(h.type),
                    h.flags,  h.offset,  h.length,
                    payload,  h.payload_len};
}

std::optional<std::string> parse_records(
    const uint8_t* raw, size_t n,
    const std::function<void(const RecordView&)>& fn) {
  size_t at = 0;
  while (at < n) {
    if (n - at < kRecordHeaderSize) return "truncated record header";
    const uint8_t* p = raw + at;
    RecordView v;
    v.seq = get64(p);
    v.time_ns = get64(p + 8);
    v.offset = get64(p + 16);
    v.length = get64(p + 24);
    v.type = static_cast<RecordType>(get16(p + 32));
    v.flags = get16(p + 34);
    v.data_len = get32(p + 36);
    if (n - at - kRecordHeaderSize < v.data_len) return "truncated record data";
    if (v.type == RecordType::kWrite && v.data_len != v.length)
      return "write record data length differs from its length";
    v.data = p + kRecordHeaderSize;
    fn(v);
    at += kRecordHeaderSize + v.data_len;
  }
  return std::nullopt;
}

std::optional<std::string> parse_records(const uint8_t* raw, size_t n,
                                         std::vector<RecordView>* out) {
  out->clear();
  return parse_records(raw, n, [&](const RecordView& v) { out->push_back(v); });
}

std::optional<std::string> decode_payload(const FrameHeader& h,
                                          const uint8_t* payload,
                                          std::vector<uint8_t>* raw) {
  if (crc32c(payload, h.payload_len) != h.payload_crc)
    return "frame payload checksum mismatch";
  raw->resize(h.raw_len);
  size_t got = ZSTD_decompress(raw->data(), raw->size(), payload, h.payload_len);
  if (ZSTD_isError(got))
    return std::string("zstd: ") + ZSTD_getErrorName(got);
  if (got != h.raw_len) return "frame decompressed to the wrong size";
  return std::nullopt;
}

std::vector<uint8_t> encode_index(uint64_t segment, uint64_t seg_size,
                                  const std::vector<FrameInfo>& frames) {
  std::vector<uint8_t> b(kIndexHeaderSize + frames.size() * kIndexEntrySize + 4);
  uint8_t* p = b.data();
  put32(p, kIndexMagic);
  put32(p + 4, kVersion);
  put64(p + 8, segment);
  put64(p + 16, seg_size);
  put32(p + 24, static_cast<uint32_t>(frames.size()));
  p += kIndexHeaderSize;
  for (const auto& f : frames) {
    put64(p, f.offset);
    put32(p + 8, f.length);
    put32(p + 12, f.count);
    put64(p + 16, f.first_seq);
    put64(p + 24, f.last_seq);
    put64(p + 32, f.first_ns);
    put64(p + 40, f.last_ns);
    put32(p + 48, f.flags);
    p += kIndexEntrySize;
  }
  put32(p, crc32c(b.data(), b.size() - 4));
  return b;
}

std::optional<std::string> decode_index(const std::vector<uint8_t>& b,
                                        uint64_t segment, uint64_t* seg_size,
                                        std::vector<FrameInfo>* frames) {
  if (b.size() < kIndexHeaderSize + 4) return "index file too short";
  if (get32(b.data()) != kIndexMagic) return "bad index magic";
  if (get32(b.data() + b.size() - 4) != crc32c(b.data(), b.size() - 4))
    return "index checksum mismatch";
  if (uint32_t v = get32(b.data() + 4); v != kVersion)
    return "unknown index format version " + std::to_string(v);
  if (get64(b.data() + 8) != segment) return "index names another segment";
  uint32_t count = get32(b.data() + 24);
  if (b.size() != kIndexHeaderSize + uint64_t{count} * kIndexEntrySize + 4)
    return "index size does not match its entry count";
  *seg_size = get64(b.data() + 16);
  frames->clear();
  const uint8_t* p = b.data() + kIndexHeaderSize;
  uint64_t expect = kSegmentHeaderSize;
  for (uint32_t i = 0; i < count; i++, p += kIndexEntrySize) {
    FrameInfo f;
    f.segment = segment;
    f.offset = get64(p);
    f.length = get32(p + 8);
    f.count = get32(p + 12);
    f.first_seq = get64(p + 16);
    f.last_seq = get64(p + 24);
    f.first_ns = get64(p + 32);
    f.last_ns = get64(p + 40);
    f.flags = get32(p + 48);
    if (f.offset != expect || f.length < kFrameHeaderSize)
      return "index entries are not contiguous frames";
    expect += f.length;
    frames->push_back(f);
  }
  if (expect != *seg_size) return "index does not cover its segment";
  return std::nullopt;
}

}  // namespace kvmcdp::journal

namespace kvmcdp::journal {

std::optional<std::string> continuity_error(uint64_t prev, uint64_t seq,
                                            RecordType type, uint64_t offset) {
  if (type == RecordType::kGap) {
    if (offset != prev + 1 || seq < offset)
      return "gap record " + std::to_string(seq) + " announces missing seqs from " +
             std::to_string(offset) + " but the previous record is " +
             std::to_string(prev);
    return std::nullopt;
  }
  if (seq != prev + 1)
    return "seq " + std::to_string(seq) + " follows " + std::to_string(prev) +
           " without a gap record";
  return std::nullopt;
}

std::optional<std::string> check_frame_records(const FrameHeader& h,
                                               const uint8_t* raw, size_t n) {
  uint32_t count = 0;
  uint32_t flags = 0;
  uint64_t prev = 0, first = 0, first_ns = 0, last_ns = 0;
  std::optional<std::string> err;
  auto perr = parse_records(raw, n, [&](const RecordView& v) {
    if (err) return;
    if (count == 0) {
      first = v.seq;
      first_ns = v.time_ns;
    } else if (auto e = continuity_error(prev, v.seq, v.type, v.offset)) {
      err = *e;
    }
    prev = v.seq;
    last_ns = v.time_ns;
    flags |= frame_flag_for(v.type);
    count++;
  });
  if (perr) return perr;
  if (err) return err;
  if (count != h.count) return "frame record count differs from its header";
  if (first != h.first_seq || prev != h.last_seq)
    return "frame seq range differs from its header";
  if (first_ns != h.first_ns || last_ns != h.last_ns)
    return "frame time range differs from its header";
  if (flags != h.flags) return "frame flags differ from its records";
  return std::nullopt;
}

}  // namespace kvmcdp::journal
