// CRC-32C (Castagnoli), the checksum of every journal structure.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvmcdp {

// Extends `crc` (0 for a fresh checksum) over `n` bytes.  Uses the SSE4.2
// crc32 instruction when the CPU has it, a slicing table otherwise; both
// give the same value.
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t n);
inline uint32_t crc32c(const void* data, size_t n) {
  return crc32c_extend(0, data, n);
}

// The slicing-table path whatever the CPU: the reference the tests compare
// the hardware path with.
uint32_t crc32c_portable_for_test(const void* data, size_t n);

}  // namespace kvmcdp
