// A `kvmcdp serve` on a loopback port and hand-made protocol clients,
// shared by the remote integration tests.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <string>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "harness/protect_process.h"
#include "harness/qemu_process.h"
#include "remote/remote_auth.h"
#include "remote/remote_io.h"
#include "remote/remote_tls.h"

namespace kvmcdp::test {

// The disk the remote tests protect: 6 MiB of random data in 32 MiB.
inline constexpr uint64_t kRemoteDiskSize = 32ull << 20;
inline std::string make_disk(const TempDir& dir) {
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + disk, "bs=1M", "count=6"}).status == 0);
  REQUIRE(run_command({"truncate", "-s", std::to_string(kRemoteDiskSize), disk}).status == 0);
  return disk;
}

// An empty store root for `kvmcdp serve`.
inline std::string make_root(const TempDir& dir) {
  std::string root = dir.file("server");
  mkdir(root.c_str(), 0700);
  return root;
}

// A server on a free loopback port (or on `port`, to restart it there),
// with `extra` options (--tls-cert ...).
struct Server {
  std::unique_ptr<BackgroundProcess> proc;
  std::string port;
  Server(const TempDir& dir, const std::string& root, const std::string& want_port = "0",
         const std::string& log_name = "serve.log", const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv{KVMCDP_BINARY, "serve", "--listen", "127.0.0.1:" + want_port,
                                  "--store-root", root};
    argv.insert(argv.end(), extra.begin(), extra.end());
    proc = std::make_unique<BackgroundProcess>(argv, dir.file(log_name));
    REQUIRE_MESSAGE(proc->wait_output("serving", std::chrono::seconds(20)), proc->output());
    std::string out = proc->output();
    size_t at = out.find("on 127.0.0.1:");
    REQUIRE(at != std::string::npos);
    port = out.substr(at + 13, out.find_first_not_of("0123456789", at + 13) - at - 13);
  }
};

// `kvmcdp serve --new-store NAME`, its secret saved as a mode 600 file.
inline std::string new_store(const TempDir& dir, const std::string& root,
                             const std::string& name) {
  auto r = run_command({KVMCDP_BINARY, "serve", "--store-root", root, "--new-store", name});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  std::string path = dir.file(name + ".secret");
  std::ofstream(path) << r.output;
  chmod(path.c_str(), 0600);
  return path;
}

inline int dial_fd(const std::string& port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::stoi(port)));
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  return fd;
}

inline std::unique_ptr<remote::Conn> dial(const std::string& port) {
  int fd = dial_fd(port);
  return std::make_unique<remote::Conn>(fd, fd);
}

// A TLS connection to a `serve --tls-cert` server whose certificate has
// `fingerprint`.
inline std::unique_ptr<remote::Conn> dial_tls(const std::string& port,
                                              const std::string& fingerprint) {
  auto t = remote::tls_connect(dial_fd(port), fingerprint, "127.0.0.1:" + port, 10000);
  REQUIRE_MESSAGE(t, t.status().message());
  return std::make_unique<remote::Conn>(std::move(*t));
}

// A hand-made client up to WELCOME; its result says whether it got in.
inline Result<remote::Message> handshake(remote::Conn& c, const std::string& store,
                                         const std::string& secret) {
  using nlohmann::json;
  std::string nonce = remote::random_hex(16);
  json hello = {{"store", store}, {"nonce", nonce}};
  REQUIRE(c.send(remote::MsgType::kHello, remote::kVersion, 0, hello.dump()));
  auto ch = c.expect(remote::MsgType::kChallenge, 10000);
  REQUIRE(ch);
  std::string server_nonce = json::parse(ch->text())["nonce"];
  std::string proof = remote::auth_proof(secret, "kvmcdp-client", store, nonce, server_nonce);
  REQUIRE(c.send(remote::MsgType::kAuth, 0, 0, json{{"proof", proof}}.dump()));
  return c.expect(remote::MsgType::kWelcome, 20000);
}

inline std::string secret_of(const std::string& path) {
  std::string s = read_file(path);
  return s.substr(0, s.find('\n'));
}

}  // namespace kvmcdp::test
