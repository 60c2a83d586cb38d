#include "store/run_state_file.h"

#include <signal.h>

#include <cerrno>

#include <fmt/format.h>

#include "base/fsutil.h"

namespace kvmcdp {

Result<nlohmann::json> read_run_state(const std::string& path, const std::string& absent) {
  auto bytes = fsutil::read_file(path);
  if (!bytes) return Status(ErrorKind::kNotFound, absent);
  auto j = nlohmann::json::parse(bytes->begin(), bytes->end(), nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return Status(ErrorKind::kDamaged, fmt::format("{} does not parse", path));
  return j;
}

Status write_run_state(const std::string& path, const nlohmann::json& j) {
  // Strings from a client (a store or stream name) may not be UTF-8:
  // written with U+FFFD in their place, never an exception.
  return fsutil::replace_file_atomic(
      path, j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

bool pid_alive(int pid) { return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM); }

}  // namespace kvmcdp
