// The one main() for every doctest binary of the project.
//
// ctest runs each test case by name (--test-case=NAME).  A name that the
// filter cannot match (a ';' splits it in CMake's lists; doctest reads ','
// as "or") ran nothing and passed; such a run fails here instead.
//
// --qemu-line=LINE (ctest passes it to the integration tests, once per
// QEMU line) sets KVMCDP_QEMU_LINE: the harness then starts that line's
// patched QEMU (tests/harness/qemu_process.cc).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

int g_matched = -1;  // test cases that passed the filters; -1: no test run

struct MatchCounter : doctest::IReporter {
  explicit MatchCounter(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats& s) override {
    g_matched = static_cast<int>(s.numTestCasesPassingFilters);
  }
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

REGISTER_LISTENER("match_counter", 1, MatchCounter);

bool names_test_cases(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strncmp(argv[i], "--test-case=", 12) || !std::strncmp(argv[i], "-tc=", 4))
      return true;
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strncmp(argv[i], "--qemu-line=", 12)) setenv("KVMCDP_QEMU_LINE", argv[i] + 12, 1);
  doctest::Context ctx(argc, argv);
  int r = ctx.run();
  if (ctx.shouldExit()) return r;
  if (g_matched == 0 && names_test_cases(argc, argv)) {
    std::fprintf(stderr, "error: no test case matches the --test-case filter: nothing ran\n");
    return 1;
  }
  return r;
}
