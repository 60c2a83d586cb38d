// Segment and index file names: a fixed-width decimal number, so that a
// directory listing sorts in journal order, and a parser that is the exact
// inverse (it accepts only what segment_file_name produces).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kvmcdp::journal {

std::string segment_file_name(uint64_t number);  // "000000000042.seg"
std::string index_file_name(uint64_t number);    // "000000000042.idx"
// 42 for "000000000042.seg"; nullopt for anything else (wrong width, sign,
// suffix, number 0, ...).
std::optional<uint64_t> parse_segment_file_name(std::string_view name);
std::optional<uint64_t> parse_index_file_name(std::string_view name);

// The largest number that fits the width.
inline constexpr uint64_t kMaxSegmentNumber = 999999999999ull;

}  // namespace kvmcdp::journal
