// Block jobs on a protected disk while writes go on through the device: a
// backup job, a mirror job (completed: the VM then runs on the mirror's
// target), kvmcdp's own stream of snapshot delete, and a user's active
// commit with its pivot.  Capture must stay exact: every checkpoint
// restores to the disk's MD5, and the stream has no gap.  A VM (no guest:
// -S) written through HMP qemu-io, as in protect_test.cc.
#include <chrono>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "harness/protect_process.h"
#include "harness/qemu_process.h"
#include "harness/vm_io.h"

namespace kvmcdp::test {
namespace {

using std::chrono::milliseconds;

// Waits until job `id` is gone from query-block-jobs (it completed or
// failed: the JOB events tell which, so the caller checks the result).
void wait_job_gone(QemuProcess& vm, const std::string& id) {
  for (int i = 0; i < 1500; ++i) {
    QmpReply r = vm.qmp().execute("query-block-jobs");
    REQUIRE(r.ok());
    bool there = false;
    for (const auto& j : r.value) there |= j["device"] == id;
    if (!there) return;
    std::this_thread::sleep_for(milliseconds(20));
  }
  FAIL("block job " << id << " did not end in 30 s");
}

void wait_job_ready(QemuProcess& vm, const std::string& id) {
  for (int i = 0; i < 1500; ++i) {
    QmpReply r = vm.qmp().execute("query-block-jobs");
    REQUIRE(r.ok());
    for (const auto& j : r.value)
      if (j["device"] == id && j["ready"] == true) return;
    std::this_thread::sleep_for(milliseconds(20));
  }
  FAIL("block job " << id << " did not become ready in 30 s");
}

// A paused VM with a 16 MiB random disk and a second monitor for kvmcdp's
// snapshot commands (protect holds the tool socket), protected, with its
// base copy taken.
struct ProtectedVmWithMonitor {
  TempDir dir;
  std::string disk = dir.file("disk.raw"), store = dir.file("store"), tree = dir.file("t");
  std::string mon = dir.file("snap.qmp");
  std::unique_ptr<QemuProcess> vm = start();
  ProtectProcess protect{vm->tool_socket(), "vd0", store};

  ProtectedVmWithMonitor() {
    REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  }
  std::unique_ptr<QemuProcess> start() {
    setenv("KVMCDP_QEMU_IMG", qemu_bin("qemu-img").c_str(), 1);
    REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + disk, "bs=1M", "count=16"}).status ==
            0);
    return start_vm_with_monitor(dir, disk, mon);
  }
};

std::string filter_node(QemuProcess& vm) {
  QmpReply r = vm.qmp().execute("query-cdp");
  REQUIRE(r.ok());
  REQUIRE(r.value.size() == 1);
  return r.value[0]["node-name"];
}

void writes(QemuProcess& vm, int round) {
  for (int i = 0; i < 8; ++i)
    qemu_io(vm, fmt::format("write -P {} {} {}", (round * 8 + i) % 250 + 1,
                            ((round * 7 + i * 13) % 60) << 18, 192 << 10));
  qemu_io(vm, fmt::format("write -z {} 65536", (round % 30) << 20));
  qemu_io(vm, "flush");
}

}  // namespace

TEST_CASE("protect while QEMU runs a backup job and a completed mirror job: restores exact") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  std::string backup = dir.file("backup.raw");
  std::string mirror = dir.file("mirror.raw");
  REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + disk, "bs=1M", "count=16"}).status == 0);
  for (const auto& f : {backup, mirror})
    REQUIRE(run_command({"truncate", "-s", "16M", f}).status == 0);
  auto vm = start_vm(dir, disk);
  std::string store = dir.file("store");
  ProtectProcess protect(vm->tool_socket(), "vd0", store);
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  std::vector<std::pair<uint64_t, std::string>> points;
  auto checkpoint = [&](const std::string& file) {
    wait_acked(*vm);
    points.push_back({filter_seq(*vm), md5_of_file(file)});
  };
  writes(*vm, 0);
  checkpoint(disk);

  // A backup job copies the disk while writes go on (its copy-before-write
  // filter sits between the cdp filter and the disk).
  for (const auto& [name, file] : {std::pair{"backup", backup}, std::pair{"mirror", mirror}}) {
    QmpReply add = vm->qmp().execute(
        "blockdev-add", {{"driver", "raw"},
                         {"node-name", name},
                         {"file", {{"driver", "file"}, {"filename", file}}}});
    REQUIRE_MESSAGE(add.ok(), add.message);
  }
  QmpReply b = vm->qmp().execute("blockdev-backup", {{"job-id", "job-backup"},
                                                     {"device", "disk0"},
                                                     {"target", "backup"},
                                                     {"sync", "full"},
                                                     {"speed", 8 << 20}});
  REQUIRE_MESSAGE(b.ok(), b.message);
  writes(*vm, 1);
  checkpoint(disk);
  REQUIRE(vm->qmp().execute("block-job-set-speed", {{"device", "job-backup"}, {"speed", 0}}).ok());
  wait_job_gone(*vm, "job-backup");
  writes(*vm, 2);
  checkpoint(disk);

  // A mirror job moves the disk to another file; once it completes the VM
  // runs on the target.  The job starts at the top of the drive (the
  // filter) and replaces the node below the filter, so the filter stays.
  QmpReply m = vm->qmp().execute("blockdev-mirror", {{"job-id", "job-mirror"},
                                                     {"device", filter_node(*vm)},
                                                     {"target", "mirror"},
                                                     {"replaces", "disk0"},
                                                     {"sync", "full"}});
  REQUIRE_MESSAGE(m.ok(), m.message);
  writes(*vm, 3);
  wait_job_ready(*vm, "job-mirror");
  writes(*vm, 4);
  checkpoint(disk);
  QmpReply c = vm->qmp().execute("block-job-complete", {{"device", "job-mirror"}});
  REQUIRE_MESSAGE(c.ok(), c.message);
  wait_job_gone(*vm, "job-mirror");
  QmpReply f = vm->qmp().execute("query-cdp");
  REQUIRE(f.ok());
  REQUIRE(f.value.size() == 1);
  CHECK(f.value[0]["child"] == "mirror");
  writes(*vm, 5);
  checkpoint(mirror);

  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
  auto pj = json::parse(run_command({KVMCDP_BINARY, "points", "--json", "--store", store}).output);
  CHECK_MESSAGE(pj["gaps"].empty(), pj.dump());
  for (const auto& [seq, md5] : points) check_restore(dir, store, seq, md5);
}

}  // namespace kvmcdp::test

namespace kvmcdp::test {

TEST_CASE("protect: a mirror that replaces the filter itself is reported, never silent") {
  // What a tool unaware of the filter does (e.g. libvirt's blockcopy with
  // pivot): mirror the drive's top node, the filter, and replace it.  The
  // filter leaves the graph with the node it was: protect must say so and
  // stop with an error, its journal intact up to there.
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  std::string mirror = dir.file("mirror.raw");
  REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + disk, "bs=1M", "count=16"}).status == 0);
  REQUIRE(run_command({"truncate", "-s", "16M", mirror}).status == 0);
  auto vm = start_vm(dir, disk);
  std::string store = dir.file("store");
  ProtectProcess protect(vm->tool_socket(), "vd0", store);
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  writes(*vm, 0);
  wait_acked(*vm);
  uint64_t seq = filter_seq(*vm);
  std::string md5 = md5_of_file(disk);
  QmpReply add = vm->qmp().execute(
      "blockdev-add", {{"driver", "raw"},
                       {"node-name", "mirror"},
                       {"file", {{"driver", "file"}, {"filename", mirror}}}});
  REQUIRE_MESSAGE(add.ok(), add.message);
  QmpReply m = vm->qmp().execute("blockdev-mirror", {{"job-id", "job-mirror"},
                                                     {"device", filter_node(*vm)},
                                                     {"target", "mirror"},
                                                     {"sync", "full"}});
  REQUIRE_MESSAGE(m.ok(), m.message);
  wait_job_ready(*vm, "job-mirror");
  QmpReply c = vm->qmp().execute("block-job-complete", {{"device", "job-mirror"}});
  REQUIRE_MESSAGE(c.ok(), c.message);
  wait_job_gone(*vm, "job-mirror");
  CHECK(vm->qmp().execute("query-cdp").value.empty());
  int status = protect.wait_exit(std::chrono::seconds(60));
  INFO(protect.output());
  CHECK(status != 0);
  CHECK(protect.output().find("removed from the VM") != std::string::npos);
  CHECK(run_command({KVMCDP_BINARY, "journal", "verify", "--store", store}).status == 0);
  check_restore(dir, store, seq, md5);
}

}  // namespace kvmcdp::test

namespace kvmcdp::test {

TEST_CASE_FIXTURE(ProtectedVmWithMonitor,
                  "protect while snapshot delete streams nodes into the running chain: restores "
                  "exact") {
  // kvmcdp's own block jobs: snapshot delete streams a deleted node into
  // its child below the filter while protect captures.
  auto kvmcdp = [&](std::vector<std::string> args) {
    args.insert(args.begin(), KVMCDP_BINARY);
    auto r = run_command(args);
    REQUIRE_MESSAGE(r.status == 0, r.output);
    return r.output;
  };
  std::vector<std::pair<uint64_t, std::string>> points;
  auto checkpoint = [&] {
    wait_acked(*vm);
    qemu_io(*vm, "flush");  // the overlay's qcow2 metadata, for qemu-img
    wait_acked(*vm);
    uint64_t seq = filter_seq(*vm);
    auto m = json::parse(read_file(tree + "/tree.json"));
    std::string file;
    for (const auto& n : m["nodes"])
      if (n["name"] == m["active"]) file = n["file"];
    REQUIRE(!file.empty());
    if (file[0] != '/') file = tree + "/" + file;
    std::string flat = dir.file("now.raw");
    auto c = run_command({qemu_bin("qemu-img"), "convert", "-U", "-O", "raw", file, flat});
    REQUIRE_MESSAGE(c.status == 0, c.output);
    points.push_back({seq, md5_of_file(flat)});
  };
  writes(*vm, 0);
  int round = 1;
  for (const char* name : {"s1", "s2", "s3"}) {
    std::vector<std::string> args = {"snapshot", "create", name, "--tree", tree, "--qmp", mon};
    if (round == 1) args.insert(args.end(), {"--drive", "vd0"});
    kvmcdp(args);
    writes(*vm, round++);
  }
  checkpoint();
  CHECK(kvmcdp({"snapshot", "delete", "--tree", tree, "--qmp", mon, "s2"}).find("streamed") !=
        std::string::npos);
  writes(*vm, round++);
  checkpoint();
  CHECK(kvmcdp({"snapshot", "delete", "--tree", tree, "--qmp", mon, "s3"}).find("streamed") !=
        std::string::npos);
  writes(*vm, round++);
  checkpoint();
  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
  auto pj = json::parse(run_command({KVMCDP_BINARY, "points", "--json", "--store", store}).output);
  CHECK_MESSAGE(pj["gaps"].empty(), pj.dump());
  for (const auto& [seq, md5] : points) check_restore(dir, store, seq, md5);
}

}  // namespace kvmcdp::test

namespace kvmcdp::test {

TEST_CASE_FIXTURE(ProtectedVmWithMonitor,
                  "protect while the user commits an external snapshot back into its base: "
                  "restores exact") {
  // What `virsh blockcommit --active --pivot` does after an external
  // snapshot: an active commit of the top overlay into the disk below it,
  // then the pivot, which puts that disk under the filter again.  Writes
  // go on throughout; every point restores exact and there is no gap.
  auto filter_child = [&] {
    QmpReply r = vm->qmp().execute("query-cdp");
    REQUIRE(r.ok());
    REQUIRE(r.value.size() == 1);
    return r.value[0]["child"].get<std::string>();
  };
  // The disk as the guest sees it: `top`'s chain flattened (after a flush,
  // so that the overlay's qcow2 metadata is on disk for qemu-img).
  std::vector<std::pair<uint64_t, std::string>> points;
  auto checkpoint = [&](const std::string& top) {
    qemu_io(*vm, "flush");
    wait_acked(*vm);
    std::string flat = dir.file("now.raw");
    auto c = run_command({qemu_bin("qemu-img"), "convert", "-U", "-O", "raw", top, flat});
    REQUIRE_MESSAGE(c.status == 0, c.output);
    points.push_back({filter_seq(*vm), md5_of_file(flat)});
  };
  writes(*vm, 0);
  checkpoint(disk);
  auto snap = run_command(
      {KVMCDP_BINARY, "snapshot", "create", "s1", "--tree", tree, "--qmp", mon, "--drive", "vd0"});
  REQUIRE_MESSAGE(snap.status == 0, snap.output);
  std::string overlay_node = filter_child();
  REQUIRE(overlay_node != "disk0");
  QmpReply q = vm->qmp().execute("query-named-block-nodes");
  REQUIRE(q.ok());
  std::string overlay;
  for (const auto& n : q.value)
    if (n["node-name"] == overlay_node) overlay = n["file"];
  REQUIRE(!overlay.empty());
  writes(*vm, 1);
  checkpoint(overlay);

  // The job belongs to the drive's root (the filter); the overlay is the
  // active layer below it, written by the filter, so QEMU runs an active
  // commit and its pivot replaces the overlay under the filter.
  QmpReply c = vm->qmp().execute("block-commit", {{"job-id", "job-commit"},
                                                  {"device", filter_node(*vm)},
                                                  {"top-node", overlay_node},
                                                  {"base-node", "disk0"}});
  REQUIRE_MESSAGE(c.ok(), c.message);
  writes(*vm, 2);
  wait_job_ready(*vm, "job-commit");
  writes(*vm, 3);
  checkpoint(overlay);
  QmpReply done = vm->qmp().execute("block-job-complete", {{"device", "job-commit"}});
  REQUIRE_MESSAGE(done.ok(), done.message);
  wait_job_gone(*vm, "job-commit");
  CHECK(filter_child() == "disk0");
  writes(*vm, 4);
  checkpoint(disk);

  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
  auto pj = json::parse(run_command({KVMCDP_BINARY, "points", "--json", "--store", store}).output);
  CHECK_MESSAGE(pj["gaps"].empty(), pj.dump());
  for (const auto& [seq, md5] : points) check_restore(dir, store, seq, md5);
}

}  // namespace kvmcdp::test
