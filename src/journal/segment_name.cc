#include "journal/segment_name.h"

#include <cstdio>

#include "kvmcdp/journal_format.h"

namespace kvmcdp::journal {
namespace {

std::string make_name(uint64_t n, const char* suffix) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%0*llu%s", kSegmentNameDigits,
                static_cast<unsigned long long>(n), suffix);
  return buf;
}

std::optional<uint64_t> parse_name(std::string_view name,
                                   std::string_view suffix) {
  if (name.size() != kSegmentNameDigits + suffix.size()) return std::nullopt;
  if (name.substr(kSegmentNameDigits) != suffix) return std::nullopt;
  uint64_t n = 0;
  for (int i = 0; i < kSegmentNameDigits; i++) {
    char c = name[i];
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  if (n == 0) return std::nullopt;  // numbering starts at 1
  return n;
}

}  // namespace

std::string segment_file_name(uint64_t number) {
  return make_name(number, kSegmentSuffix);
}
std::string index_file_name(uint64_t number) {
  return make_name(number, kIndexSuffix);
}
std::optional<uint64_t> parse_segment_file_name(std::string_view name) {
  return parse_name(name, kSegmentSuffix);
}
std::optional<uint64_t> parse_index_file_name(std::string_view name) {
  return parse_name(name, kIndexSuffix);
}

}  // namespace kvmcdp::journal
