// Running the command line in-process from a unit test, its standard
// output and standard error kept.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "cli/cli.h"
#include "store/journal_test_util.h"

namespace kvmcdp::cli_testing {

struct CliRun {
  int code = 0;
  std::string out, err;
};

// The command as `kvmcdp ARGS...` would run it; `scratch` holds the
// captured output files.
inline CliRun cli(std::vector<std::string> args, const std::string& scratch) {
  args.insert(args.begin(), "kvmcdp");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  std::string out_path = scratch + "/cli-stdout", err_path = scratch + "/cli-stderr";
  std::fflush(stdout);
  std::fflush(stderr);
  int saved_out = ::dup(1), saved_err = ::dup(2);
  int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  REQUIRE(out >= 0);
  REQUIRE(err >= 0);
  ::dup2(out, 1);
  ::dup2(err, 2);
  ::close(out);
  ::close(err);
  CliRun r;
  r.code = run_cli(int(argv.size()), argv.data());
  std::fflush(stdout);
  std::fflush(stderr);
  ::dup2(saved_out, 1);
  ::dup2(saved_err, 2);
  ::close(saved_out);
  ::close(saved_err);
  auto o = journal::testing::read_bytes(out_path), e = journal::testing::read_bytes(err_path);
  r.out.assign(o.begin(), o.end());
  r.err.assign(e.begin(), e.end());
  return r;
}

}  // namespace kvmcdp::cli_testing
