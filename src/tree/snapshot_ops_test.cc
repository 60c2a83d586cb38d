// The parts of the snapshot operations that need no running QEMU: which
// block job event ends which job, repair waiting for its own job (a fake
// QMP peer, real qcow2 images), and which files check counts as the
// tree's own.
#include "tree/snapshot_ops.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "store/journal_test_util.h"
#include "qemu/qmp_test_util.h"
#include "qemu/snapshot_qemu.h"
#include "qemu/subprocess.h"

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

// A merge killed while its block-stream ran: repair asks the VM, finds the
// job running and waits for it.  Another job ends first; then this one
// fails.  The child's header was never switched, so the merge is rolled
// back, and the failure is the command's error, not a "rolled back" note.
TEST_CASE("snapshot repair: waits for its own block job and reports that it failed") {
  journal::testing::TempDir d;
  REQUIRE(run_process({qemu_img_binary(), "create", "-q", "-f", "qcow2", d.path + "/base.qcow2",
                       "1M"}));
  REQUIRE(create_overlay(d.path + "/n0001.qcow2", "base.qcow2", "qcow2", 1 << 20));
  REQUIRE(create_overlay(d.path + "/n0002.qcow2", "n0001.qcow2", "qcow2", 1 << 20));
  Tree t;
  t.dir = d.path;
  t.nodes = {{"s0", "base.qcow2", "qcow2", "", 1, NodeState::kLive, std::nullopt},
             {"s1", "n0001.qcow2", "qcow2", "s0", 2, NodeState::kLive, std::nullopt},
             {"@n0002", "n0002.qcow2", "qcow2", "s1", 3, NodeState::kLive, std::nullopt}};
  t.active = "@n0002";
  t.next_id = 3;
  const std::string job = "kvmcdp-merge-1";
  t.intent = TreeIntent{IntentOp::kMerge, {{"node", "s1"}, {"child", "@n0002"}, {"parent", "s0"},
                                           {"online", true}, {"job", job}}};
  REQUIRE(save_tree(t));

  using namespace qmp_testing;
  FakePeer peer([&](int fd) {
    handshake(fd);
    json cmd = json::parse(hear_line(fd));
    CHECK(cmd["execute"] == "query-block-jobs");
    say(fd, json({{"return", json::array({{{"device", job}, {"type", "stream"}}})},
                  {"id", cmd["id"]}}).dump() + "\n");
    say(fd, json({{"event", "BLOCK_JOB_COMPLETED"},
                  {"data", {{"device", "kvmcdp-merge-7"}, {"type", "stream"}}}}).dump() + "\n");
    say(fd, json({{"event", "BLOCK_JOB_COMPLETED"},
                  {"data", {{"device", job}, {"type", "stream"}, {"error", "Input/output error"}}}})
                .dump() + "\n");
    while (!hear_line(fd).empty()) {
    }
  });
  auto qmp = QmpClient::connect(peer.path(), Millis(5000));
  REQUIRE(qmp);
  OpLog log;
  Status st = repair_tree(t, qmp->get(), &log);
  qmp->reset();
  REQUIRE(!st);
  CHECK(st.kind() == ErrorKind::kQemu);
  CHECK_MESSAGE(st.message().find("Input/output error") != std::string::npos, st.message());
  CHECK_MESSAGE(st.message().find("rolled back the merge of s1 into @n0002") != std::string::npos,
                st.message());
  // Rolled back: s1 stays, the intent is gone, on disk too.
  CHECK(!t.intent);
  auto back = load_tree(d.path);
  REQUIRE(back);
  CHECK(!back->intent);
  CHECK(back->find("s1"));
  CHECK(back->find("@n0002")->parent == "s1");
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
