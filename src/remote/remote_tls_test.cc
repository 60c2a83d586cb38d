#include "remote/remote_tls.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <future>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "base/fsutil.h"
#include "store/journal_test_util.h"

namespace kvmcdp::remote {
namespace {

using journal::testing::TempDir;

std::string file_text(const std::string& path) {
  auto b = fsutil::read_file(path);
  REQUIRE(b);
  return std::string(b->begin(), b->end());
}

struct Pair {
  int client = -1, server = -1;
  Pair() {
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    client = sv[0];
    server = sv[1];
  }
};

}  // namespace

TEST_CASE("tls: fingerprints in the forms people paste") {
  std::string want = "SHA256:";
  for (int i = 0; i < 32; ++i) want += (i ? ":" : "") + std::string("a") + std::to_string(i % 10);
  auto a = parse_fingerprint(want);
  REQUIRE(a);
  CHECK(*a == want);
  std::string upper = "sha256 Fingerprint=";
  for (char c : want.substr(7)) upper += static_cast<char>(toupper(c));
  CHECK(*parse_fingerprint(upper) == want);
  std::string bare;
  for (char c : want.substr(7))
    if (c != ':') bare += c;
  CHECK(*parse_fingerprint(bare) == want);
  CHECK(parse_fingerprint("SHA256:ab").status().kind() == ErrorKind::kUsage);
  CHECK_FALSE(parse_fingerprint(want + ":00"));
  CHECK_FALSE(parse_fingerprint(want.substr(0, want.size() - 1) + "g"));
}

TEST_CASE("tls: --init-tls makes a key only its owner reads, and never replaces one") {
  TempDir t;
  std::string dir = t.path + "/tls";
  auto fp = make_self_signed(dir, "backup.example");
  REQUIRE_MESSAGE(fp, fp.status().message());
  CHECK(parse_fingerprint(*fp).value() == *fp);
  struct stat st;
  REQUIRE(stat((dir + "/server.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  auto cred = TlsServerCredentials::load(dir + "/server.crt", dir + "/server.key");
  REQUIRE_MESSAGE(cred, cred.status().message());
  CHECK((*cred)->fingerprint() == *fp);

  std::string key = file_text(dir + "/server.key"), crt = file_text(dir + "/server.crt");
  auto again = make_self_signed(dir, "backup.example");
  REQUIRE_FALSE(again);
  CHECK(again.status().kind() == ErrorKind::kExists);
  CHECK(file_text(dir + "/server.key") == key);
  CHECK(file_text(dir + "/server.crt") == crt);
  // Only the certificate left: still refused, and no key appears.
  unlink((dir + "/server.key").c_str());
  CHECK(make_self_signed(dir, "x").status().kind() == ErrorKind::kExists);
  CHECK(access((dir + "/server.key").c_str(), F_OK) != 0);
}

TEST_CASE("tls: messages cross a pinned session, a wrong pin or a cleartext client is refused") {
  TempDir t;
  auto fp = make_self_signed(t.path, "localhost");
  REQUIRE(fp);
  auto cred = TlsServerCredentials::load(t.path + "/server.crt", t.path + "/server.key");
  REQUIRE(cred);
  Pair p;
  auto server = std::async(std::launch::async,
                           [&] { return tls_accept(p.server, **cred, 10000); });

  SUBCASE("the right fingerprint: whole messages both ways, large ones too") {
    auto c = tls_connect(p.client, *fp, "test", 10000);
    REQUIRE_MESSAGE(c, c.status().message());
    auto s = server.get();
    REQUIRE_MESSAGE(s, s.status().message());
    Conn client(std::move(*c)), srv(std::move(*s));
    std::vector<uint8_t> big(3u << 20);
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 7 + i / 4096);
    auto sent = std::async(std::launch::async, [&] {
      return client.send(MsgType::kSegmentData, 1, 2, big.data(), big.size());
    });
    auto m = srv.expect(MsgType::kSegmentData, 10000);
    REQUIRE_MESSAGE(m, m.status().message());
    CHECK(sent.get());
    CHECK(m->h.a == 1);
    CHECK(m->h.b == 2);
    REQUIRE(m->h.payload_len == big.size());
    CHECK(std::equal(big.begin(), big.end(), m->payload));
    REQUIRE(srv.send(MsgType::kAck, 9, 10));
    auto ack = client.expect(MsgType::kAck, 10000);
    REQUIRE(ack);
    CHECK(ack->h.a == 9);
  }
  SUBCASE("records gathered for one socket write: small and large messages keep their order") {
    auto c = tls_connect(p.client, *fp, "test", 10000);
    REQUIRE_MESSAGE(c, c.status().message());
    auto s = server.get();
    REQUIRE_MESSAGE(s, s.status().message());
    Conn client(std::move(*c)), srv(std::move(*s));
    // Sizes around a record (16 KiB) and around the gathering buffer.
    const std::vector<size_t> sizes = {0, 1, 16384 - 24, 16384, 16385, 256 << 10, (256 << 10) + 1,
                                       700000, 5};
    auto sent = std::async(std::launch::async, [&] {
      for (size_t i = 0; i < sizes.size(); ++i) {
        std::vector<uint8_t> b(sizes[i], static_cast<uint8_t>(i + 1));
        if (Status st = client.send(MsgType::kSegmentData, i, sizes[i], b.data(), b.size()); !st)
          return st;
      }
      return Status::ok();
    });
    for (size_t i = 0; i < sizes.size(); ++i) {
      auto m = srv.expect(MsgType::kSegmentData, 10000);
      REQUIRE_MESSAGE(m, m.status().message());
      CHECK(m->h.a == i);
      REQUIRE(m->h.payload_len == sizes[i]);
      CHECK(std::all_of(m->payload, m->payload + sizes[i],
                        [&](uint8_t x) { return x == static_cast<uint8_t>(i + 1); }));
    }
    CHECK(sent.get());
  }
  SUBCASE("a peer that stops reading: the send gives up after its timeout") {
    auto c = tls_connect(p.client, *fp, "test", 10000);
    REQUIRE_MESSAGE(c, c.status().message());
    auto s = server.get();
    REQUIRE_MESSAGE(s, s.status().message());
    Conn client(std::move(*c));
    std::vector<uint8_t> big(32u << 20, 0x5a);  // far more than the socket buffers hold
    Status st = client.send(MsgType::kSegmentData, 1, 2, big.data(), big.size(), 300);
    REQUIRE_FALSE(st);
    CHECK(st.cause() == Cause::kTimeout);
  }
  SUBCASE("another fingerprint: refused before anything is sent, naming both") {
    std::string other = "SHA256:" + std::string(95, '0');
    for (size_t i = 9; i < other.size(); i += 3) other[i] = ':';
    other = parse_fingerprint(other).value();
    auto c = tls_connect(p.client, other, "test", 10000);
    REQUIRE_FALSE(c);
    CHECK(c.status().cause() == Cause::kRefused);
    CHECK(c.status().message().find(*fp) != std::string::npos);
    CHECK(c.status().message().find(other) != std::string::npos);
    server.get();
  }
  SUBCASE("a client in the clear gets a refusal it can print") {
    Conn client(p.client, p.client);
    REQUIRE(client.send(MsgType::kHello, kVersion, 0, "{}"));
    auto s = server.get();
    REQUIRE_FALSE(s);
    CHECK(s.status().cause() == Cause::kRefused);
    auto m = client.expect(MsgType::kChallenge, 10000);
    REQUIRE_FALSE(m);
    CHECK(m.status().cause() == Cause::kRefused);
    CHECK(m.status().message().find("TLS only") != std::string::npos);
  }
}

TEST_CASE("tls: a peer that never starts the handshake runs out of time") {
  TempDir t;
  REQUIRE(make_self_signed(t.path, "localhost"));
  auto cred = TlsServerCredentials::load(t.path + "/server.crt", t.path + "/server.key");
  REQUIRE(cred);
  Pair p;
  auto s = tls_accept(p.server, **cred, 300);
  REQUIRE_FALSE(s);
  CHECK(s.status().cause() == Cause::kTimeout);
  // A byte that starts a handshake and no more: the same deadline.
  Pair q;
  REQUIRE(write(q.client, "\x16", 1) == 1);
  auto s2 = tls_accept(q.server, **cred, 300);
  REQUIRE_FALSE(s2);
  CHECK(s2.status().cause() == Cause::kTimeout);
  close(p.client);
  close(q.client);
}

TEST_CASE("tls: loopback addresses") {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(0x7f000001);
  CHECK(is_loopback(reinterpret_cast<sockaddr*>(&a)));
  a.sin_addr.s_addr = htonl(0x7f0a0b0c);
  CHECK(is_loopback(reinterpret_cast<sockaddr*>(&a)));
  a.sin_addr.s_addr = htonl(0x0a000001);
  CHECK_FALSE(is_loopback(reinterpret_cast<sockaddr*>(&a)));
  a.sin_addr.s_addr = 0;
  CHECK_FALSE(is_loopback(reinterpret_cast<sockaddr*>(&a)));
  sockaddr_in6 b{};
  b.sin6_family = AF_INET6;
  b.sin6_addr = in6addr_loopback;
  CHECK(is_loopback(reinterpret_cast<sockaddr*>(&b)));
  b.sin6_addr = in6addr_any;
  CHECK_FALSE(is_loopback(reinterpret_cast<sockaddr*>(&b)));
}

}  // namespace kvmcdp::remote
