#include "cli/cli.h"

#include <doctest/doctest.h>

namespace kvmcdp {

TEST_CASE("cli: exit codes are distinct per error kind") {
  CHECK(exit_code_for(ErrorKind::kFailure) == 1);
  CHECK(exit_code_for(ErrorKind::kUsage) == 2);
  CHECK(exit_code_for(ErrorKind::kQemu) == 3);
  CHECK(exit_code_for(ErrorKind::kDamaged) == 4);
  CHECK(exit_code_for(ErrorKind::kBusy) == 5);
  CHECK(exit_code_for(ErrorKind::kNotRecoverable) == 6);
  CHECK(exit_code_for(ErrorKind::kNotFound) == 7);
}

TEST_CASE("cli: suggestions for mistyped subcommands") {
  CHECK(suggest_command("qpm") == "qmp");
  CHECK(suggest_command("q") == "qmp");
  CHECK(suggest_command("completely-different") == "");
}

}  // namespace kvmcdp
