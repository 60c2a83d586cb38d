#include "journal/segment_list.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "base/fsutil.h"
#include "journal/segment_name.h"

namespace kvmcdp::journal {

std::string journal_dir(const std::string& store_dir) {
  return store_dir + "/journal";
}
std::string segment_path(const std::string& store_dir, uint64_t number) {
  return journal_dir(store_dir) + "/" + segment_file_name(number);
}
std::string index_path(const std::string& store_dir, uint64_t number) {
  return journal_dir(store_dir) + "/" + index_file_name(number);
}

Result<std::vector<uint64_t>> list_segments(const std::string& store_dir) {
  std::string dir = journal_dir(store_dir);
  DIR* d = ::opendir(dir.c_str());
  if (!d)
    return Status(errno == ENOENT ? ErrorKind::kNotFound : ErrorKind::kFailure,
                  fsutil::errno_message("open", dir));
  std::vector<uint64_t> out;
  while (auto* e = ::readdir(d))
    if (auto n = parse_segment_file_name(e->d_name)) out.push_back(*n);
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

Result<SegmentFrames> load_segment(const std::string& store_dir,
                                   uint64_t number) {
  SegmentFrames sf;
  sf.number = number;
  std::string seg = segment_path(store_dir, number);
  struct stat st;
  if (::stat(seg.c_str(), &st) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("stat", seg));
  sf.file_size = static_cast<uint64_t>(st.st_size);

  std::string idx = index_path(store_dir, number);
  auto bytes = fsutil::read_file(idx);
  if (bytes) {
    uint64_t seg_size = 0;
    auto e = decode_index(*bytes, number, &seg_size, &sf.frames);
    if (!e && seg_size != sf.file_size)
      e = "index describes " + std::to_string(seg_size) +
          " bytes but the segment has " + std::to_string(sf.file_size);
    if (!e) {
      // The header is small; reading it keeps stream id and version
      // checks on the same path whether or not there is an index.
      fsutil::Fd fd(::open(seg.c_str(), O_RDONLY | O_CLOEXEC));
      uint8_t hb[kSegmentHeaderSize];
      auto n = fd.valid() ? fsutil::pread_full(fd.get(), hb, sizeof hb, 0, seg)
                          : Result<size_t>(size_t{0});
      if (n && *n == sizeof hb && !decode_segment_header(hb, &sf.header) &&
          sf.header.segment == number) {
        sf.from_index = true;
        return sf;
      }
      e = "segment header unreadable";
    }
    sf.index_problem = idx + ": " + *e;
  } else if (bytes.status().kind() != ErrorKind::kNotFound) {
    sf.index_problem = bytes.status().message();
  }
  auto scan = scan_segment(seg, number, ScanDepth::kChecksums);
  if (!scan) return scan.status();
  sf.header = scan->header;
  sf.frames = std::move(scan->frames);
  sf.damage = std::move(scan->damage);
  return sf;
}

}  // namespace kvmcdp::journal
