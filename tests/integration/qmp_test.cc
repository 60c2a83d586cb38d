// The QMP client against real QEMU processes: a command, an error reply,
// events in order, fd passing.
#include <fcntl.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include "harness/qemu_process.h"

namespace kvmcdp::test {

TEST_CASE("qmp: command, error reply and ordered events with qemu-system") {
  TempDir dir;
  auto vm = QemuProcess::start_system(dir, {"-S"});

  QmpReply status = vm->qmp().execute("query-status");
  REQUIRE(status.ok());
  CHECK(status.value["status"] == "prelaunch");

  QmpReply bad = vm->qmp().execute("no-such-command");
  CHECK(bad.failure == QmpFailure::kCommand);
  CHECK(bad.error_class == "CommandNotFound");

  QmpReply wrong_args = vm->qmp().execute("blockdev-del", {{"node-name", "nope"}});
  CHECK(wrong_args.failure == QmpFailure::kCommand);
  CHECK(wrong_args.error_class == "GenericError");
  CHECK(!wrong_args.message.empty());

  // RESUME and STOP arrive around the replies; they come out in order.
  REQUIRE(vm->qmp().execute("cont").ok());
  REQUIRE(vm->qmp().execute("stop").ok());
  auto first = vm->qmp().next_event(std::chrono::seconds(5));
  auto second = vm->qmp().next_event(std::chrono::seconds(5));
  REQUIRE(first);
  REQUIRE(second);
  CHECK((*first)["event"] == "RESUME");
  CHECK((*second)["event"] == "STOP");
  CHECK(!vm->qmp().next_event(std::chrono::milliseconds(100)));
  // The connection is still usable after a command error.
  CHECK(vm->qmp().execute("query-status").value["status"] == "paused");
}

TEST_CASE("qmp: add-fd passes a file descriptor to qemu-system") {
  TempDir dir;
  write_file(dir.file("disk.raw"), std::string(1 << 20, 'x'));
  auto qsd = QemuProcess::start_system(dir, {"-S"});

  int fd = open(dir.file("disk.raw").c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  QmpReply got = qsd->qmp().execute_with_fd("add-fd", {{"fdset-id", 1}}, fd);
  close(fd);
  REQUIRE_MESSAGE(got.ok(), got.message);
  QmpReply add = qsd->qmp().execute(
      "blockdev-add", {{"driver", "file"}, {"node-name", "f0"}, {"filename", "/dev/fdset/1"}});
  REQUIRE_MESSAGE(add.ok(), add.message);
  QmpReply nodes = qsd->qmp().execute("query-named-block-nodes");
  REQUIRE(nodes.ok());
  bool found = false;
  for (const auto& n : nodes.value) found |= n["node-name"] == "f0" && n["image"]["virtual-size"] == (1 << 20);
  CHECK(found);

  // Without an fd, getfd is a command error, not a transport failure.
  QmpReply nofd = qsd->qmp().execute("getfd", {{"fdname", "x"}});
  CHECK(nofd.failure == QmpFailure::kCommand);
}

TEST_CASE("qmp: the CLI's qmp subcommand talks to a real QEMU") {
  TempDir dir;
  auto qsd = QemuProcess::start_storage_daemon(dir, {});
  auto ok = run_command({KVMCDP_BINARY, "qmp", "--qmp", qsd->tool_socket(),
                         R"({"execute":"query-block-exports"})"});
  CHECK(ok.status == 0);
  CHECK(ok.output.find("[]") != std::string::npos);
  auto bad = run_command({KVMCDP_BINARY, "qmp", "--qmp", qsd->tool_socket(),
                          R"({"execute":"blockdev-del","arguments":{"node-name":"x"}})"});
  CHECK(bad.status == 3);
  CHECK(bad.output.rfind("kvmcdp: error: blockdev-del failed: GenericError", 0) == 0);
  auto nosock = run_command({KVMCDP_BINARY, "qmp", "--qmp", dir.file("nothing.sock"),
                             R"({"execute":"query-status"})"});
  CHECK(nosock.status == 3);
  CHECK(nosock.output.find("cannot connect to QMP socket") != std::string::npos);
}

}  // namespace kvmcdp::test
