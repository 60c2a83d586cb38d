#include "store/run_state_file.h"

#include <unistd.h>

#include <string>

#include <doctest/doctest.h>

#include "base/fsutil.h"

namespace kvmcdp {

TEST_CASE("run-state file: a name that is not UTF-8 is written with U+FFFD, never an exception") {
  char tmpl[] = "/tmp/kvmcdp-runstate-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  std::string path = std::string(tmpl) + "/serve.json";
  // A client's store name as it came off the wire: a lone 0xff byte.
  nlohmann::json j = {{"pid", 1}, {"client", std::string("a\xff" "b")}};
  Status st = write_run_state(path, j);
  REQUIRE_MESSAGE(st.is_ok(), st.message());
  auto back = read_run_state(path, "absent");
  REQUIRE(back);
  CHECK((*back)["client"] == "a\xEF\xBF\xBD" "b");
  CHECK((*back)["pid"] == 1);
  unlink(path.c_str());
  rmdir(tmpl);
}

TEST_CASE("run-state file: missing is kNotFound with the caller's words, garbage is kDamaged") {
  char tmpl[] = "/tmp/kvmcdp-runstate-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  std::string path = std::string(tmpl) + "/protect.json";
  auto none = read_run_state(path, "protect is not running");
  REQUIRE_FALSE(none);
  CHECK(none.status().kind() == ErrorKind::kNotFound);
  CHECK(none.status().message() == "protect is not running");
  REQUIRE(fsutil::replace_file_atomic(path, "[1, 2]\n").is_ok());
  auto arr = read_run_state(path, "x");
  REQUIRE_FALSE(arr);
  CHECK(arr.status().kind() == ErrorKind::kDamaged);
  unlink(path.c_str());
  rmdir(tmpl);
}

}  // namespace kvmcdp
