// Segment scanning.  A segment is only ever appended to, so damage is
// either a torn tail (crash during write) or corruption at rest; both look
// the same to a reader: the first frame that fails a check ends what can be
// read, and everything after it is reported as dropped.  Frames are read
// with pread into reused buffers so a scan allocates O(largest frame).
#include "journal/segment_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cassert>

#include "base/crc32c.h"
#include "journal/frame_cursor.h"
#include "base/fsutil.h"

namespace kvmcdp::journal {

std::string Damage::to_string() const {
  return path + ": damage at byte " + std::to_string(offset) + ": " + reason +
         " (" + std::to_string(bytes_dropped) + " bytes dropped)";
}

Result<SegmentScan> scan_segment(const std::string& path, uint64_t number,
                                 ScanDepth depth,
                                 const RecordCheck& on_record) {
  fsutil::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid())
    return Status(ErrorKind::kFailure, fsutil::errno_message("open", path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("stat", path));
  SegmentScan s;
  s.file_size = static_cast<uint64_t>(st.st_size);
  auto damage_at = [&](uint64_t off, std::string why) {
    s.damage = Damage{path, off, std::move(why), s.file_size - off};
    s.good_end = off;
  };

  uint8_t hb[kSegmentHeaderSize];
  auto n = fsutil::pread_full(fd.get(), hb, sizeof hb, 0, path);
  if (!n) return n.status();
  if (*n < sizeof hb) {
    damage_at(0, "truncated segment header");
    return s;
  }
  if (get32(hb) == kSegmentMagic && get32(hb + 60) == crc32c(hb, 60) &&
      get32(hb + 4) != kVersion)
    return Status(ErrorKind::kFailure,
                  path + ": unknown journal format version " +
                      std::to_string(get32(hb + 4)) + " (this kvmcdp reads " +
                      std::to_string(kVersion) + ")");
  if (auto e = decode_segment_header(hb, &s.header)) {
    damage_at(0, *e);
    return s;
  }
  if (s.header.segment != number) {
    damage_at(0, "segment header says segment " +
                     std::to_string(s.header.segment));
    return s;
  }

  std::vector<uint8_t> payload, raw;
  uint64_t off = kSegmentHeaderSize;
  while (off < s.file_size) {
    uint8_t fb[kFrameHeaderSize];
    const uint64_t avail = s.file_size - off;
    if (avail >= kFrameHeaderSize) {
      auto r = fsutil::pread_full(fd.get(), fb, sizeof fb, off, path);
      if (!r) return r.status();
    }
    FrameCheck fc = check_frame(fb, avail);
    if (fc.problem != FrameProblem::kNone) {
      damage_at(off, fc.detail);
      return s;
    }
    const FrameHeader& h = fc.header;
    payload.resize(h.payload_len);
    auto r = fsutil::pread_full(fd.get(), payload.data(), h.payload_len,
                                off + kFrameHeaderSize, path);
    if (!r) return r.status();
    if (depth == ScanDepth::kChecksums) {
      if (crc32c(payload.data(), h.payload_len) != h.payload_crc) {
        damage_at(off, "frame payload checksum mismatch");
        return s;
      }
    } else {
      auto e = decode_payload(h, payload.data(), &raw);
      if (!e) e = check_frame_records(h, raw.data(), raw.size());
      if (!e && on_record) {
        std::optional<std::string> bad;
        parse_records(raw.data(), raw.size(), [&](const RecordView& v) {
          if (!bad) bad = on_record(v);
        });
        e = bad;
      }
      if (e) {
        damage_at(off, *e);
        return s;
      }
    }
    s.frames.push_back(FrameInfo{number, off, static_cast<uint32_t>(fc.length),
                                 h.count, h.first_seq, h.last_seq, h.first_ns,
                                 h.last_ns, h.flags});
    off += fc.length;
  }
  s.good_end = off;
  return s;
}

Status read_frame(int fd, const std::string& path, const FrameInfo& f,
                  std::vector<uint8_t>* payload, std::vector<uint8_t>* raw) {
  auto damaged = [&](const std::string& why) {
    return Status(ErrorKind::kDamaged,
                  path + ": damage at byte " + std::to_string(f.offset) + ": " + why);
  };
  if (f.length < kFrameHeaderSize) return damaged("frame shorter than a header");
  payload->resize(f.length);
  auto n = fsutil::pread_full(fd, payload->data(), f.length, f.offset, path);
  if (!n) return n.status();
  if (*n != f.length) return damaged("frame cut short by end of file");
  FrameCheck fc = check_frame(payload->data(), payload->size());
  if (fc.problem == FrameProblem::kBadHeader) return damaged(fc.detail);
  const FrameHeader& h = fc.header;
  if (fc.problem != FrameProblem::kNone || fc.length != f.length ||
      h.first_seq != f.first_seq || h.last_seq != f.last_seq || h.count != f.count)
    return damaged("frame header disagrees with the index");
  assert(fc.length == payload->size());
  auto e = decode_payload(h, payload->data() + kFrameHeaderSize, raw);
  if (!e) e = check_frame_records(h, raw->data(), raw->size());
  if (e) return damaged(*e);
  return {};
}

}  // namespace kvmcdp::journal
