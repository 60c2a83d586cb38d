// Test hook for failures that are hard to provoke at one exact moment (a
// disk filling up between two writes): KVMCDP_FAIL_AT_STEP=<op>:<step>
// makes that step report the error a full disk would.  Like
// KVMCDP_CRASH_AT_STEP it is always compiled in and costs one getenv.
#pragma once

#include <string>

#include "base/status.h"

namespace kvmcdp {

// kFailure "write <path>: No space left on device" if the environment asks
// step `op`:`step` to fail, ok otherwise.
Status injected_failure(const std::string& op, const std::string& step, const std::string& path);

}  // namespace kvmcdp
