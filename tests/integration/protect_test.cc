// protect + restore against a real, patched QEMU: the paper's test at many
// points.  A VM (no guest: -S) gets writes through its virtio-blk device
// with HMP's qemu-io, which goes through the device's BlockBackend and so
// through the cdp filter like guest I/O.  At each checkpoint the test
// records the disk's MD5, the filter's seq and the wall time; afterwards
// every checkpoint is restored by --seq and by --at and must match.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <sstream>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "harness/qemu_process.h"
#include "harness/protect_process.h"
#include "harness/vm_io.h"

namespace kvmcdp::test {
namespace {

constexpr uint64_t kDiskSize = 32ull << 20;

struct Checkpoint {
  uint64_t seq;
  std::string time;
  std::string md5;
};

// One round of mixed I/O: pattern writes of random sizes and offsets
// (overlapping earlier ones), write-zeroes with and without unmap,
// discards and flushes.
void random_round(QemuProcess& vm, std::mt19937_64& rng) {
  auto pick = [&](uint64_t max_len) {
    uint64_t len = (1 + rng() % (max_len / 512)) * 512;
    uint64_t off = (rng() % ((kDiskSize - len) / 512)) * 512;
    return std::pair{off, len};
  };
  for (int i = 0; i < 12; ++i) {
    auto [off, len] = pick(256 << 10);
    switch (rng() % 6) {
      case 0: qemu_io(vm, fmt::format("write -z {} {}", off, len)); break;
      case 1: qemu_io(vm, fmt::format("write -z -u {} {}", off, len)); break;
      case 2: qemu_io(vm, fmt::format("discard {} {}", off, len)); break;
      case 3: qemu_io(vm, "flush"); break;
      default:
        qemu_io(vm, fmt::format("write -P {} {} {}", rng() % 255 + 1, off, len));
    }
  }
}

}  // namespace

TEST_CASE("protect: restore by --seq and --at matches the disk's MD5 at 10 points") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  // Start from a disk with data, so the base copy matters.
  REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + disk, "bs=1M", "count=8"}).status == 0);
  REQUIRE(run_command({"truncate", "-s", std::to_string(kDiskSize), disk}).status == 0);
  auto vm = start_vm(dir, disk);

  std::string store = dir.file("store");
  ProtectProcess protect(vm->tool_socket(), "vd0", store);
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());

  std::mt19937_64 rng(20261121);
  std::vector<Checkpoint> points;
  for (int round = 0; round < 10; ++round) {
    random_round(*vm, rng);
    // Writes through HMP are complete when it returns: the file holds them.
    Checkpoint c{filter_seq(*vm), iso_now(), md5_of_file(disk)};
    points.push_back(c);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto marked = run_command({KVMCDP_BINARY, "mark", "--store", store, "after-rounds"});
  CHECK_MESSAGE(marked.status == 0, marked.output);
  // A second mark of that name is refused (exit 8) once the first is in
  // the journal, naming the first.
  std::string mark_seq = marked.output.substr(0, marked.output.find('\n'));
  bool journaled = false;
  for (int i = 0; i < 600 && !journaled; ++i) {
    auto listed = run_command({KVMCDP_BINARY, "points", "--store", store, "--json"});
    journaled = listed.output.find("\"after-rounds\"") != std::string::npos;
    if (!journaled) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  REQUIRE(journaled);
  auto again = run_command({KVMCDP_BINARY, "mark", "--store", store, "after-rounds"});
  CHECK_MESSAGE(again.status == 8, again.output);
  CHECK_MESSAGE(again.output.find("'after-rounds' exists already (seq " + mark_seq + ",") !=
                    std::string::npos,
                again.output);

  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
  CHECK(protect.output().find("base copy complete") != std::string::npos);

  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", store});
  CHECK_MESSAGE(verify.status == 0, verify.output);

  for (const auto& c : points) {
    std::string out = dir.file(fmt::format("r-{}.raw", c.seq));
    auto by_seq = run_command({KVMCDP_BINARY, "restore", "--force", "--quiet", "--store", store, "--seq",
                               std::to_string(c.seq), "-o", out});
    REQUIRE_MESSAGE(by_seq.status == 0, by_seq.output);
    CHECK_MESSAGE(md5_of_file(out) == c.md5, "seq ", c.seq);
    auto by_time = run_command({KVMCDP_BINARY, "restore", "--force", "--quiet", "--store", store, "--at",
                                c.time, "-o", out});
    REQUIRE_MESSAGE(by_time.status == 0, by_time.output);
    CHECK_MESSAGE(by_time.output.find(std::to_string(c.seq)) != std::string::npos,
                  "--at ", c.time, " restored ", by_time.output, " not seq ", c.seq);
    CHECK_MESSAGE(md5_of_file(out) == c.md5, "time ", c.time);
  }
  std::string out = dir.file("mark.raw");
  auto by_mark = run_command({KVMCDP_BINARY, "restore", "--force", "--quiet", "--store", store, "--mark",
                              "after-rounds", "-o", out});
  REQUIRE_MESSAGE(by_mark.status == 0, by_mark.output);
  CHECK(md5_of_file(out) == points.back().md5);

  // Points the journal cannot vouch for are refused with exit code 6.
  auto future = run_command({KVMCDP_BINARY, "restore", "--force", "--store", store, "--seq",
                             std::to_string(points.back().seq + 1000), "-o", out});
  CHECK(future.status == 6);
  CHECK(future.output.rfind("kvmcdp: error: ", 0) == 0);
  auto early = run_command({KVMCDP_BINARY, "restore", "--force", "--store", store, "--at",
                            "2001-01-01T00:00:00Z", "-o", out});
  CHECK(early.status == 6);

  // The VM never saw an error and the filter is gone after the clean stop.
  CHECK(vm->console().find("wrote") != std::string::npos);
  CHECK(vm->console().find("failed") == std::string::npos);
  CHECK(vm->console().find("rror") == std::string::npos);
  QmpReply cdp = vm->qmp().execute("query-cdp");
  REQUIRE(cdp.ok());
  CHECK(cdp.value.empty());
}

// Every checkpoint restored by --seq has the MD5 the disk had then.
void check_restores_by_seq(const TempDir& dir, const std::string& store,
                           const std::vector<Checkpoint>& points) {
  for (const auto& c : points) check_restore(dir, store, c.seq, c.md5);
}

TEST_CASE("protect: kill -9, writes meanwhile, restart: the filter resends, nothing lost") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"truncate", "-s", std::to_string(kDiskSize), disk}).status == 0);
  auto vm = start_vm(dir, disk);
  std::string store = dir.file("store");
  std::mt19937_64 rng(42);
  std::vector<Checkpoint> points;
  {
    ProtectProcess first(vm->tool_socket(), "vd0", store);
    REQUIRE_MESSAGE(first.wait_base_complete(std::chrono::seconds(60)), first.output());
    random_round(*vm, rng);
    wait_acked(*vm);
    points.push_back({filter_seq(*vm), "", md5_of_file(disk)});
    first.kill9();
  }
  // The guest keeps writing with nobody listening: the filter queues.
  for (int i = 0; i < 5; ++i)
    qemu_io(*vm, fmt::format("write -P {} {} 65536", 10 + i, i * 1048576));
  points.push_back({filter_seq(*vm), "", md5_of_file(disk)});

  ProtectProcess second(vm->tool_socket(), "vd0", store);
  REQUIRE_MESSAGE(second.wait_output("protecting", std::chrono::seconds(30)), second.output());
  wait_acked(*vm);
  random_round(*vm, rng);
  wait_acked(*vm);
  points.push_back({filter_seq(*vm), "", md5_of_file(disk)});
  REQUIRE_MESSAGE(second.stop() == 0, second.output());

  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", store});
  CHECK_MESSAGE(verify.status == 0, verify.output);
  check_restores_by_seq(dir, store, points);
}

TEST_CASE("protect: a second protect of the same store exits busy (5)") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"truncate", "-s", "16M", disk}).status == 0);
  auto vm = start_vm(dir, disk);
  std::string store = dir.file("store");
  ProtectProcess first(vm->tool_socket(), "vd0", store);
  REQUIRE_MESSAGE(first.wait_base_complete(std::chrono::seconds(60)), first.output());
  auto second = run_command(
      {KVMCDP_BINARY, "protect", "--qmp", vm->tool_socket(), "--drive", "vd0", "--store", store});
  CHECK(second.status == 5);
  CHECK(second.output.find("locked by pid") != std::string::npos);
  auto status = run_command({KVMCDP_BINARY, "status", "--store", store, "--json"});
  CHECK_MESSAGE(status.status == 0, status.output);
  CHECK(json::parse(status.output)["protected"] == true);
  CHECK(first.stop() == 0);
}

TEST_CASE("protect: unknown drive and missing QEMU are clear errors") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"truncate", "-s", "16M", disk}).status == 0);
  auto vm = start_vm(dir, disk);
  auto nodrive = run_command({KVMCDP_BINARY, "protect", "--qmp", vm->tool_socket(), "--drive",
                              "nope", "--store", dir.file("s1")});
  CHECK(nodrive.status == 7);
  CHECK(nodrive.output == "kvmcdp: error: QEMU has no drive or block node named 'nope'\n");
  auto noqemu = run_command({KVMCDP_BINARY, "protect", "--qmp", dir.file("none.sock"), "--drive",
                             "vd0", "--store", dir.file("s2")});
  CHECK(noqemu.status == 3);
  CHECK(vm->qmp().execute("query-status").ok());
}

}  // namespace kvmcdp::test

namespace kvmcdp::test {

TEST_CASE("protect: a damaged journal: verify names the place, restore stops before it") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"truncate", "-s", std::to_string(kDiskSize), disk}).status == 0);
  auto vm = start_vm(dir, disk);
  std::string store = dir.file("store");
  std::mt19937_64 rng(7);
  Checkpoint early{}, late{};
  {
    ProtectProcess protect(vm->tool_socket(), "vd0", store);
    REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
    random_round(*vm, rng);
    wait_acked(*vm);
    early = {filter_seq(*vm), "", md5_of_file(disk)};
    random_round(*vm, rng);
    wait_acked(*vm);
    late = {filter_seq(*vm), "", md5_of_file(disk)};
    REQUIRE(protect.stop() == 0);
  }
  // The journal's last record (protect's stop mark) sits in the last frame.
  auto points = run_command({KVMCDP_BINARY, "points", "--json", "--store", store});
  REQUIRE(points.status == 0);
  uint64_t last_seq = json::parse(points.output)["recoverable"].back()["last_seq"];
  CHECK(last_seq > late.seq);
  std::string seg = store + "/journal/000000000001.seg";
  std::string pristine = read_file(seg);
  REQUIRE(pristine.size() > 200);

  for (bool truncate_instead : {false, true}) {
    CAPTURE(truncate_instead);
    std::string damaged = pristine;
    if (truncate_instead)
      damaged.resize(damaged.size() - 100);
    else
      damaged[damaged.size() - 100] ^= 0x40;
    write_file(seg, damaged);

    auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", store});
    CHECK(verify.status == 4);
    CHECK_MESSAGE(verify.output.find(seg) != std::string::npos, verify.output);
    CHECK_MESSAGE(verify.output.find("damage at byte") != std::string::npos, verify.output);
    // The same verdict as one JSON object on stdout, for monitoring.
    auto as_json = run_command({"sh", "-c", std::string(KVMCDP_BINARY) +
                                                " journal verify --json --store " + store +
                                                " 2>/dev/null"});
    CHECK(as_json.status == 4);
    auto j = nlohmann::json::parse(as_json.output, nullptr, false);
    REQUIRE_MESSAGE(j.is_object(), as_json.output);
    CHECK(j["ok"] == false);
    CHECK_MESSAGE(j["damage"].get<std::string>().find(seg) != std::string::npos, as_json.output);
    CHECK(j["records"].get<uint64_t>() > 0);

    std::string out = dir.file("r.raw");
    auto before = run_command({KVMCDP_BINARY, "restore", "--force", "--quiet", "--store", store, "--seq",
                               std::to_string(early.seq), "-o", out});
    REQUIRE_MESSAGE(before.status == 0, before.output);
    CHECK(md5_of_file(out) == early.md5);
    auto after = run_command({KVMCDP_BINARY, "restore", "--force", "--store", store, "--seq",
                              std::to_string(last_seq), "-o", out});
    CHECK_MESSAGE(after.status == 6, after.output);
    CHECK(after.output.rfind("kvmcdp: error: ", 0) == 0);
  }
  // Undamaged again, everything restores: the reader guessed nothing.
  write_file(seg, pristine);
  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", store});
  CHECK_MESSAGE(verify.status == 0, verify.output);
  auto as_json = run_command({KVMCDP_BINARY, "journal", "verify", "--json", "--store", store});
  CHECK_MESSAGE(as_json.status == 0, as_json.output);
  auto j = nlohmann::json::parse(as_json.output, nullptr, false);
  REQUIRE_MESSAGE(j.is_object(), as_json.output);
  CHECK(j["ok"] == true);
  CHECK(j["damage"].is_null());
  CHECK(j["last_seq"].get<uint64_t>() >= last_seq);
}

}  // namespace kvmcdp::test

namespace kvmcdp::test {

TEST_CASE("protect: receiver gone past the queue budget: gap, resync, exact again") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"truncate", "-s", std::to_string(kDiskSize), disk}).status == 0);
  auto vm = start_vm(dir, disk);
  std::string store = dir.file("store");
  std::vector<std::string> small = {"--queue-size", "1", "--filter-timeout", "300"};
  std::mt19937_64 rng(99);
  Checkpoint before_gap{};
  {
    ProtectProcess first(vm->tool_socket(), "vd0", store, small);
    REQUIRE_MESSAGE(first.wait_base_complete(std::chrono::seconds(60)), first.output());
    random_round(*vm, rng);
    wait_acked(*vm);
    before_gap = {filter_seq(*vm), "", md5_of_file(disk)};
    first.kill9();
  }
  // 4 MiB with nobody listening overflows the 1 MiB queue: after the
  // timeout the guest goes on and the filter keeps a dirty bitmap.
  for (int i = 0; i < 64; ++i)
    qemu_io(*vm, fmt::format("write -P {} {} 65536", i + 1, (i * 3 % 200) * 65536));
  uint64_t seq_in_gap = filter_seq(*vm);
  QmpReply q = vm->qmp().execute("query-cdp");
  REQUIRE(q.ok());
  CHECK(q.value[0]["gap"] == true);
  CHECK(q.value[0]["connected"] == false);
  uint64_t dirty = q.value[0]["dirty-bytes"].get<uint64_t>();
  CHECK(dirty > 0);
  CHECK(vm->qmp().execute("query-status").value["status"] == "prelaunch");

  ProtectProcess second(vm->tool_socket(), "vd0", store, small);
  REQUIRE_MESSAGE(second.wait_output("protecting", std::chrono::seconds(30)), second.output());
  wait_acked(*vm);
  for (int i = 0; i < 500; ++i) {  // the resync runs after the handshake
    QmpReply r = vm->qmp().execute("query-cdp");
    if (r.value[0]["gap"] == false && r.value[0]["acked-seq"] == r.value[0]["seq"]) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  QmpReply after = vm->qmp().execute("query-cdp");
  CHECK(after.value[0]["gap"] == false);
  Checkpoint resynced{filter_seq(*vm), "", md5_of_file(disk)};
  REQUIRE_MESSAGE(second.stop() == 0, second.output());

  // The resync resent exactly the dirty ranges: as many bytes as the
  // bitmap held.
  auto dump = run_command({KVMCDP_BINARY, "journal", "dump", "--json", "--store", store});
  REQUIRE(dump.status == 0);
  uint64_t resent = 0;
  bool saw_gap = false, saw_done = false;
  std::istringstream lines(dump.output);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] != '{') continue;
    json r = json::parse(line);
    if (r["type"] == "write" && (r["flags"].get<int>() & 4)) resent += r["length"].get<uint64_t>();
    saw_gap |= r["type"] == "gap";
    saw_done |= r["type"] == "resync-done";
  }
  CHECK(saw_gap);
  CHECK(saw_done);
  CHECK(resent == dirty);

  auto points = run_command({KVMCDP_BINARY, "points", "--json", "--store", store});
  REQUIRE(points.status == 0);
  json pj = json::parse(points.output);
  CHECK(pj["recoverable"].size() == 2);
  CHECK(pj["gaps"].size() == 1);

  std::string out = dir.file("r.raw");
  check_restores_by_seq(dir, store, {before_gap, resynced});
  auto in_gap = run_command({KVMCDP_BINARY, "restore", "--force", "--store", store, "--seq",
                             std::to_string(seq_in_gap), "-o", out});
  CHECK_MESSAGE(in_gap.status == 6, in_gap.output);
  CHECK(in_gap.output.find("nearest") != std::string::npos);
}

}  // namespace kvmcdp::test

namespace kvmcdp::test {

TEST_CASE("protect: the store runs out of space: clear error, guest unharmed, resumes") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"truncate", "-s", std::to_string(kDiskSize), disk}).status == 0);
  auto vm = start_vm(dir, disk);
  SmallFs fs(dir.file("fs"), "8M");
  std::string store = fs.path + "/store";
  Checkpoint before{}, after{};
  {
    ProtectProcess first(vm->tool_socket(), "vd0", store);
    REQUIRE_MESSAGE(first.wait_base_complete(std::chrono::seconds(60)), first.output());
    qemu_io(*vm, "write -P 1 0 1M");
    wait_acked(*vm);
    before = {filter_seq(*vm), "", md5_of_file(disk)};
    // Incompressible data, more than the store can hold.
    std::string noise = dir.file("noise");
    REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + noise, "bs=1M", "count=12"}).status == 0);
    for (int i = 0; i < 12; ++i)
      qemu_io(*vm, fmt::format("write -s {} {} 1M", noise, (2 + i) * 1048576));
    // protect gives up by itself and takes its filter away: nobody would
    // read what it queues.
    int rc = first.wait_exit(std::chrono::seconds(60));
    std::string out = first.output();
    CHECK_MESSAGE(rc == 1, out);
    CHECK_MESSAGE(out.find("kvmcdp: error: ") != std::string::npos, out);
    CHECK_MESSAGE(out.find("No space left on device") != std::string::npos, out);
  }
  // The guest kept going: its writes are on the disk, no filter is left.
  CHECK(vm->qmp().execute("query-status").ok());
  QmpReply q = vm->qmp().execute("query-cdp");
  CHECK_MESSAGE(q.value.empty(), q.value.dump());

  fs.grow("64M");
  ProtectProcess second(vm->tool_socket(), "vd0", store);
  REQUIRE_MESSAGE(second.wait_output("continuing the stream after seq", std::chrono::seconds(30)),
                  second.output());
  for (int i = 0; i < 500; ++i) {  // until the full resync is done
    QmpReply r = vm->qmp().execute("query-cdp");
    if (r.value.size() == 1 && r.value[0]["gap"] == false &&
        r.value[0]["acked-seq"] == r.value[0]["seq"])
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  wait_acked(*vm);
  after = {filter_seq(*vm), "", md5_of_file(disk)};
  REQUIRE_MESSAGE(second.stop() == 0, second.output());

  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", store});
  CHECK_MESSAGE(verify.status == 0, verify.output);
  check_restores_by_seq(dir, store, {before, after});
}

}  // namespace kvmcdp::test

namespace kvmcdp::test {

TEST_CASE("protect: stopped cleanly, restarted later: the stream continues after a full resync") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"truncate", "-s", std::to_string(kDiskSize), disk}).status == 0);
  auto vm = start_vm(dir, disk);
  std::string store = dir.file("store");
  std::mt19937_64 rng(5);
  Checkpoint first_run{}, unprotected{}, second_run{};
  {
    ProtectProcess p(vm->tool_socket(), "vd0", store);
    REQUIRE_MESSAGE(p.wait_base_complete(std::chrono::seconds(60)), p.output());
    random_round(*vm, rng);
    wait_acked(*vm);
    first_run = {filter_seq(*vm), iso_now(), md5_of_file(disk)};
    REQUIRE_MESSAGE(p.stop() == 0, p.output());
  }
  // Written while nothing protects the disk.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  random_round(*vm, rng);
  unprotected = {0, iso_now(), md5_of_file(disk)};
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  {
    ProtectProcess p(vm->tool_socket(), "vd0", store);
    // The log holds both runs: wait for what only the second one says.
    REQUIRE_MESSAGE(p.wait_output("continuing the stream after seq", std::chrono::seconds(30)),
                    p.output());
    for (int i = 0; i < 500; ++i) {  // until the full resync is done
      QmpReply r = vm->qmp().execute("query-cdp");
      if (r.value.size() == 1 && r.value[0]["gap"] == false &&
          r.value[0]["acked-seq"] == r.value[0]["seq"])
        break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    random_round(*vm, rng);
    wait_acked(*vm);
    second_run = {filter_seq(*vm), iso_now(), md5_of_file(disk)};
    REQUIRE_MESSAGE(p.stop() == 0, p.output());
  }
  CHECK(second_run.seq > first_run.seq);
  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", store});
  CHECK_MESSAGE(verify.status == 0, verify.output);

  std::string out = dir.file("r.raw");
  for (const auto& c : {first_run, second_run}) {
    for (std::string how : {"--seq", "--at"}) {
      auto r = run_command({KVMCDP_BINARY, "restore", "--force", "--quiet", "--store", store, how,
                            how == "--seq" ? std::to_string(c.seq) : c.time, "-o", out});
      REQUIRE_MESSAGE(r.status == 0, how, " ", r.output);
      CHECK_MESSAGE(md5_of_file(out) == c.md5, how, " ", c.seq);
    }
  }
  // While nothing protected the disk, nothing can be restored.
  auto blind = run_command(
      {KVMCDP_BINARY, "restore", "--force", "--store", store, "--at", unprotected.time, "-o", out});
  CHECK_MESSAGE(blind.status == 6, blind.output);
}

}  // namespace kvmcdp::test

namespace kvmcdp::test {

TEST_CASE("protect + snapshot create: the filter stays on top, no gap, restores exact") {
  TempDir dir;
  std::string disk = dir.file("disk.qcow2");
  REQUIRE(run_command({qemu_bin("qemu-img"), "create", "-q", "-f", "qcow2", disk, "32M"}).status ==
          0);
  auto vm = QemuProcess::start_system(
      dir, {"-S", "-blockdev", fmt::format("driver=file,filename={},node-name=disk0-file", disk),
            "-blockdev", "driver=qcow2,file=disk0-file,node-name=disk0", "-device",
            "virtio-blk-pci,drive=disk0,id=vd0"});
  // The guest-visible disk, read through QEMU's own tools (the chain grows).
  auto disk_md5 = [&](const std::string& top) {
    std::string flat = dir.file("flat.raw");
    REQUIRE(run_command({qemu_bin("qemu-img"), "convert", "-U", "-O", "raw", top, flat}).status ==
            0);
    return md5_of_file(flat);
  };
  std::string store = dir.file("store");
  std::string tree = dir.file("tree");
  std::mt19937_64 rng(11);
  std::vector<Checkpoint> points;
  ProtectProcess protect(vm->tool_socket(), "vd0", store);
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  random_round(*vm, rng);
  wait_acked(*vm);
  REQUIRE(vm->qmp().execute("stop").ok());  // flushes qcow2 metadata for the -U read
  points.push_back({filter_seq(*vm), "", disk_md5(disk)});
  REQUIRE(vm->qmp().execute("cont").ok());

  auto snap = run_command({KVMCDP_BINARY, "snapshot", "create", "--tree", tree, "--qmp",
                           vm->tool_socket(), "--drive", "disk0", "s1"});
  REQUIRE_MESSAGE(snap.status == 0, snap.output);
  CHECK(snap.output.find(" ms") != std::string::npos);
  QmpReply cdp = vm->qmp().execute("query-cdp");
  REQUIRE(cdp.value.size() == 1);
  CHECK(cdp.value[0]["connected"] == true);
  CHECK(cdp.value[0]["gap"] == false);

  random_round(*vm, rng);
  wait_acked(*vm);
  REQUIRE(vm->qmp().execute("stop").ok());
  // The VM now writes into the tree's overlay on top of the old disk.
  auto top = run_command({KVMCDP_BINARY, "snapshot", "list", "--tree", tree, "--json"});
  REQUIRE_MESSAGE(top.status == 0, top.output);
  std::string active;
  for (const auto& n : json::parse(top.output))
    if (n.value("active", false)) active = n.value("file", "");
  REQUIRE_MESSAGE(!active.empty(), top.output);
  if (active[0] != '/') active = tree + "/" + active;
  points.push_back({filter_seq(*vm), "", disk_md5(active)});
  REQUIRE(vm->qmp().execute("cont").ok());
  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());

  auto pj = json::parse(run_command({KVMCDP_BINARY, "points", "--json", "--store", store}).output);
  CHECK(pj["gaps"].empty());
  check_restores_by_seq(dir, store, points);
}

TEST_CASE("protect: the records cross in the shared-memory ring, or on the socket without one") {
  // Protocol version 3 with this QEMU; a protect that cannot make a ring
  // (a test hook fails it) answers 2, and the filter keeps the socket.
  for (bool ring : {true, false}) {
    CAPTURE(ring);
    TempDir dir;
    std::string disk = dir.file("disk.raw");
    REQUIRE(run_command({"truncate", "-s", std::to_string(kDiskSize), disk}).status == 0);
    auto vm = start_vm(dir, disk);
    std::string store = dir.file("store");
    std::vector<std::string> argv = {KVMCDP_BINARY, "protect", "--qmp", vm->tool_socket(),
                                     "--drive", "vd0", "--store", store};
    if (!ring) argv.insert(argv.begin(), {"env", "KVMCDP_FAIL_AT_STEP=ring:create"});
    BackgroundProcess protect(argv, store + ".protect.log");
    REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
    std::mt19937_64 rng(ring ? 3 : 4);
    std::vector<Checkpoint> points;
    for (int i = 0; i < 3; ++i) {
      random_round(*vm, rng);
      wait_acked(*vm);
      points.push_back({filter_seq(*vm), "", md5_of_file(disk)});
    }
    // protect rewrites its state file once a second.
    json version;
    for (int i = 0; i < 100 && version.is_null(); ++i) {
      auto status = run_command({KVMCDP_BINARY, "status", "--json", "--store", store});
      REQUIRE_MESSAGE(status.status == 0, status.output);
      version = json::parse(status.output)["stream_version"];
      if (version.is_null()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    CHECK(version == (ring ? 3 : 2));
    REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
    check_restores_by_seq(dir, store, points);
  }
}

}  // namespace kvmcdp::test
