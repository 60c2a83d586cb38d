// The snapshot tree against a running QEMU (qemu-storage-daemon exporting
// the disk over NBD; writes go through the export like a guest's): online
// create with its I/O pause, and each delete rule while the disk is in use.
// Every remaining node's full image keeps its MD5 and every file passes
// qemu-img check.
#include <algorithm>
#include <cstdlib>
#include <map>
#include <string>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "harness/protect_process.h"
#include "harness/qemu_process.h"
#include "harness/vm_io.h"

namespace kvmcdp::test {
namespace {

using json = nlohmann::json;

struct Vm {
  TempDir dir;
  std::string tree = dir.file("t");
  std::string nbd = dir.file("nbd.sock");
  std::string qmp = dir.file("kvmcdp.qmp");  // a second monitor, for kvmcdp
  std::unique_ptr<QemuProcess> qsd;

  Vm() { setenv("KVMCDP_QEMU_IMG", qemu_bin("qemu-img").c_str(), 1); }

  // `file_opts`: extra options of the image file's node (",cache.direct=on").
  void start(const std::string& image, const std::string& file_opts = "") {
    qsd = QemuProcess::start_storage_daemon(
        dir, {"--blockdev", fmt::format("file,node-name=f0,filename={}{}", image, file_opts),
              "--blockdev",
              "qcow2,node-name=disk,file=f0", "--nbd-server",
              fmt::format("addr.type=unix,addr.path={}", nbd), "--export",
              "nbd,id=e0,node-name=disk,name=d,writable=on", "--chardev",
              fmt::format("socket,path={},server=on,wait=off,id=m2", qmp), "--monitor",
              "chardev=m2"});
  }
  std::string uri() const { return fmt::format("nbd+unix:///d?socket={}", nbd); }
  // A write the way a guest's would arrive: through the running disk.
  void guest_write(int pattern, const std::string& off, const std::string& len) {
    auto r = run_command({qemu_bin("qemu-io"), "-f", "raw", "-c",
                          fmt::format("write -P {} {} {}", pattern, off, len), uri()});
    REQUIRE_MESSAGE(r.status == 0, r.output);
  }
  CommandOutput kvmcdp(std::vector<std::string> args) {
    args.insert(args.begin(), KVMCDP_BINARY);
    return run_command(args);
  }
  json meta() const { return json::parse(read_file(tree + "/tree.json")); }
  std::string path(const json& node) const {
    std::string f = node["file"];
    return f[0] == '/' ? f : tree + "/" + f;
  }
  std::string image_md5(const std::string& source, bool raw_nbd) {
    std::string out = dir.file("out.raw");
    std::vector<std::string> argv = {qemu_bin("qemu-img"), "convert", "-U"};
    if (raw_nbd) argv.insert(argv.end(), {"-f", "raw"});
    argv.insert(argv.end(), {"-O", "raw", source, out});
    auto r = run_command(argv);
    REQUIRE_MESSAGE(r.status == 0, r.output);
    return md5_of_file(out);
  }
  // Every node's full image; the active one as the running disk shows it.
  std::map<std::string, std::string> all_md5() {
    json m = meta();
    std::map<std::string, std::string> out;
    for (const auto& n : m["nodes"]) {
      bool active = n["name"] == m["active"];
      out[n["name"]] = active ? image_md5(uri(), true) : image_md5(path(n), false);
    }
    return out;
  }
  void stop_and_check_files() {
    REQUIRE(qsd->qmp().execute("quit").ok());
    REQUIRE(qsd->wait_exit(std::chrono::seconds(20)));
    json m = meta();
    for (const auto& n : m["nodes"]) {
      auto r = run_command({qemu_bin("qemu-img"), "check", path(n)});
      CHECK_MESSAGE(r.status == 0, path(n), ": ", r.output);
    }
    auto c = kvmcdp({"snapshot", "check", "--tree", tree});
    CHECK_MESSAGE(c.status == 0, c.output);
  }
};

std::map<std::string, std::string> without(std::map<std::string, std::string> m,
                                           const std::string& name) {
  m.erase(name);
  return m;
}

double pause_ms(const std::string& output) {
  auto at = output.find("I/O paused for ");
  REQUIRE(at != std::string::npos);
  return std::stod(output.substr(at + 15));
}

}  // namespace

TEST_CASE("snapshot: online create, then delete by streaming into the running chain") {
  Vm vm;
  std::string base = vm.dir.file("base.qcow2");
  REQUIRE(run_command({qemu_bin("qemu-img"), "create", "-q", "-f", "qcow2", base, "8M"}).status == 0);
  vm.start(base);
  vm.guest_write(1, "0", "2M");

  // base(s1) <- s2 <- s3 <- active, each with its own writes.
  int n = 1;
  for (const char* name : {"s1", "s2", "s3"}) {
    std::vector<std::string> args = {"snapshot", "create", name, "--tree", vm.tree, "--qmp",
                                     vm.qmp};
    if (n == 1) args.insert(args.end(), {"--drive", "disk"});
    auto r = vm.kvmcdp(args);
    REQUIRE_MESSAGE(r.status == 0, r.output);
    double ms = pause_ms(r.output);
    MESSAGE("snapshot create ", std::string(name), ": I/O paused for ", ms, " ms");
    CHECK(ms < 1000);
    vm.guest_write(1 + ++n, fmt::format("{}M", n), "1536K");
  }
  auto listed = vm.kvmcdp({"snapshot", "tree", "--tree", vm.tree});
  CHECK(listed.output.find("(current disk: new writes go here)") != std::string::npos);

  // The running disk itself cannot be deleted.
  auto refused = vm.kvmcdp({"snapshot", "delete", "--tree", vm.tree, "--qmp", vm.qmp,
                            vm.meta()["active"].get<std::string>()});
  CHECK(refused.status == 1);
  CHECK(refused.output.find("writes into") != std::string::npos);

  // Rule 2, child in the running chain but not its top: stream into s3.
  auto before = vm.all_md5();
  auto r = vm.kvmcdp({"snapshot", "delete", "--tree", vm.tree, "--qmp", vm.qmp, "s2"});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  CHECK(r.output.find("streamed s2 into s3") != std::string::npos);
  CHECK(vm.all_md5() == without(before, "s2"));
  CHECK(!std::filesystem::exists(vm.tree + "/n0001.qcow2"));

  // Rule 2, child is the running top.
  before = vm.all_md5();
  r = vm.kvmcdp({"snapshot", "delete", "--tree", vm.tree, "--qmp", vm.qmp, "s3"});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  CHECK(r.output.find("streamed s3 into @n0003") != std::string::npos);
  CHECK(vm.all_md5() == without(before, "s3"));

  // The guest goes on writing into the switched chain.
  vm.guest_write(9, "7M", "1M");
  auto last = vm.kvmcdp({"snapshot", "create", "s4", "--tree", vm.tree, "--qmp", vm.qmp});
  REQUIRE_MESSAGE(last.status == 0, last.output);
  before = vm.all_md5();
  vm.stop_and_check_files();
  json m = vm.meta();
  CHECK(m["nodes"].size() == 3);
}

TEST_CASE("snapshot: online rules 1 and 3, deferred merge into the running disk") {
  Vm vm;
  std::string base = vm.dir.file("base.qcow2");
  REQUIRE(run_command({qemu_bin("qemu-img"), "create", "-q", "-f", "qcow2", base, "8M"}).status == 0);
  REQUIRE(run_command({qemu_bin("qemu-io"), "-c", "write -P 1 0 3M", base}).status == 0);
  // Offline: s1(base) <- s2 <- old; revert to s1 and run the VM on the new branch.
  for (const char* name : {"s1", "s2"}) {
    std::vector<std::string> args = {"snapshot", "create", name, "--tree", vm.tree};
    if (std::string(name) == "s1") args.insert(args.end(), {"--base", base});
    auto r = vm.kvmcdp(args);
    REQUIRE_MESSAGE(r.status == 0, r.output);
    std::string active = vm.path(vm.meta()["nodes"].back());
    REQUIRE(run_command({qemu_bin("qemu-io"), "-c", "write -P 7 2M 2M", active}).status == 0);
  }
  REQUIRE(vm.kvmcdp({"snapshot", "revert", "--tree", vm.tree, "s1"}).status == 0);
  json m = vm.meta();
  std::string active_path = vm.path(m["nodes"].back());
  vm.start(active_path);
  vm.guest_write(3, "1M", "2M");
  auto c = vm.kvmcdp({"snapshot", "create", "b1", "--tree", vm.tree, "--qmp",
                      vm.qmp, "--drive", "disk"});
  REQUIRE_MESSAGE(c.status == 0, c.output);
  MESSAGE("snapshot create b1: I/O paused for ", pause_ms(c.output), " ms");
  vm.guest_write(4, "5M", "1M");

  // Rule 3: s1 has two children (s2 and b1): logical delete only.
  auto before = vm.all_md5();
  auto r = vm.kvmcdp({"snapshot", "delete", "--tree", vm.tree, "--qmp", vm.qmp, "s1"});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  CHECK(r.output.find("logically deleted") != std::string::npos);
  CHECK(vm.all_md5() == before);
  CHECK(vm.kvmcdp({"snapshot", "tree", "--tree", vm.tree}).output.find("s1") == std::string::npos);
  CHECK(vm.kvmcdp({"snapshot", "tree", "--tree", vm.tree, "--all"}).output.find("s1 ") !=
        std::string::npos);

  // Rule 1: the old branch's leaf (no child) is removed.
  r = vm.kvmcdp({"snapshot", "delete", "--tree", vm.tree, "--qmp", vm.qmp, "@n0002"});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  CHECK(r.output.find("no child") != std::string::npos);
  CHECK(!std::filesystem::exists(vm.tree + "/n0002.qcow2"));

  // Rule 2 off the running chain while the VM runs: s2 (one child? none
  // now) -- delete it, which leaves s1 with one child, b1, in the running
  // chain: s1 is streamed into b1 and disappears.
  before = vm.all_md5();
  r = vm.kvmcdp({"snapshot", "delete", "--tree", vm.tree, "--qmp", vm.qmp, "s2"});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  CHECK(r.output.find("logically deleted and has 1 child") != std::string::npos);
  CHECK(r.output.find("streamed s1 into b1") != std::string::npos);
  CHECK(vm.all_md5() == without(without(before, "s2"), "s1"));
  CHECK(std::filesystem::exists(base));  // the imported root file stays
  m = vm.meta();
  CHECK(m["nodes"].size() == 2);
  vm.stop_and_check_files();
}

// kill -9 (KVMCDP_CRASH_AT_STEP) after each step of an online create and an
// online merge; the next command with --qmp finishes or rolls back, the
// running disk keeps its data and the tree matches the images.
TEST_CASE("snapshot: online crash at every step, then repair") {
  Vm vm;
  std::string base = vm.dir.file("base.qcow2");
  REQUIRE(run_command({qemu_bin("qemu-img"), "create", "-q", "-f", "qcow2", base, "8M"}).status == 0);
  vm.start(base);
  vm.guest_write(1, "0", "1M");
  auto first = vm.kvmcdp({"snapshot", "create", "s0", "--tree", vm.tree, "--qmp", vm.qmp,
                          "--drive", "disk"});
  REQUIRE_MESSAGE(first.status == 0, first.output);

  for (int step = 1; step <= 3; ++step) {
    vm.guest_write(10 + step, fmt::format("{}M", step), "512K");
    std::string disk = vm.image_md5(vm.uri(), true);
    std::string name = fmt::format("c{}", step);
    auto crashed = run_command({"env", fmt::format("KVMCDP_CRASH_AT_STEP=create:{}", step),
                                KVMCDP_BINARY, "snapshot", "create", name, "--tree", vm.tree,
                                "--qmp", vm.qmp});
    CHECK(crashed.status == 9);
    auto repaired = vm.kvmcdp({"snapshot", "repair", "--tree", vm.tree, "--qmp", vm.qmp});
    REQUIRE_MESSAGE(repaired.status == 0, repaired.output);
    CHECK(repaired.output.find(step == 3 ? "finished creating" : "rolled back creating") !=
          std::string::npos);
    CHECK(vm.meta()["intent"].is_null());
    CHECK(vm.image_md5(vm.uri(), true) == disk);
    auto check = vm.kvmcdp({"snapshot", "check", "--tree", vm.tree});
    CHECK_MESSAGE(check.status == 0, check.output);
    // The repaired tree takes the next snapshot normally.
    auto again = vm.kvmcdp({"snapshot", "create", name + "b", "--tree", vm.tree, "--qmp", vm.qmp});
    REQUIRE_MESSAGE(again.status == 0, again.output);
  }

  int blind_refused = 0;
  for (int step = 1; step <= 4; ++step) {
    auto made = vm.kvmcdp({"snapshot", "create", fmt::format("m{}", step), "--tree", vm.tree,
                           "--qmp", vm.qmp});
    REQUIRE_MESSAGE(made.status == 0, made.output);
    vm.guest_write(20 + step, fmt::format("{}M", step + 3), "512K");
    auto before = without(vm.all_md5(), fmt::format("m{}", step));
    auto crashed = run_command({"env", fmt::format("KVMCDP_CRASH_AT_STEP=merge:{}", step),
                                KVMCDP_BINARY, "snapshot", "delete", "--tree", vm.tree, "--qmp",
                                vm.qmp, fmt::format("m{}", step)});
    CHECK(crashed.status == 9);
    // Without the VM to ask, an online merge is not decided blindly: the
    // stream job may still switch the child's backing file.
    json intent = vm.meta()["intent"];
    if (!intent.is_null() && intent["op"] == "merge" && intent["args"].value("online", false)) {
      auto blind = vm.kvmcdp({"snapshot", "repair", "--tree", vm.tree});
      CHECK_MESSAGE(blind.status == 2, blind.output);
      CHECK(blind.output.find("--qmp") != std::string::npos);
      CHECK(vm.meta()["intent"] == intent);
      blind_refused++;
    }
    auto repaired = vm.kvmcdp({"snapshot", "repair", "--tree", vm.tree, "--qmp", vm.qmp});
    REQUIRE_MESSAGE(repaired.status == 0, repaired.output);
    CHECK(vm.meta()["intent"].is_null());
    CHECK(without(vm.all_md5(), fmt::format("m{}", step)) == before);
    auto check = vm.kvmcdp({"snapshot", "check", "--tree", vm.tree});
    CHECK_MESSAGE(check.status == 0, check.output);
  }
  CHECK(blind_refused >= 2);  // the steps after the intent, while the job ran
  vm.stop_and_check_files();
}

// Rule 2 with the child off the running chain while the VM runs: a
// safe-mode qemu-img rebase onto a parent the VM has open read-only.
TEST_CASE("snapshot: online delete of a node whose child is on another branch") {
  Vm vm;
  std::string base = vm.dir.file("base.qcow2");
  REQUIRE(run_command({qemu_bin("qemu-img"), "create", "-q", "-f", "qcow2", base, "8M"}).status == 0);
  REQUIRE(run_command({qemu_bin("qemu-io"), "-c", "write -P 1 0 4M", base}).status == 0);
  for (const char* name : {"s1", "s2"}) {
    std::vector<std::string> args = {"snapshot", "create", name, "--tree", vm.tree};
    if (std::string(name) == "s1") args.insert(args.end(), {"--base", base});
    REQUIRE(vm.kvmcdp(args).status == 0);
    std::string active = vm.path(vm.meta()["nodes"].back());
    REQUIRE(run_command({qemu_bin("qemu-io"), "-c",
                         fmt::format("write -P {} {}M 2M", name[1] - '0' + 4, name[1] - '0'),
                         active})
                .status == 0);
  }
  REQUIRE(vm.kvmcdp({"snapshot", "revert", "--tree", vm.tree, "s1"}).status == 0);
  vm.start(vm.path(vm.meta()["nodes"].back()));
  vm.guest_write(9, "6M", "1M");

  auto before = vm.all_md5();
  auto r = vm.kvmcdp({"snapshot", "delete", "--tree", vm.tree, "--qmp", vm.qmp, "s2"});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  CHECK(r.output.find("rebased s2 into @n0002") != std::string::npos);
  CHECK(vm.all_md5() == without(before, "s2"));
  CHECK(!std::filesystem::exists(vm.tree + "/n0001.qcow2"));
  vm.stop_and_check_files();
}

// Without --qmp, a delete that would rewrite the VM's chain offline
// (qemu-img under the running QEMU) is refused before anything changes,
// with one line that says what to do; with --qmp it works.
TEST_CASE("snapshot: delete of a node in the running chain without --qmp says to pass --qmp") {
  Vm vm;
  std::string base = vm.dir.file("base.qcow2");
  REQUIRE(run_command({qemu_bin("qemu-img"), "create", "-q", "-f", "qcow2", base, "8M"}).status == 0);
  vm.start(base);
  vm.guest_write(1, "0", "1M");
  for (const char* name : {"s1", "s2"}) {
    std::vector<std::string> args = {"snapshot", "create", name, "--tree", vm.tree, "--qmp",
                                     vm.qmp};
    if (std::string(name) == "s1") args.insert(args.end(), {"--drive", "disk"});
    auto r = vm.kvmcdp(args);
    REQUIRE_MESSAGE(r.status == 0, r.output);
    vm.guest_write(2, "2M", "1M");
  }
  std::string meta_before = read_file(vm.tree + "/tree.json");
  auto md5_before = vm.all_md5();
  for (const char* name : {"s1", "s2"}) {
    auto r = vm.kvmcdp({"snapshot", "delete", "--tree", vm.tree, name});
    CHECK_MESSAGE(r.status == 5, r.output);
    CHECK_MESSAGE(r.output.rfind("kvmcdp: error: the VM uses this chain", 0) == 0, r.output);
    CHECK_MESSAGE(r.output.find("pass --qmp SOCK") != std::string::npos, r.output);
    CHECK_MESSAGE(std::count(r.output.begin(), r.output.end(), '\n') == 1, r.output);
    CHECK(read_file(vm.tree + "/tree.json") == meta_before);
    CHECK(vm.all_md5() == md5_before);
  }
  auto merged = vm.kvmcdp({"merge", "--tree", vm.tree, "s1"});
  CHECK_MESSAGE(merged.status == 5, merged.output);
  CHECK(merged.output.find("pass --qmp SOCK") != std::string::npos);
  CHECK(read_file(vm.tree + "/tree.json") == meta_before);

  auto r = vm.kvmcdp({"snapshot", "delete", "--tree", vm.tree, "--qmp", vm.qmp, "s1"});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  CHECK(r.output.find("streamed s1 into s2") != std::string::npos);
  CHECK(vm.all_md5() == without(md5_before, "s1"));
  vm.stop_and_check_files();
}

// --drive takes what protect's does: the drive id (-drive id=), the
// device's id (-device id=) or a node name.
TEST_CASE("snapshot: online create --drive by drive id, device id or node name") {
  TempDir dir;
  setenv("KVMCDP_QEMU_IMG", qemu_bin("qemu-img").c_str(), 1);
  std::string base = dir.file("base.qcow2"), tree = dir.file("t");
  REQUIRE(run_command({qemu_bin("qemu-img"), "create", "-q", "-f", "qcow2", base, "8M"}).status == 0);
  auto vm = QemuProcess::start_system(
      dir, {"-S", "-drive", fmt::format("file={},format=qcow2,if=none,id=disk0", base), "-device",
            "virtio-blk-pci,drive=disk0,id=vd0"});
  auto top_node = [&]() -> std::string {
    auto b = vm->qmp().execute("query-block");
    REQUIRE(b.ok());
    for (const auto& d : b.value)
      if (d.value("device", "") == "disk0") return d["inserted"]["node-name"];
    return "";
  };
  std::string first_top = top_node();
  std::vector<std::pair<std::string, std::string>> cases = {
      {"s1", "disk0"}, {"s2", "vd0"}, {"s3", ""}};
  for (auto& [name, drive] : cases) {
    if (drive.empty()) drive = top_node();  // the node name
    auto r = run_command({KVMCDP_BINARY, "snapshot", "create", name, "--tree", tree, "--qmp",
                          vm->tool_socket(), "--drive", drive});
    REQUIRE_MESSAGE(r.status == 0, "--drive ", drive, ": ", r.output);
    CHECK(r.output.find("I/O paused for ") != std::string::npos);
  }
  auto m = json::parse(read_file(tree + "/tree.json"));
  CHECK(m["nodes"].size() == 4);
  CHECK(top_node() == m["active_qemu_node"].get<std::string>());
  CHECK(top_node() != first_top);
  auto unknown = run_command({KVMCDP_BINARY, "snapshot", "create", "s4", "--tree", tree, "--qmp",
                              vm->tool_socket(), "--drive", "nosuch"});
  CHECK_MESSAGE(unknown.status == 7, unknown.output);
  REQUIRE(vm->qmp().execute("quit").ok());
  REQUIRE(vm->wait_exit(std::chrono::seconds(20)));
  auto c = run_command({KVMCDP_BINARY, "snapshot", "check", "--tree", tree});
  CHECK_MESSAGE(c.status == 0, c.output);
}

// Under protect: the device's top is the cdp filter; --drive with the
// device id snapshots the image below it, so the filter stays on top and
// every write after the switch is still journaled.
TEST_CASE("snapshot: online create --drive by device id under protect's filter") {
  TempDir dir;
  setenv("KVMCDP_QEMU_IMG", qemu_bin("qemu-img").c_str(), 1);
  std::string disk = dir.file("disk.raw"), store = dir.file("store"), tree = dir.file("t");
  std::string mon = dir.file("snap.qmp");  // protect has the tool socket
  REQUIRE(run_command({"truncate", "-s", "8M", disk}).status == 0);
  auto vm = start_vm_with_monitor(dir, disk, mon);
  ProtectProcess protect(vm->tool_socket(), "vd0", store);
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  qemu_io(*vm, "write -P 3 0 1M");
  wait_acked(*vm);

  auto r = run_command({KVMCDP_BINARY, "snapshot", "create", "s1", "--tree", tree, "--qmp", mon,
                        "--drive", "vd0"});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  auto m = json::parse(read_file(tree + "/tree.json"));
  auto cdp = vm->qmp().execute("query-cdp");
  REQUIRE(cdp.ok());
  REQUIRE(cdp.value.size() == 1);
  CHECK(cdp.value[0]["child"] == m["active_qemu_node"]);

  qemu_io(*vm, "write -P 4 1M 1M");
  wait_acked(*vm);
  uint64_t seq = filter_seq(*vm);
  qemu_io(*vm, "flush");  // the overlay's qcow2 metadata, for qemu-img below
  std::string now = dir.file("now.raw");
  auto c = run_command({qemu_bin("qemu-img"), "convert", "-U", "-O", "raw",
                        tree + "/" + m["nodes"].back()["file"].get<std::string>(), now});
  REQUIRE_MESSAGE(c.status == 0, c.output);
  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
  check_restore(dir, store, seq, md5_of_file(now));
}

// A chain so long that QEMU's name for the running disk, json:{...} with
// every backing level in it, is cut at PATH_MAX: the disk is still found
// (by its file child) and snapshots go on.
TEST_CASE("snapshot: online create past QEMU's file name limit") {
  Vm vm;
  std::string base = vm.dir.file("base.qcow2");
  REQUIRE(run_command({qemu_bin("qemu-img"), "create", "-q", "-f", "qcow2", base, "8M"}).status == 0);
  vm.start(base);
  bool cut = false;
  int n = 0;
  // Each level adds some 100 bytes to the name; 4096 is reached well
  // before 80 levels.
  while (!cut && n < 80) {
    n++;
    std::vector<std::string> args = {"snapshot", "create", fmt::format("s{}", n), "--tree",
                                     vm.tree, "--qmp", vm.qmp};
    if (n == 1) args.insert(args.end(), {"--drive", "disk"});
    auto r = vm.kvmcdp(args);
    REQUIRE_MESSAGE(r.status == 0, "snapshot ", n, ": ", r.output);
    auto nodes = vm.qsd->qmp().execute("query-named-block-nodes", {{"flat", true}});
    REQUIRE(nodes.ok());
    for (const auto& node : nodes.value) {
      std::string file = node.value("file", "");
      if (file.rfind("json:", 0) == 0 && !json::accept(file.substr(5))) cut = true;
    }
  }
  REQUIRE_MESSAGE(cut, "QEMU never cut a name in ", n, " levels");
  // Two more once the name is cut, with writes between.
  for (int k = 0; k < 2; k++) {
    vm.guest_write(k + 1, fmt::format("{}M", k), "1M");
    auto r = vm.kvmcdp({"snapshot", "create", fmt::format("t{}", k), "--tree", vm.tree, "--qmp",
                        vm.qmp});
    REQUIRE_MESSAGE(r.status == 0, r.output);
    CHECK(r.output.find("I/O paused for ") != std::string::npos);
  }
  CHECK(vm.meta()["active"] == vm.meta()["nodes"].back()["name"]);
  vm.stop_and_check_files();
}

// An overlay is opened the way the running disk's image file is: a disk on
// O_DIRECT whose overlays went through the page cache would have every
// guest write after a snapshot flushed back inside the next snapshot's I/O
// pause (and would no longer be cache=none).
TEST_CASE("snapshot: online overlays keep the disk's cache mode and have subclusters") {
  Vm vm;
  std::string base = vm.dir.file("base.qcow2");
  REQUIRE(run_command({qemu_bin("qemu-img"), "create", "-q", "-f", "qcow2", base, "8M"}).status == 0);
  vm.start(base, ",cache.direct=on,cache.no-flush=on");
  for (int n = 1; n <= 2; n++) {
    vm.guest_write(n, fmt::format("{}M", n), "1M");
    std::vector<std::string> args = {"snapshot", "create", fmt::format("s{}", n), "--tree",
                                     vm.tree, "--qmp", vm.qmp};
    if (n == 1) args.insert(args.end(), {"--drive", "disk"});
    auto r = vm.kvmcdp(args);
    REQUIRE_MESSAGE(r.status == 0, r.output);
  }
  auto nodes = vm.qsd->qmp().execute("query-named-block-nodes", {{"flat", true}});
  REQUIRE(nodes.ok());
  int overlays = 0, qcow2 = 0;
  for (const auto& node : nodes.value) {
    std::string file = node.value("file", "");
    if (file.find("/t/n000") == std::string::npos) continue;
    if (node.value("drv", "") == "qcow2") {
      // A first 4 KiB write into a cluster copies 4 KiB, not 64 KiB.
      qcow2++;
      const json& spec = node["image"]["format-specific"]["data"];
      CHECK_MESSAGE(spec.value("extended-l2", false), file);
    }
    if (node.value("drv", "") != "file") continue;
    overlays++;
    CHECK_MESSAGE(node["cache"].value("direct", false), file);
    CHECK_MESSAGE(node["cache"].value("no-flush", false), file);
  }
  CHECK(overlays == 2);
  CHECK(qcow2 == 2);
  vm.guest_write(7, "3M", "1M");
  auto before = vm.all_md5();
  CHECK(before.size() == 3);
  vm.stop_and_check_files();
}

}  // namespace kvmcdp::test
