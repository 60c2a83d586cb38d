// Typed reads of JSON that came from the network.  A peer chooses every
// byte of it, so a field of the wrong type, a missing field or a document
// nested deep enough to exhaust the stack must become an error Status
// naming the field, never an exception: nlohmann's value()/get<>() throw
// on a type mismatch, and an uncaught throw ends the whole server.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <stdexcept>
#include <utility>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace kvmcdp::json_field {

// Deeper than anything the protocol sends; bounds the recursion of
// dump() and of the code walking the document.
inline constexpr int kMaxDepth = 32;

// `text` as a JSON object; `what` names the message in the error
// ("the hello").
Result<nlohmann::json> parse_object(std::string_view text, std::string_view what);

// The field `key` of object `j`, which must be present and of the type.
Result<std::string> get_string(const nlohmann::json& j, std::string_view key,
                               std::string_view what);
Result<uint64_t> get_u64(const nlohmann::json& j, std::string_view key, std::string_view what);
Result<bool> get_bool(const nlohmann::json& j, std::string_view key, std::string_view what);
// An object-valued field.
Result<nlohmann::json> get_object(const nlohmann::json& j, std::string_view key,
                                  std::string_view what);

// For code that reads a whole document inside one try/catch: `v` as the
// integer type T, or std::out_of_range if it is not an integer or does
// not fit.  get<T>() would convert a float (undefined behaviour when out
// of T's range) and wrap a negative number into a huge unsigned one.
template <typename T>
T integer_as(const nlohmann::json& v, std::string_view key) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (std::in_range<T>(u)) return static_cast<T>(u);
  } else if (v.is_number_integer()) {
    int64_t i = v.get<int64_t>();
    if (std::in_range<T>(i)) return static_cast<T>(i);
  }
  throw std::out_of_range(std::string(key) + " is not an integer in range");
}

}  // namespace kvmcdp::json_field
