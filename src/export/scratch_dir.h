// The scratch folder of one export, mount or recover (the point's fill
// file, a write overlay, sockets): under $TMPDIR (default /var/tmp),
// named kvmcdp-<kind>-XXXXXX, removed when the command ends.  It names
// its owner (pid and start time), so that the folders of a process that
// was killed -- which can hold up to the journal's changed bytes -- are
// removed by the next command of that kind.  A folder with a file
// system mounted in it (a killed mount's FUSE export) is left to
// `kvmcdp umount`.
#pragma once

#include <string>

#include "base/status.h"

namespace kvmcdp {

class ScratchDir {
 public:
  static Result<ScratchDir> create(const std::string& kind);
  ScratchDir(ScratchDir&& o) noexcept : path_(std::move(o.path_)) { o.path_.clear(); }
  ScratchDir& operator=(ScratchDir&&) = delete;
  ~ScratchDir();
  const std::string& path() const { return path_; }

 private:
  explicit ScratchDir(std::string p) : path_(std::move(p)) {}
  std::string path_;
};

}  // namespace kvmcdp
