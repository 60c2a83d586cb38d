// protect killed at the worst moments, against a real patched QEMU: right
// after a commit whose ack never left (a crash point ends it as the ack
// is about to be sent), and right after `kvmcdp mark` answered.  The journal is the
// truth: whatever protect reported or made durable must be there, and a
// new protect must carry on from it.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <sstream>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "harness/protect_process.h"
#include "harness/qemu_process.h"
#include "harness/vm_io.h"

namespace kvmcdp::test {
namespace {

constexpr uint64_t kDiskSize = 32ull << 20;

struct Checkpoint {
  uint64_t seq = 0;
  std::string md5;
};

// Waits until protect.json names `pid`: from then on mark finds it.
void wait_state_pid(const std::string& store, pid_t pid) {
  for (int i = 0; i < 600; ++i) {
    std::string text = read_file(store + "/protect.json");
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (!j.is_discarded() && j.value("pid", 0) == pid) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  FAIL("protect.json never named the new protect");
}

// A paused VM with an empty raw disk, and the path of its store.
struct VmRig {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  std::string store = dir.file("store");
  std::unique_ptr<QemuProcess> vm;
  VmRig() {
    REQUIRE(run_command({"truncate", "-s", std::to_string(kDiskSize), disk}).status == 0);
    vm = start_vm(dir, disk);
  }
  // protect of vd0 into the store, dying at crash point `step`.
  std::unique_ptr<BackgroundProcess> crashing_protect(const std::string& step,
                                                      std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {"env", "KVMCDP_CRASH_AT_STEP=" + step, KVMCDP_BINARY,
                                     "protect", "--qmp", vm->tool_socket(), "--drive", "vd0",
                                     "--store", store};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return std::make_unique<BackgroundProcess>(argv, dir.file("crashing.log"));
  }
};

}  // namespace

TEST_CASE("protect: killed after a commit, before its ack, away past the filter's timeout: "
          "the next protect carries on, restores exact") {
  VmRig rig;
  auto& [dir, disk, store, vm] = rig;
  std::vector<std::string> fast = {"--filter-timeout", "300"};
  {
    ProtectProcess first(vm->tool_socket(), "vd0", store, fast);
    REQUIRE_MESSAGE(first.wait_base_complete(std::chrono::seconds(60)), first.output());
    qemu_io(*vm, "write -P 1 0 65536");
    wait_acked(*vm);
    first.kill9();
  }
  // Its second ack is that of the second write: the crash point kills
  // protect after that commit, before the ack leaves.
  Checkpoint acked{}, committed{};
  {
    auto crashing = rig.crashing_protect("ack:2", fast);
    REQUIRE_MESSAGE(crashing->wait_output("protecting", std::chrono::seconds(30)),
                    crashing->output());
    qemu_io(*vm, "write -P 2 1048576 65536");
    wait_acked(*vm);
    acked = {filter_seq(*vm), md5_of_file(disk)};
    // Its ack never leaves: the filter last saw the ack before it.
    qemu_io(*vm, "write -P 3 2097152 65536");
    committed = {filter_seq(*vm), md5_of_file(disk)};
    REQUIRE_MESSAGE(crashing->wait_exit(std::chrono::seconds(30)) != -1, crashing->output());
  }
  // Away past the filter's timeout: it drops its queue and counts a gap.
  QmpReply q;
  for (int i = 0; i < 500; ++i) {
    q = vm->qmp().execute("query-cdp");
    REQUIRE(q.ok());
    if (q.value[0]["gap"] == true) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(q.value[0]["connected"] == false);
  REQUIRE(q.value[0]["gap"] == true);
  // The journal holds the write the filter never saw acked.
  REQUIRE(q.value[0]["acked-seq"].get<uint64_t>() == acked.seq);
  REQUIRE(committed.seq == acked.seq + 1);
  auto dump = run_command({KVMCDP_BINARY, "journal", "dump", "--json", "--store", store});
  REQUIRE(dump.status == 0);
  REQUIRE(dump.output.find(fmt::format("\"seq\":{},", committed.seq)) != std::string::npos);
  qemu_io(*vm, "write -P 4 3145728 65536");  // in the gap: the dirty bitmap keeps it

  ProtectProcess next(vm->tool_socket(), "vd0", store, fast);
  bool resynced = false;
  for (int i = 0; i < 500 && !resynced; ++i) {
    QmpReply r = vm->qmp().execute("query-cdp");
    REQUIRE(r.ok());
    resynced = r.value[0]["connected"] == true && r.value[0]["gap"] == false &&
               r.value[0]["acked-seq"] == r.value[0]["seq"];
    if (!resynced) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  REQUIRE_MESSAGE(resynced, next.output());
  qemu_io(*vm, "write -P 5 4194304 65536");
  wait_acked(*vm);
  Checkpoint after{filter_seq(*vm), md5_of_file(disk)};
  REQUIRE_MESSAGE(next.stop() == 0, next.output());

  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", store});
  CHECK_MESSAGE(verify.status == 0, verify.output);
  check_restore(dir, store, acked.seq, acked.md5);
  check_restore(dir, store, committed.seq, committed.md5);
  check_restore(dir, store, after.seq, after.md5);
}

TEST_CASE("protect: killed right after a RECEIVED, before the ACK: the next protect carries on "
          "without a gap, restores exact") {
  // RECEIVED lets the filter free what it sent; it is sent only for what
  // is written to a segment file, which a crash of protect keeps.
  VmRig rig;
  auto& [dir, disk, store, vm] = rig;
  Checkpoint written{};
  {
    auto crashing = rig.crashing_protect("received:1");
    REQUIRE_MESSAGE(crashing->wait_output("base copy complete", std::chrono::seconds(60)),
                    crashing->output());
    qemu_io(*vm, "write -P 6 1048576 1048576");
    written = {filter_seq(*vm), md5_of_file(disk)};
    REQUIRE_MESSAGE(crashing->wait_exit(std::chrono::seconds(30)) != -1, crashing->output());
  }
  QmpReply q = vm->qmp().execute("query-cdp");
  REQUIRE(q.ok());
  // Between the two: the filter freed the write, nothing was acknowledged.
  CHECK(q.value[0]["received-seq"].get<uint64_t>() == written.seq);
  CHECK(q.value[0]["acked-seq"].get<uint64_t>() < written.seq);

  ProtectProcess next(vm->tool_socket(), "vd0", store);
  REQUIRE_MESSAGE(next.wait_output("protecting", std::chrono::seconds(30)), next.output());
  wait_acked(*vm);
  q = vm->qmp().execute("query-cdp");
  REQUIRE(q.ok());
  CHECK(q.value[0]["gap"] == false);
  CHECK(q.value[0]["dirty-bytes"] == 0);
  REQUIRE_MESSAGE(next.stop() == 0, next.output());
  auto status = run_command({KVMCDP_BINARY, "status", "--store", store});
  CHECK_MESSAGE(status.output.find("gaps:        0") != std::string::npos, status.output);
  check_restore(dir, store, written.seq, written.md5);
}

TEST_CASE("mark: the seq is printed once durable, protect killed right after, restore --mark "
          "finds it") {
  VmRig rig;
  auto& [dir, disk, store, vm] = rig;
  // async: a mark waits for the batch's age, not an fdatasync of its own,
  // which is the widest window between a mark's seq and its commit.
  std::vector<std::string> async = {"--mode", "async"};
  constexpr int kRounds = 5;
  int lost = 0;
  for (int i = 0; i < kRounds; ++i) {
    CAPTURE(i);
    std::filesystem::remove(store + ".protect.log");
    ProtectProcess protect(vm->tool_socket(), "vd0", store, async);
    REQUIRE_MESSAGE(protect.wait_output(i == 0 ? "base copy complete" : "protecting",
                                        std::chrono::seconds(60)),
                    protect.output());
    wait_state_pid(store, protect.pid());
    qemu_io(*vm, fmt::format("write -P {} {} 65536", i + 1, i * 1048576));
    std::string md5 = md5_of_file(disk);
    std::string name = fmt::format("m{}", i);
    auto marked = run_command({KVMCDP_BINARY, "mark", "--store", store, name});
    protect.kill9();
    REQUIRE_MESSAGE(marked.status == 0, marked.output);
    std::string out = dir.file("mark.raw");
    auto restored = run_command({KVMCDP_BINARY, "restore", "--force", "--quiet", "--store", store,
                                 "--mark", name, "-o", out});
    if (restored.status != 0) {
      ++lost;
      MESSAGE("mark ", name, " printed as seq ", marked.output, " but restore said: ",
              restored.output);
      continue;
    }
    CHECK(md5_of_file(out) == md5);
  }
  CHECK_MESSAGE(lost == 0, lost, " of ", kRounds, " printed marks were not in the journal");
}

}  // namespace kvmcdp::test
