#include "base/crash_point.h"

#include <unistd.h>

#include <cstdlib>

#include <fmt/format.h>

namespace kvmcdp {

void crash_point(const std::string& op, int step) {
  const char* env = std::getenv("KVMCDP_CRASH_AT_STEP");
  if (!env || !*env) return;
  std::string want = env;
  std::string here = fmt::format("{}:{}", op, step);
  if (want == here || want == std::to_string(step)) _exit(9);
}

}  // namespace kvmcdp
