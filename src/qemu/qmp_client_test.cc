// The QMP client against a hostile fake peer: no greeting, garbage, a
// connection cut in the middle of a reply.  Every case must end in a typed
// failure within its timeout: no hang, no crash.
#include "qemu/qmp_client.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include <doctest/doctest.h>

#include "qemu/qmp_test_util.h"

namespace kvmcdp {

using namespace qmp_testing;

TEST_CASE("qmp fake: a peer that never greets times out") {
  FakePeer peer([](int fd) { hear_line(fd); });
  auto c = QmpClient::connect(peer.path(), Millis(300));
  REQUIRE(!c);
  CHECK(c.status().kind() == ErrorKind::kQemu);
  CHECK(c.status().message().find("timeout") != std::string::npos);
}

TEST_CASE("qmp fake: garbage instead of a greeting is a protocol error") {
  FakePeer peer([](int fd) { say(fd, "HTTP/1.1 400 Bad Request\r\n\r\n"); });
  auto c = QmpClient::connect(peer.path(), Millis(2000));
  REQUIRE(!c);
  CHECK(c.status().message().find("protocol error") != std::string::npos);
}

TEST_CASE("qmp fake: JSON that is not a greeting is refused") {
  FakePeer peer([](int fd) { say(fd, "{\"hello\":1}\n"); });
  auto c = QmpClient::connect(peer.path(), Millis(2000));
  REQUIRE(!c);
  CHECK(c.status().message().find("not a QMP greeting") != std::string::npos);
}

TEST_CASE("qmp fake: a connection cut mid-reply is a transport failure") {
  FakePeer peer([](int fd) {
    handshake(fd);
    hear_line(fd);
    say(fd, R"({"return": {"status": "runn)");
  });
  auto c = QmpClient::connect(peer.path(), Millis(2000));
  REQUIRE(c);
  QmpReply r = (*c)->execute("query-status", nullptr, Millis(2000));
  CHECK(r.failure == QmpFailure::kTransport);
  CHECK(r.message.find("middle of a message") != std::string::npos);
  // Once broken, it stays broken without touching the socket.
  CHECK((*c)->execute("query-status").failure == QmpFailure::kTransport);
}

TEST_CASE("qmp fake: garbage after the handshake is a protocol error") {
  FakePeer peer([](int fd) {
    handshake(fd);
    hear_line(fd);
    say(fd, "\x01\x02\xff not json\n");
    hear_line(fd);
  });
  auto c = QmpClient::connect(peer.path(), Millis(2000));
  REQUIRE(c);
  QmpReply r = (*c)->execute("query-status", nullptr, Millis(2000));
  CHECK(r.failure == QmpFailure::kProtocol);
}

TEST_CASE("qmp fake: a silent peer makes a command time out, not hang") {
  FakePeer peer([](int fd) {
    handshake(fd);
    hear_line(fd);
    hear_line(fd);  // until the client closes
  });
  auto c = QmpClient::connect(peer.path(), Millis(2000));
  REQUIRE(c);
  QmpReply r = (*c)->execute("query-status", nullptr, Millis(200));
  CHECK(r.failure == QmpFailure::kTimeout);
}

TEST_CASE("qmp fake: events before a reply are kept in order, stale replies skipped") {
  FakePeer peer([](int fd) {
    handshake(fd);
    json cmd = json::parse(hear_line(fd));
    say(fd, R"({"event":"A","data":{}})" "\n");
    say(fd, R"({"return":{},"id":999})" "\n");  // not ours
    say(fd, R"({"event":"B","data":{}})" "\n");
    say(fd, json({{"return", {{"x", 1}}}, {"id", cmd["id"]}}).dump() + "\n");
    say(fd, R"({"event":"C","data":{}})" "\n");
    hear_line(fd);
  });
  auto c = QmpClient::connect(peer.path(), Millis(2000));
  REQUIRE(c);
  QmpReply r = (*c)->execute("anything", nullptr, Millis(2000));
  REQUIRE(r.ok());
  CHECK(r.value["x"] == 1);
  for (const char* name : {"A", "B", "C"}) {
    auto e = (*c)->next_event(Millis(2000));
    REQUIRE(e);
    CHECK((*e)["event"] == name);
  }
}

TEST_CASE("qmp fake: an error reply is a command error with its class") {
  FakePeer peer([](int fd) {
    handshake(fd);
    json cmd = json::parse(hear_line(fd));
    say(fd, json({{"error", {{"class", "DeviceNotFound"}, {"desc", "no such device"}}},
                  {"id", cmd["id"]}})
                    .dump() +
                "\n");
    hear_line(fd);
  });
  auto c = QmpClient::connect(peer.path(), Millis(2000));
  REQUIRE(c);
  QmpReply r = (*c)->execute("x", nullptr, Millis(2000));
  CHECK(r.failure == QmpFailure::kCommand);
  CHECK(r.error_class == "DeviceNotFound");
  CHECK(r.status().message() == "DeviceNotFound: no such device");
}

TEST_CASE("qmp fake: an error whose class or desc is not a string is still a command error") {
  // Found by tests/fuzz/qmp_fuzz.cc: nlohmann's value() threw type_error.
  FakePeer peer([](int fd) {
    handshake(fd);
    json cmd = json::parse(hear_line(fd));
    say(fd, json({{"error", {{"class", 5}, {"desc", {1, 2}}}}, {"id", cmd["id"]}}).dump() + "\n");
    hear_line(fd);
  });
  auto c = QmpClient::connect(peer.path(), Millis(2000));
  REQUIRE(c);
  QmpReply r = (*c)->execute("x", nullptr, Millis(2000));
  CHECK(r.failure == QmpFailure::kCommand);
  CHECK(r.error_class == "GenericError");
  CHECK(r.message == "(no description)");
}

TEST_CASE("qmp fake: gone says that no QEMU is there, not that it is busy") {
  bool gone = false;
  auto missing = QmpClient::connect("/tmp/kvmcdp-no-such-dir/qmp.sock", Millis(300), &gone);
  REQUIRE(!missing);
  CHECK(gone);
  {
    // A socket file nobody listens on: QEMU exited without removing it.
    char tmpl[] = "/tmp/kvmcdp-fakeqmp-XXXXXX";
    std::string dir = mkdtemp(tmpl), path = dir + "/qmp.sock";
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path.c_str());
    REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    auto refused = QmpClient::connect(path, Millis(300), &gone);
    REQUIRE(!refused);
    CHECK(gone);
    close(fd);
    unlink(path.c_str());
    rmdir(dir.c_str());
  }
  {
    FakePeer exiting([](int) {});  // closes before its greeting
    auto c = QmpClient::connect(exiting.path(), Millis(2000), &gone);
    REQUIRE(!c);
    CHECK(gone);
  }
  {
    FakePeer busy([](int fd) { hear_line(fd); });  // never greets
    auto c = QmpClient::connect(busy.path(), Millis(300), &gone);
    REQUIRE(!c);
    CHECK(!gone);
  }
  {
    FakePeer qemu([](int fd) {
      handshake(fd);
      hear_line(fd);
    });
    auto c = QmpClient::connect(qemu.path(), Millis(2000), &gone);
    CHECK(c);
    CHECK(!gone);
  }
}

TEST_CASE("qmp fake: a socket path longer than sun_path is reached through its directory") {
  char tmpl[] = "/tmp/kvmcdp-longqmp-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::string deep = dir + "/" + std::string(100, 'd');
  REQUIRE(mkdir(deep.c_str(), 0700) == 0);
  std::string path = deep + "/qmp.sock";
  REQUIRE(path.size() >= sizeof(sockaddr_un::sun_path));
  int dfd = open(deep.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  REQUIRE(dfd >= 0);
  int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "/proc/self/fd/%d/qmp.sock", dfd);
  REQUIRE(bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(listen(lfd, 1) == 0);
  std::thread server([lfd] {
    int fd = accept(lfd, nullptr, nullptr);
    if (fd < 0) return;
    handshake(fd);
    hear_line(fd);
    close(fd);
  });
  {
    auto c = QmpClient::connect(path, Millis(2000));
    CHECK_MESSAGE(c, (c ? "" : c.status().message()));
  }
  shutdown(lfd, SHUT_RDWR);
  server.join();
  close(lfd);
  close(dfd);
  unlink(path.c_str());
  rmdir(deep.c_str());
  rmdir(dir.c_str());
}

}  // namespace kvmcdp
