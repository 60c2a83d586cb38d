#include "store/store_lock.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include <doctest/doctest.h>

#include "store/journal_test_util.h"
#include "store/protect_state.h"

namespace kvmcdp {
namespace {

using journal::testing::TempDir;

bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

}  // namespace

TEST_CASE("store lock: busy while held, and once removed the next holder makes a fresh file") {
  TempDir d;
  auto first = StoreLock::acquire(d.path);
  REQUIRE(first);
  CHECK(first->created());
  auto second = StoreLock::acquire(d.path);
  REQUIRE(!second);
  CHECK(second.status().kind() == ErrorKind::kBusy);
  CHECK(second.status().message().find("pid " + std::to_string(getpid())) != std::string::npos);
  first->remove();
  CHECK(!exists(d.path + "/lock"));
  auto third = StoreLock::acquire(d.path);
  REQUIRE(third);
  CHECK(third->created());
  auto missing = StoreLock::acquire(d.path + "/nope");
  REQUIRE(!missing);
  CHECK(missing.status().kind() == ErrorKind::kNotFound);
}

TEST_CASE("stream registry: the owner is found while registered, gone after") {
  TempDir d;
  setenv("KVMCDP_RUN_DIR", d.path.c_str(), 1);
  CHECK(stream_owner(0x1234).status().kind() == ErrorKind::kNotFound);
  REQUIRE(register_stream(0x1234, "/srv/store-a"));
  auto owner = stream_owner(0x1234);
  REQUIRE(owner);
  CHECK(owner->store == "/srv/store-a");
  CHECK(owner->pid == getpid());
  CHECK(owner->running);
  unregister_stream(0x1234);
  CHECK(!stream_owner(0x1234));
  unsetenv("KVMCDP_RUN_DIR");
}

}  // namespace kvmcdp
