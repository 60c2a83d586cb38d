#include "remote/remote_io.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include <doctest/doctest.h>

#include "capture/wire_io.h"

namespace kvmcdp::remote {
namespace {

// A connected TCP pair over loopback: a reset needs a real TCP socket.
void tcp_pair(int* a, int* b) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(l, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  REQUIRE(listen(l, 1) == 0);
  socklen_t len = sizeof sa;
  getsockname(l, reinterpret_cast<sockaddr*>(&sa), &len);
  *a = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(connect(*a, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  *b = accept(l, nullptr, nullptr);
  REQUIRE(*b >= 0);
  close(l);
}

// Closing with SO_LINGER 0 sends a reset instead of a FIN.
void reset(int fd) {
  linger lg{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
}

}  // namespace

TEST_CASE("remote Conn: the cause of a failure is typed, whatever the message says") {
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  Conn c(sv[0], sv[0]);
  Message m;

  SUBCASE("nothing arrives in time") {
    auto r = c.expect(MsgType::kWelcome, 0);
    REQUIRE_FALSE(r);
    CHECK(r.status().cause() == Cause::kTimeout);
    close(sv[1]);
  }
  SUBCASE("the peer refuses") {
    Conn peer(sv[1], sv[1]);
    REQUIRE(peer.send(MsgType::kError, 0, 0, "no such store"));
    auto r = c.expect(MsgType::kWelcome, 5000);
    REQUIRE_FALSE(r);
    CHECK(r.status().cause() == Cause::kRefused);
  }
  SUBCASE("the peer closes in order") {
    close(sv[1]);
    auto r = c.receive(&m, 5000);
    REQUIRE_FALSE(r);
    CHECK(r.status().cause() == Cause::kPeerClosed);
    CHECK(r.status().kind() == ErrorKind::kFailure);
  }
  SUBCASE("a message that is not ours is no peer closing") {
    std::string junk = "GET / HTTP/1.0\r\n" + std::string(16, '\n');
    REQUIRE(write(sv[1], junk.data(), junk.size()) == static_cast<ssize_t>(junk.size()));
    auto r = c.receive(&m, 5000);
    REQUIRE_FALSE(r);
    CHECK(r.status().cause() == Cause::kNone);
    close(sv[1]);
  }
}

TEST_CASE("remote Conn and the filter's stream: a reset connection is a lost connection") {
  int a, b;
  tcp_pair(&a, &b);
  SUBCASE("Conn") {
    Conn c(a, a);
    reset(b);
    Message m;
    auto r = c.receive(&m, 5000);
    REQUIRE_FALSE(r);
    CHECK(r.status().cause() == Cause::kConnectionLost);
  }
  SUBCASE("wire::MessageReader") {
    wire::MessageReader reader(a);
    reset(b);
    auto r = reader.fill();
    REQUIRE_FALSE(r);
    CHECK(r.status().cause() == Cause::kConnectionLost);
    close(a);
  }
}

}  // namespace kvmcdp::remote
