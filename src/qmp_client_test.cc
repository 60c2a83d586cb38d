// The QMP client against a hostile fake peer: no greeting, garbage, a
// connection cut in the middle of a reply.  Every case must end in a typed
// failure within its timeout: no hang, no crash.
#include "qmp_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include <doctest/doctest.h>

namespace kvmcdp {
namespace {

// A one-connection server running `script` on the accepted socket.
class FakePeer {
 public:
  explicit FakePeer(std::function<void(int)> script) {
    char tmpl[] = "/tmp/kvmcdp-fakeqmp-XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/qmp.sock";
    listen_fd_ = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path_.c_str());
    REQUIRE(bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(listen(listen_fd_, 1) == 0);
    thread_ = std::thread([this, script] {
      int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) return;
      script(fd);
      close(fd);
    });
  }
  ~FakePeer() {
    shutdown(listen_fd_, SHUT_RDWR);
    thread_.join();
    close(listen_fd_);
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  std::string dir_, path_;
  int listen_fd_ = -1;
  std::thread thread_;
};

void say(int fd, const std::string& text) {
  REQUIRE(write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
}

std::string hear_line(int fd) {
  std::string line;
  char c;
  while (read(fd, &c, 1) == 1 && c != '\n') line += c;
  return line;
}

const char* kGreeting = R"({"QMP":{"version":{},"capabilities":[]}})" "\n";

// Greets and accepts capabilities, answering with the id it was given.
void handshake(int fd) {
  say(fd, kGreeting);
  json cap = json::parse(hear_line(fd));
  say(fd, json({{"return", json::object()}, {"id", cap["id"]}}).dump() + "\n");
}

}  // namespace

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

TEST_CASE("qmp fake: events before a reply are kept in order; stale replies skipped") {
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

}  // namespace kvmcdp
