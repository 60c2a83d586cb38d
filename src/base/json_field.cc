#include "base/json_field.h"

#include <fmt/format.h>

namespace kvmcdp::json_field {

using nlohmann::json;

namespace {

Status bad(std::string_view what, std::string_view key, std::string_view want) {
  return {ErrorKind::kFailure, fmt::format("malformed {}: \"{}\" is not {}", what, key, want)};
}

const json* find(const json& j, std::string_view key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(std::string(key));
  return it == j.end() ? nullptr : &*it;
}

}  // namespace

Result<json> parse_object(std::string_view text, std::string_view what) {
  bool too_deep = false;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t, json&) {
    if (depth > kMaxDepth) too_deep = true;
    return !too_deep;
  };
  json j;
  try {
    j = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false);
  } catch (const std::exception&) {
    // allow_exceptions=false still lets a few through (e.g. bad_alloc).
    return Status(ErrorKind::kFailure, fmt::format("malformed {}: not JSON", what));
  }
  if (too_deep)
    return Status(ErrorKind::kFailure,
                  fmt::format("malformed {}: nested deeper than {}", what, kMaxDepth));
  if (j.is_discarded() || !j.is_object())
    return Status(ErrorKind::kFailure, fmt::format("malformed {}: not a JSON object", what));
  return j;
}

Result<std::string> get_string(const json& j, std::string_view key, std::string_view what) {
  const json* v = find(j, key);
  if (!v || !v->is_string()) return bad(what, key, "a string");
  return v->get<std::string>();
}

Result<uint64_t> get_u64(const json& j, std::string_view key, std::string_view what) {
  const json* v = find(j, key);
  if (!v || !v->is_number_unsigned()) {
    // nlohmann stores a non-negative literal as unsigned; a negative or
    // fractional number lands here too.
    if (v && v->is_number_integer() && v->get<int64_t>() >= 0)
      return static_cast<uint64_t>(v->get<int64_t>());
    return bad(what, key, "a non-negative integer");
  }
  return v->get<uint64_t>();
}

Result<bool> get_bool(const json& j, std::string_view key, std::string_view what) {
  const json* v = find(j, key);
  if (!v || !v->is_boolean()) return bad(what, key, "true or false");
  return v->get<bool>();
}

Result<json> get_object(const json& j, std::string_view key, std::string_view what) {
  const json* v = find(j, key);
  if (!v || !v->is_object()) return bad(what, key, "an object");
  return *v;
}

}  // namespace kvmcdp::json_field
