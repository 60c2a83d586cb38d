// One captured event of a protected disk, as kvmcdp holds it in memory:
// what the filter sent (include/kvmcdp/wire_format.h), minus framing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvmcdp/wire_format.h"

namespace kvmcdp {

using RecordType = wire::MsgType;  // only the filter -> kvmcdp record types

struct Record {
  uint64_t seq = 0;
  uint64_t time_ns = 0;
  RecordType type = RecordType::kWrite;
  uint16_t flags = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
  std::vector<uint8_t> data;  // kWrite: the bytes; kMark: the name
};

}  // namespace kvmcdp
