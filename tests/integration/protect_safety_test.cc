// protect against a real, patched QEMU where a sysadmin's ordinary moves
// must not cost data or leave debris: a second protect of a drive that is
// already protected, commands run from another directory, the VM shutting
// down under protect, and a protect that fails before it starts.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "harness/protect_process.h"
#include "harness/qemu_process.h"
#include "harness/test_receiver.h"
#include "harness/vm_io.h"

namespace kvmcdp::test {
namespace {

using nlohmann::json;

constexpr uint64_t kDiskSize = 32ull << 20;

bool exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

void some_writes(QemuProcess& vm, int salt) {
  for (int i = 0; i < 6; ++i)
    qemu_io(vm, fmt::format("write -P {} {} 65536", (salt * 7 + i) % 250 + 1,
                            ((salt * 13 + i * 5) % 400) * 65536));
  qemu_io(vm, "flush");
}

json filters(QemuProcess& vm) {
  QmpReply r = vm.qmp().execute("query-cdp");
  REQUIRE(r.ok());
  return r.value;
}

// A protect that should refuse at once; one that does not (it took the
// filter over) is stopped when the test ends, its exit code -1 here.
CommandOutput protect_once(const TempDir& dir, const std::string& qmp, const std::string& drive,
                           const std::string& store) {
  std::string log = dir.file("once.log");
  unlink(log.c_str());
  BackgroundProcess p({KVMCDP_BINARY, "protect", "--qmp", qmp, "--drive", drive, "--store", store},
                      log);
  int rc = p.wait_exit(std::chrono::seconds(30));
  return {rc, p.output()};
}

}  // namespace

TEST_CASE("protect: a second protect of a protected drive into another store is refused (5)") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + disk, "bs=1M", "count=4"}).status == 0);
  REQUIRE(run_command({"truncate", "-s", std::to_string(kDiskSize), disk}).status == 0);
  auto vm = start_vm(dir, disk);
  std::string store_a = dir.file("a"), store_b = dir.file("b");
  std::vector<std::pair<uint64_t, std::string>> points;
  {
    ProtectProcess a(vm->tool_socket(), "vd0", store_a);
    REQUIRE_MESSAGE(a.wait_base_complete(std::chrono::seconds(60)), a.output());
    some_writes(*vm, 1);
    wait_acked(*vm);
    uint64_t stream = filters(*vm)[0]["stream-id"];

    // By the drive's device id and by its node name: both are the same disk.
    for (std::string drive : {"vd0", "disk0"}) {
      CAPTURE(drive);
      auto b = protect_once(dir, vm->tool_socket(), drive, store_b);
      CHECK_MESSAGE(b.status == 5, b.output);
      CHECK_MESSAGE(b.output.find(store_a) != std::string::npos, b.output);
      CHECK_MESSAGE(b.output.find(fmt::format("pid {}", a.pid())) != std::string::npos, b.output);
      CHECK_MESSAGE(b.output.rfind("kvmcdp: error: ", 0) == 0, b.output);
      CHECK_MESSAGE(!exists(store_b), "the refused protect left ", store_b);
    }
    // The first one never noticed: same filter, same stream, connected.
    json f = filters(*vm);
    REQUIRE(f.size() == 1);
    CHECK(f[0]["stream-id"] == stream);
    CHECK(f[0]["connected"] == true);
    some_writes(*vm, 2);
    wait_acked(*vm);
    points.push_back({filter_seq(*vm), md5_of_file(disk)});

    // Killed, its filter still belongs to store A: another store may not
    // take it, store A's own restart may.
    a.kill9();
  }
  auto b = protect_once(dir, vm->tool_socket(), "vd0", store_b);
  CHECK_MESSAGE(b.status == 5, b.output);
  CHECK_MESSAGE(b.output.find(store_a) != std::string::npos, b.output);
  CHECK_MESSAGE(b.output.find("not running") != std::string::npos, b.output);
  CHECK(!exists(store_b));
  {
    ProtectProcess again(vm->tool_socket(), "vd0", store_a);
    REQUIRE_MESSAGE(again.wait_output("protecting", std::chrono::seconds(30)), again.output());
    wait_acked(*vm);
    some_writes(*vm, 3);
    wait_acked(*vm);
    points.push_back({filter_seq(*vm), md5_of_file(disk)});
    REQUIRE_MESSAGE(again.stop() == 0, again.output());
    CHECK(again.output().find("error") == std::string::npos);
  }
  auto pj = json::parse(run_command({KVMCDP_BINARY, "points", "--json", "--store", store_a}).output);
  CHECK_MESSAGE(pj["gaps"].empty(), pj.dump());
  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", store_a});
  CHECK_MESSAGE(verify.status == 0, verify.output);
  for (const auto& [seq, md5] : points) check_restore(dir, store_a, seq, md5);
}

TEST_CASE("protect: a filter taken over by another receiver is not taken back") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"truncate", "-s", "16M", disk}).status == 0);
  auto vm = start_vm(dir, disk);
  std::string store = dir.file("store");
  ProtectProcess protect(vm->tool_socket(), "vd0", store);
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  // What an older kvmcdp, or someone by hand, does: cdp-connect elsewhere.
  TestReceiver other(dir.file("other.sock"), true);
  QmpReply r = vm->qmp().execute(
      "cdp-connect",
      {{"node-name", "kvmcdp-vd0"}, {"addr", {{"type", "unix"}, {"path", dir.file("other.sock")}}}});
  REQUIRE_MESSAGE(r.ok(), r.message);
  int rc = protect.wait_exit(std::chrono::seconds(30));
  CHECK_MESSAGE(rc == 5, protect.output());
  CHECK_MESSAGE(protect.output().find("took the cdp filter kvmcdp-vd0 over") != std::string::npos,
                protect.output());
  // The filter stays where it was taken, and keeps streaming there.
  json f = filters(*vm);
  REQUIRE(f.size() == 1);
  CHECK(f[0]["connected"] == true);
  qemu_io(*vm, "write -P 9 0 65536");
  wait_acked(*vm);
  CHECK(other.last_seq() == filter_seq(*vm));
}

TEST_CASE("protect: started with relative paths, mark and status work from anywhere") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"truncate", "-s", "16M", disk}).status == 0);
  auto vm = start_vm(dir, disk);
  std::string sock = vm->tool_socket();
  std::string sock_dir = sock.substr(0, sock.rfind('/'));
  std::string sock_name = sock.substr(sock.rfind('/') + 1);
  REQUIRE(sock_dir == dir.path());
  // Started in the VM's directory with everything relative to it.
  BackgroundProcess protect({"sh", "-c",
                             fmt::format("cd '{}' && exec '{}' protect --qmp '{}' --drive vd0 "
                                         "--store store",
                                         dir.path(), KVMCDP_BINARY, sock_name)},
                            dir.file("protect.log"));
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  std::string store = dir.file("store");
  // This process's directory is not the VM's.
  char cwd[4096];
  REQUIRE(getcwd(cwd, sizeof cwd));
  REQUIRE(std::string(cwd) != dir.path());
  auto mark = run_command({KVMCDP_BINARY, "mark", "--store", store, "from-elsewhere"});
  CHECK_MESSAGE(mark.status == 0, mark.output);
  // status has protect.json written at least once by now (mark read it).
  auto status = run_command({KVMCDP_BINARY, "status", "--json", "--store", store});
  REQUIRE_MESSAGE(status.status == 0, status.output);
  CHECK(json::parse(status.output)["qmp_socket"] == sock);
  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
  auto points = run_command({KVMCDP_BINARY, "points", "--json", "--store", store});
  REQUIRE(points.status == 0);
  json pj = json::parse(points.output);
  bool marked = false;
  for (const auto& m : pj["marks"]) marked |= m["name"] == "from-elsewhere";
  CHECK_MESSAGE(marked, points.output);
}

TEST_CASE("protect: the VM shutting down ends protect with 0, and status --check then exits 9") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"truncate", "-s", std::to_string(kDiskSize), disk}).status == 0);
  auto vm = start_vm(dir, disk);
  std::string store = dir.file("store");
  ProtectProcess protect(vm->tool_socket(), "vd0", store);
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  some_writes(*vm, 4);
  wait_acked(*vm);
  uint64_t seq = filter_seq(*vm);
  std::string md5 = md5_of_file(disk);

  auto live = run_command({KVMCDP_BINARY, "status", "--check", "--store", store});
  CHECK_MESSAGE(live.status == 0, live.output);
  CHECK(live.output.find("protected:   yes") != std::string::npos);

  // The same as a guest's poweroff without -no-shutdown: QEMU exits.
  vm->qmp().execute("quit");
  REQUIRE(vm->wait_exit(std::chrono::seconds(60)).has_value());
  int rc = protect.wait_exit(std::chrono::seconds(60));
  std::string out = protect.output();
  CHECK_MESSAGE(rc == 0, out);
  CHECK_MESSAGE(out.find("the VM shut down") != std::string::npos, out);
  CHECK_MESSAGE(out.find("error") == std::string::npos, out);

  auto after = run_command({KVMCDP_BINARY, "status", "--check", "--store", store});
  CHECK_MESSAGE(after.status == 9, after.output);
  CHECK_MESSAGE(after.output.find("protected:   no (the VM shut down at ") != std::string::npos,
                after.output);
  auto plain = run_command({KVMCDP_BINARY, "status", "--store", store});
  CHECK_MESSAGE(plain.status == 0, plain.output);
  auto js = run_command({KVMCDP_BINARY, "status", "--json", "--store", store});
  REQUIRE(js.status == 0);
  CHECK(json::parse(js.output)["protected"] == false);
  CHECK(json::parse(js.output).contains("vm_shutdown"));

  // The journal was closed cleanly: nothing to recover, the last point exact.
  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", store});
  CHECK_MESSAGE(verify.status == 0, verify.output);
  check_restore(dir, store, seq, md5);
}

TEST_CASE("protect: a protect that fails before it starts leaves nothing in the store") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"truncate", "-s", "16M", disk}).status == 0);
  auto vm = start_vm(dir, disk);
  std::string fresh = dir.file("fresh"), empty = dir.file("empty");
  REQUIRE(mkdir(empty.c_str(), 0755) == 0);
  for (const std::string& store : {fresh, empty}) {
    CAPTURE(store);
    auto nodrive = run_command({KVMCDP_BINARY, "protect", "--qmp", vm->tool_socket(), "--drive",
                                "nope", "--store", store});
    CHECK(nodrive.status == 7);
    CHECK_MESSAGE(!exists(store + "/lock"), "a failed protect left ", store, "/lock");
  }
  CHECK(!exists(fresh));  // it made the directory, so it takes it away
  CHECK(exists(empty));   // the sysadmin's own directory stays
  // The next protect of the store is not in anyone's way.
  ProtectProcess protect(vm->tool_socket(), "vd0", fresh);
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  CHECK(protect.stop() == 0);
}

// The disk filling up right after the base copy, as the manifest that
// records it is written: the receiver thread is already running, and
// protect must stop it and take its filter away, not die on a signal.
TEST_CASE("protect: the manifest write failing after the base copy is one clear error") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"truncate", "-s", "16M", disk}).status == 0);
  auto vm = start_vm(dir, disk);
  std::string store = dir.file("store");
  BackgroundProcess p({"env", "KVMCDP_FAIL_AT_STEP=protect:base-manifest", KVMCDP_BINARY,
                       "protect", "--qmp", vm->tool_socket(), "--drive", "vd0", "--store", store},
                      dir.file("protect.log"));
  int rc = p.wait_exit(std::chrono::seconds(60));
  std::string out = p.output();
  CHECK_MESSAGE(rc == 1, out);  // not 128 + SIGABRT
  size_t errors = 0;
  for (size_t at = out.find("kvmcdp: error: "); at != std::string::npos;
       at = out.find("kvmcdp: error: ", at + 1))
    ++errors;
  CHECK_MESSAGE(errors == 1, out);
  CHECK_MESSAGE(out.find("No space left on device") != std::string::npos, out);
  CHECK_MESSAGE(out.find("terminate") == std::string::npos, out);
  // The guest goes on without a filter that nobody reads.
  CHECK(filters(*vm).empty());
  CHECK(vm->qmp().execute("query-status").ok());
  qemu_io(*vm, "write -P 7 0 65536");
  // The store is not in anyone's way: the next protect takes it.
  ProtectProcess again(vm->tool_socket(), "vd0", store);
  REQUIRE_MESSAGE(again.wait_output("protecting", std::chrono::seconds(30)), again.output());
  CHECK(again.stop() == 0);
}

}  // namespace kvmcdp::test
