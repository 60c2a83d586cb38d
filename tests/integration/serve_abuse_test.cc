// `kvmcdp serve` against hostile clients: a malformed message, a lying
// length or a crowd of connections that never log in ends those
// connections, never the server, and costs it little memory; a valid
// client still gets in afterwards.
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
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

}  // namespace kvmcdp::test
