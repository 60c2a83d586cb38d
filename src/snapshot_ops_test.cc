// The parts of the snapshot operations that need no QEMU: which block job
// event ends which job, and which files check counts as the tree's own.
#include "snapshot_ops.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "journal_test_util.h"
#include "snapshot_qemu.h"

namespace kvmcdp {
namespace {

using json = nlohmann::json;

json event(const std::string& name, json data) {
  return {{"event", name}, {"data", std::move(data)}, {"timestamp", {{"seconds", 1}}}};
}

}  // namespace

TEST_CASE("snapshot: a block job's end is its own event, and a failure is an error") {
  const std::string job = "kvmcdp-merge-42";
  // Not about this job: another job, another event, nonsense.
  CHECK(!block_job_end(event("BLOCK_JOB_COMPLETED", {{"device", "kvmcdp-merge-7"}}), job,
                       "block-stream"));
  CHECK(!block_job_end(event("BLOCK_JOB_READY", {{"device", job}}), job, "block-stream"));
  CHECK(!block_job_end(event("JOB_STATUS_CHANGE", {{"id", job}, {"status", "concluded"}}), job,
                       "block-stream"));
  CHECK(!block_job_end(event("BLOCK_JOB_COMPLETED", {{"device", 42}}), job, "block-stream"));
  CHECK(!block_job_end(event("BLOCK_JOB_COMPLETED", nullptr), job, "block-stream"));
  CHECK(!block_job_end(json::array(), job, "block-stream"));
  // This job.
  auto ok = block_job_end(event("BLOCK_JOB_COMPLETED", {{"device", job}, {"len", 1}}), job,
                          "block-stream");
  REQUIRE(ok);
  CHECK(ok->is_ok());
  auto failed = block_job_end(
      event("BLOCK_JOB_COMPLETED", {{"device", job}, {"error", "Input/output error"}}), job,
      "block-stream");
  REQUIRE(failed);
  CHECK(failed->kind() == ErrorKind::kQemu);
  CHECK(failed->message() == "block-stream failed: Input/output error");
  auto cancelled = block_job_end(event("BLOCK_JOB_CANCELLED", {{"device", job}}), job,
                                 "block-stream");
  REQUIRE(cancelled);
  CHECK(cancelled->message() == "block-stream was cancelled");
}

TEST_CASE("snapshot check: node files past n9999 not in the tree are reported") {
  journal::testing::TempDir d;
  Tree t;
  t.dir = d.path;
  for (std::string f : {"n0007.qcow2", "n10000.qcow2", "notes.qcow2"})
    close(::open((d.path + "/" + f).c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
  auto lines = check_tree(t);
  std::sort(lines.begin(), lines.end());
  REQUIRE(lines.size() == 2);
  CHECK(lines[0] == "n0007.qcow2: file not in the tree");
  CHECK(lines[1] == "n10000.qcow2: file not in the tree");
}

}  // namespace kvmcdp
