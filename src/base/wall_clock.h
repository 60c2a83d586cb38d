// Wall-clock time as the journal stamps records and manifests: ns since
// the epoch (CLOCK_REALTIME).
#pragma once

#include <chrono>
#include <cstdint>

namespace kvmcdp {

inline uint64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace kvmcdp
