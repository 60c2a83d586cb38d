#include "base/json_field.h"

#include <string>

#include <doctest/doctest.h>

namespace kvmcdp {

using nlohmann::json;

TEST_CASE("json field: wrong types are errors naming the field, not exceptions") {
  auto j = json_field::parse_object(R"({"proof":123,"time_ns":"x","n":5,"neg":-1,"f":1.5,)"
                                    R"("ok":true,"s":"v","o":{}})",
                                    "auth");
  REQUIRE(j);
  auto proof = json_field::get_string(*j, "proof", "auth");
  REQUIRE_FALSE(proof);
  CHECK(proof.status().message() == "malformed auth: \"proof\" is not a string");
  CHECK_FALSE(json_field::get_u64(*j, "time_ns", "base done"));
  CHECK_FALSE(json_field::get_u64(*j, "neg", "x"));
  CHECK_FALSE(json_field::get_u64(*j, "f", "x"));
  CHECK_FALSE(json_field::get_u64(*j, "missing", "x"));
  CHECK_FALSE(json_field::get_bool(*j, "n", "x"));
  CHECK_FALSE(json_field::get_object(*j, "s", "x"));
  CHECK(*json_field::get_u64(*j, "n", "x") == 5);
  CHECK(*json_field::get_bool(*j, "ok", "x"));
  CHECK(*json_field::get_string(*j, "s", "x") == "v");
  CHECK(json_field::get_object(*j, "o", "x"));
}

TEST_CASE("json field: only a JSON object of bounded depth parses") {
  for (const char* bad : {"", "nul", "[1]", "\"s\"", "{\"a\":", "123"})
    CHECK_FALSE(json_field::parse_object(bad, "hello"));
  std::string deep = "{\"a\":" + std::string(10000, '[') + std::string(10000, ']') + "}";
  auto d = json_field::parse_object(deep, "manifest");
  REQUIRE_FALSE(d);
  CHECK(d.status().message().find("nested deeper") != std::string::npos);
  std::string ok = "{\"a\":" + std::string(10, '[') + std::string(10, ']') + "}";
  CHECK(json_field::parse_object(ok, "manifest"));
}

}  // namespace kvmcdp
