#include "base/fault_point.h"

#include <cerrno>
#include <cstdlib>

#include "base/fsutil.h"

namespace kvmcdp {

Status injected_failure(const std::string& op, const std::string& step, const std::string& path) {
  const char* env = std::getenv("KVMCDP_FAIL_AT_STEP");
  if (!env || op + ":" + step != env) return Status::ok();
  errno = ENOSPC;
  return {ErrorKind::kFailure, fsutil::errno_message("write", path)};
}

}  // namespace kvmcdp
