// `kvmcdp serve` against hostile clients: a malformed message, a lying
// length or a crowd of connections that never log in ends those
// connections, never the server, and costs it little memory; a valid
// client still gets in afterwards.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "integration/remote_client.h"
#include "store/manifest.h"

namespace kvmcdp::test {
namespace {

using nlohmann::json;
using remote::MsgType;

// The server's resident memory, from /proc.
uint64_t rss_bytes(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}

bool serving(Server& s) { return s.proc->wait_exit(std::chrono::seconds(0)) == -1; }

// True when the server closed `c` (an ERROR first is allowed).
bool closed_by_server(remote::Conn& c) {
  remote::Message m;
  for (;;) {
    auto got = c.receive(&m, 20000);
    if (!got) return true;
    if (!*got) return false;  // still open after 20 s
    if (m.h.type != static_cast<uint16_t>(MsgType::kError)) return false;
  }
}

// The 32-byte header of a message announcing `len` payload bytes, none sent.
void send_header_only(remote::Conn& c, MsgType t, uint32_t len) {
  remote::MsgHeader h;
  h.type = static_cast<uint16_t>(t);
  h.payload_len = len;
  h.a = remote::kVersion;
  uint8_t head[remote::kHeaderSize];
  remote::encode_header(h, head);
  REQUIRE(write(c.in_fd(), head, sizeof head) == static_cast<ssize_t>(sizeof head));
}

// A connection from 127.0.0.`host` (every 127/8 address is loopback), so
// one test can be many machines.  nullptr if the server closed it at once.
std::unique_ptr<remote::Conn> dial_from(const std::string& port, int host) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in from{};
  from.sin_family = AF_INET;
  inet_pton(AF_INET, fmt::format("127.0.0.{}", host).c_str(), &from.sin_addr);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) == 0);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(std::stoi(port)));
  inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0);
  return std::make_unique<remote::Conn>(fd, fd);
}

// True once the server has closed `c`, waiting until `until` at most;
// false if still open then.
bool closed_by(remote::Conn& c, std::chrono::steady_clock::time_point until) {
  remote::Message m;
  while (std::chrono::steady_clock::now() < until) {
    auto got = c.receive(&m, 1000);
    if (!got) return true;
    if (*got && m.h.type != static_cast<uint16_t>(MsgType::kError)) return false;
  }
  return false;
}

bool closed_within(remote::Conn& c, int seconds) {
  return closed_by(c, std::chrono::steady_clock::now() + std::chrono::seconds(seconds));
}

// A stranger from 127.0.0.`host` says hello: true if the server answers
// with its challenge, false if it closed the connection instead.
bool stranger_gets_challenge(const std::string& port, int host) {
  auto c = dial_from(port, host);
  std::string payload = json{{"store", "vm1"}, {"nonce", "00"}}.dump();
  remote::MsgHeader h;
  h.type = static_cast<uint16_t>(MsgType::kHello);
  h.payload_len = static_cast<uint32_t>(payload.size());
  h.a = remote::kVersion;
  std::vector<uint8_t> msg(remote::kHeaderSize);
  remote::encode_header(h, msg.data());
  msg.insert(msg.end(), payload.begin(), payload.end());
  // MSG_NOSIGNAL: a connection closed at accept must not end the test.
  if (send(c->in_fd(), msg.data(), msg.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(msg.size()))
    return false;
  return static_cast<bool>(c->expect(MsgType::kChallenge, 10000));
}

std::string small_manifest() {
  Manifest m;
  m.stream_id = 0x1234;
  m.disk_size = 4096;
  return manifest_to_json(m);
}

struct AbuseRig {
  TempDir dir;
  std::string root = [this] {
    std::string r = dir.file("server");
    mkdir(r.c_str(), 0700);
    return r;
  }();
  std::string secret = secret_of(new_store(dir, root, "vm1"));
  Server server{dir, root};

  // A valid client logs in, ships an (empty) base copy and has it acked.
  void valid_client_ships() {
    auto c = dial(server.port);
    auto w = handshake(*c, "vm1", secret);
    REQUIRE_MESSAGE(w, w.status().message());
    REQUIRE(c->send(MsgType::kManifest, 0, 0, small_manifest()));
    REQUIRE(c->send(MsgType::kBaseDone, 4096, 0, json{{"time_ns", 7}}.dump()));
    auto ack = c->expect(MsgType::kBaseAck, 20000);
    REQUIRE_MESSAGE(ack, ack.status().message());
    auto m = read_manifest(root + "/vm1");
    REQUIRE(m);
    CHECK(m->base_complete);
    CHECK(m->base_complete_time_ns == 7);
  }
};

}  // namespace

TEST_CASE("serve abuse: a numeric proof ends that connection, not the server") {
  AbuseRig rig;
  auto c = dial(rig.server.port);
  REQUIRE(c->send(MsgType::kHello, remote::kVersion, 0,
                  json{{"store", "anything"}, {"nonce", "00"}}.dump()));
  REQUIRE(c->expect(MsgType::kChallenge, 10000));
  REQUIRE(c->send(MsgType::kAuth, 0, 0, json{{"proof", 123}}.dump()));
  CHECK(closed_by_server(*c));
  REQUIRE_MESSAGE(serving(rig.server), rig.server.proc->output());
  CHECK(rig.server.proc->output().find("\"proof\" is not a string") != std::string::npos);
  rig.valid_client_ships();
  CHECK(serving(rig.server));
}

TEST_CASE("serve abuse: a string time_ns after login ends that connection, not the server") {
  AbuseRig rig;
  {
    auto c = dial(rig.server.port);
    auto w = handshake(*c, "vm1", rig.secret);
    REQUIRE_MESSAGE(w, w.status().message());
    REQUIRE(c->send(MsgType::kManifest, 0, 0, small_manifest()));
    REQUIRE(c->send(MsgType::kBaseDone, 4096, 0, json{{"time_ns", "x"}}.dump()));
    auto ack = c->expect(MsgType::kBaseAck, 20000);
    REQUIRE_FALSE(ack);
    CHECK(ack.status().cause() == Cause::kRefused);
  }
  REQUIRE_MESSAGE(serving(rig.server), rig.server.proc->output());
  // The refused message changed nothing.
  auto m = read_manifest(rig.root + "/vm1");
  REQUIRE(m);
  CHECK_FALSE(m->base_complete);
  rig.valid_client_ships();
}

TEST_CASE("serve abuse: announced but unsent payloads cost the server no memory") {
  AbuseRig rig;
  constexpr uint64_t kBound = 64ull << 20;
  // Twenty strangers announce a hello of 80 MiB and send nothing more:
  // each is refused on its header.  Five at a time, so that the limit
  // of strangers per address is not what stops them.
  for (int round = 0; round < 20; round += 5) {
    std::vector<std::unique_ptr<remote::Conn>> conns;
    for (int i = 0; i < 5; ++i) {
      conns.push_back(dial(rig.server.port));
      send_header_only(*conns.back(), MsgType::kHello, remote::kMaxPayload);
    }
    for (auto& c : conns) CHECK(closed_by_server(*c));
    uint64_t rss = rss_bytes(rig.server.proc->pid());
    CHECK_MESSAGE(rss < kBound, "server RSS ", rss);
  }
  REQUIRE_MESSAGE(serving(rig.server), rig.server.proc->output());
  // Logged-in clients may send large messages, but the buffer grows with
  // what arrives: three stores each announcing 80 MiB of segment data
  // and sending none of it.
  std::vector<std::unique_ptr<remote::Conn>> logged_in;
  for (const char* name : {"a1", "a2", "a3"}) {
    std::string secret = secret_of(new_store(rig.dir, rig.root, name));
    logged_in.push_back(dial(rig.server.port));
    auto w = handshake(*logged_in.back(), name, secret);
    REQUIRE_MESSAGE(w, w.status().message());
    REQUIRE(logged_in.back()->send(MsgType::kManifest, 0, 0, small_manifest()));
    send_header_only(*logged_in.back(), MsgType::kSegmentData, remote::kMaxPayload);
  }
  // Nothing comes back to wait for; give the server a moment to read
  // the headers (a short wait can only hide the old fault, not fail the
  // fixed server).
  std::this_thread::sleep_for(std::chrono::seconds(2));
  uint64_t rss = rss_bytes(rig.server.proc->pid());
  CHECK_MESSAGE(rss < kBound, "server RSS ", rss);
  CHECK(serving(rig.server));
  rig.valid_client_ships();
}

TEST_CASE("serve abuse: connections beyond the not-logged-in limit are closed at once") {
  AbuseRig rig;
  // The limit per address is 8; these never send a byte.
  std::vector<std::unique_ptr<remote::Conn>> idle;
  for (int i = 0; i < 8; ++i) idle.push_back(dial(rig.server.port));
  auto excess = dial(rig.server.port);
  CHECK(closed_by_server(*excess));
  CHECK(rig.server.proc->wait_output("that have not logged in", std::chrono::seconds(10)));
  REQUIRE_MESSAGE(serving(rig.server), rig.server.proc->output());
  // Once they go, there is room again.
  idle.clear();
  bool in = false;
  for (int i = 0; i < 100 && !in; ++i) {
    auto c = dial(rig.server.port);
    std::string nonce = remote::random_hex(16);
    REQUIRE(c->send(MsgType::kHello, remote::kVersion, 0,
                    json{{"store", "vm1"}, {"nonce", nonce}}.dump()));
    in = static_cast<bool>(c->expect(MsgType::kChallenge, 10000));
    if (!in) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  CHECK(in);
  rig.valid_client_ships();
}

TEST_CASE("serve abuse: a client that trickles its hello is closed, and frees its slot") {
  AbuseRig rig;
  constexpr uint64_t kBound = 64ull << 20;
  // A valid HELLO, sent one byte every 400 ms: all of it would take about
  // 50 s, longer than the server waits for a stranger's message.  Eight
  // of them from one address fill that address's slots for strangers.
  std::vector<uint8_t> hello;
  {
    std::string payload = json{{"store", "vm1"},
                               {"nonce", std::string(64, 'a')},
                               {"padding", std::string(30, 'p')}}
                              .dump();
    remote::MsgHeader h;
    h.type = static_cast<uint16_t>(MsgType::kHello);
    h.payload_len = static_cast<uint32_t>(payload.size());
    h.a = remote::kVersion;
    hello.resize(remote::kHeaderSize);
    remote::encode_header(h, hello.data());
    hello.insert(hello.end(), payload.begin(), payload.end());
  }
  REQUIRE(hello.size() * 400 > 45000);
  std::vector<std::unique_ptr<remote::Conn>> slow;
  for (int i = 0; i < 8; ++i) slow.push_back(dial(rig.server.port));
  std::vector<bool> open(slow.size(), true);
  bool answered = false;  // the server waited for a whole trickled hello
  size_t sent = 0;
  for (; sent < hello.size(); ++sent) {
    bool any = false;
    for (size_t i = 0; i < slow.size(); ++i) {
      if (!open[i]) continue;
      if (send(slow[i]->in_fd(), &hello[sent], 1, MSG_NOSIGNAL) != 1) {
        open[i] = false;
        continue;
      }
      // Readable: closed (EOF, or the ERROR before it), or answered.
      pollfd p{slow[i]->in_fd(), POLLIN, 0};
      if (poll(&p, 1, 0) == 1) {
        remote::Message m;
        auto got = slow[i]->receive(&m, 0);
        if (got && *got && m.h.type != static_cast<uint16_t>(MsgType::kError)) answered = true;
        open[i] = false;
      }
      any = any || open[i];
    }
    if (!any) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
  }
  // The server gave up on every one of them before its hello was whole.
  CHECK_MESSAGE(sent < hello.size(), "the server waited for a whole trickled hello");
  CHECK_FALSE(answered);
  for (auto& c : slow) CHECK(closed_within(*c, 5));
  REQUIRE_MESSAGE(serving(rig.server), rig.server.proc->output());
  uint64_t rss = rss_bytes(rig.server.proc->pid());
  CHECK_MESSAGE(rss < kBound, "server RSS ", rss);
  // Their slots are free again although the slow clients still hold their
  // sockets open: a valid client from the same address gets in.
  rig.valid_client_ships();
  CHECK(serving(rig.server));
}

TEST_CASE("serve abuse: 200 idle connections from 25 addresses are bounded and timed out") {
  AbuseRig rig;
  constexpr uint64_t kBound = 64ull << 20;
  // 8 idle strangers from each of 127.0.0.2 .. 127.0.0.26: the server
  // keeps at most 64 strangers in all (cmd_serve.cc) and closes the rest
  // at once.
  std::vector<std::unique_ptr<remote::Conn>> idle;
  for (int host = 2; host < 27; ++host)
    for (int i = 0; i < 8; ++i) idle.push_back(dial_from(rig.server.port, host));
  REQUIRE(idle.size() == 200);
  size_t kept = 0;
  for (auto& c : idle) {
    remote::Message m;
    // Closed at accept shows at once; a kept one stays silent.
    auto got = c->receive(&m, 200);
    if (got && !*got) ++kept;
  }
  CHECK_MESSAGE(kept <= 64, kept, " idle strangers kept");
  CHECK(kept > 0);
  REQUIRE_MESSAGE(serving(rig.server), rig.server.proc->output());
  uint64_t rss = rss_bytes(rig.server.proc->pid());
  CHECK_MESSAGE(rss < kBound, "server RSS with 200 idle connections ", rss);
  // The idle ones are closed by the handshake timeout (30 s), not held
  // forever, although their clients never close them.
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  size_t closed = 0;
  for (auto& c : idle) closed += closed_by(*c, until);
  CHECK(closed == idle.size());
  rig.valid_client_ships();
  CHECK(serving(rig.server));
}

TEST_CASE("serve abuse: a burst of 1000 connect/close leaves no slot taken") {
  AbuseRig rig;
  constexpr uint64_t kBound = 64ull << 20;
  // 1000 connections that close at once, from 10 addresses: 100 each,
  // far beyond the 8 strangers an address may have.
  for (int i = 0; i < 1000; ++i) dial_from(rig.server.port, 30 + i % 10);
  REQUIRE_MESSAGE(serving(rig.server), rig.server.proc->output());
  uint64_t rss = rss_bytes(rig.server.proc->pid());
  CHECK_MESSAGE(rss < kBound, "server RSS after 1000 connections ", rss);
  // Every one of them left: strangers from these addresses get in again.
  bool in = false;
  for (int i = 0; i < 100 && !in; ++i) {
    in = stranger_gets_challenge(rig.server.port, 30);
    if (!in) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  REQUIRE(in);
  rig.valid_client_ships();
  CHECK(serving(rig.server));
}

TEST_CASE("serve abuse: random bytes after login end that connection, not the server") {
  AbuseRig rig;
  constexpr uint64_t kBound = 64ull << 20;
  std::mt19937_64 rng(20261126);
  for (int round = 0; round < 20; ++round) {
    auto c = dial(rig.server.port);
    auto w = handshake(*c, "vm1", rig.secret);
    REQUIRE_MESSAGE(w, w.status().message());
    if (round % 2) REQUIRE(c->send(MsgType::kManifest, 0, 0, small_manifest()));
    // 1 to 64 KiB of noise; every fourth round it starts with a valid
    // magic, so the type and length fields are what is random.
    std::vector<uint8_t> noise(1 + rng() % (64u << 10));
    for (auto& b : noise) b = static_cast<uint8_t>(rng());
    if (round % 4 == 0) {
      const uint32_t magic = remote::kMagic;
      std::memcpy(noise.data(), &magic, std::min<size_t>(4, noise.size()));
    }
    // The server may close before reading all of it.  The client then
    // stays silent: a server that took the noise for the start of a
    // message would wait, and the check below would fail.
    size_t done = 0;
    while (done < noise.size()) {
      ssize_t n = send(c->in_fd(), noise.data() + done, noise.size() - done, MSG_NOSIGNAL);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    REQUIRE_MESSAGE(closed_within(*c, 60), "round ", round);
    REQUIRE_MESSAGE(serving(rig.server), rig.server.proc->output());
  }
  uint64_t rss = rss_bytes(rig.server.proc->pid());
  CHECK_MESSAGE(rss < kBound, "server RSS ", rss);
  rig.valid_client_ships();
  CHECK(serving(rig.server));
}

}  // namespace kvmcdp::test
