// manifest.json as read from a store or from a client: fields of the
// wrong kind are damage, never a guess.
#include "store/manifest.h"

#include <doctest/doctest.h>

namespace kvmcdp {

TEST_CASE("manifest: a number that is not a non-negative integer is damage") {
  // Found by tests/fuzz/manifest_fuzz.cc: get<uint64_t>() converted the
  // float, undefined behaviour out of range (1e30 read as some size).
  auto with = [](const std::string& field, const std::string& value) {
    return manifest_from_json(R"({"format_version": 1, "stream_id": "00c0ffee00c0ffee",
      "base_image": "base.raw", "disk_size": 4096, )" +
                                  ("\"" + field + "\": " + value + "}"),
                              "test");
  };
  CHECK(with("node_name", "\"drive0\""));
  for (const char* field : {"created_time_ns", "base_complete_seq", "folded_seq"}) {
    CAPTURE(field);
    CHECK(with(field, "7"));
    auto big = with(field, "1e30");
    CHECK(big.status().kind() == ErrorKind::kDamaged);
    CHECK_FALSE(with(field, "-1"));
    CHECK_FALSE(with(field, "1.5"));
  }
  auto size = manifest_from_json(R"({"format_version": 1, "stream_id": "00c0ffee00c0ffee",
      "base_image": "base.raw", "disk_size": 1.8e19})",
                                 "test");
  CHECK(size.status().kind() == ErrorKind::kDamaged);
  CHECK_FALSE(manifest_from_json(R"({"format_version": 1, "stream_id": "1",
      "base_image": "base.raw", "disk_size": -4096})",
                                 "test"));
}

}  // namespace kvmcdp
