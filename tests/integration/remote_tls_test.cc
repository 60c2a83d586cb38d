// protect --remote tls:// against a real `kvmcdp serve --tls-cert`, with a
// real patched QEMU producing the stream: the server's store restores
// every point, an eavesdropper between them sees none of the disk, and a
// wrong or missing fingerprint, a client in the clear and a connection
// that never shakes hands are all refused without harm to the server.
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "harness/protect_process.h"
#include "harness/qemu_process.h"
#include "harness/vm_io.h"
#include "integration/remote_client.h"

namespace kvmcdp::test {
namespace {

using nlohmann::json;
using remote::MsgType;

constexpr uint64_t kDiskSize = kRemoteDiskSize;



// `serve --init-tls DIR`: the fingerprint it prints.
std::string init_tls(const std::string& dir) {
  auto r = run_command({KVMCDP_BINARY, "serve", "--init-tls", dir});
  REQUIRE_MESSAGE(r.status == 0, r.output);
  size_t at = r.output.find("SHA256:");
  REQUIRE_MESSAGE(at != std::string::npos, r.output);
  return r.output.substr(at, 7 + 95);
}

std::vector<std::string> tls_args(const std::string& dir) {
  return {"--tls-cert", dir + "/server.crt", "--tls-key", dir + "/server.key"};
}

// A TCP relay on a free loopback port to 127.0.0.1:`to`, keeping a copy
// of every byte the client sends: what anyone on the network would see.
class Relay {
 public:
  explicit Relay(const std::string& to) : to_(std::stoi(to)) {
    lfd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(lfd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    REQUIRE(listen(lfd_, 8) == 0);
    socklen_t len = sizeof sa;
    getsockname(lfd_, reinterpret_cast<sockaddr*>(&sa), &len);
    port = std::to_string(ntohs(sa.sin_port));
    thread_ = std::thread([this] { run(); });
  }
  ~Relay() {
    stop_ = true;
    thread_.join();
    close(lfd_);
  }
  std::string seen() {
    std::lock_guard l(mu_);
    return seen_;
  }
  std::string port;

 private:
  struct Pipe {
    int client, server;
    bool dead = false;
  };
  int connect_server() {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(to_));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      close(fd);
      return -1;
    }
    return fd;
  }
  static bool send_all(int fd, const char* p, size_t n) {
    while (n > 0) {
      ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
      if (w <= 0) return false;
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }
  void run() {
    std::vector<Pipe> pipes;
    std::vector<char> buf(1 << 16);
    while (!stop_) {
      std::vector<pollfd> fds{{lfd_, POLLIN, 0}};
      for (auto& p : pipes) {
        fds.push_back({p.client, POLLIN, 0});
        fds.push_back({p.server, POLLIN, 0});
      }
      if (poll(fds.data(), fds.size(), 100) <= 0) continue;
      for (size_t i = 0; i < pipes.size(); ++i) {
        for (int dir = 0; dir < 2 && !pipes[i].dead; ++dir) {
          if (!(fds[1 + 2 * i + dir].revents & (POLLIN | POLLHUP | POLLERR))) continue;
          int from = dir ? pipes[i].server : pipes[i].client;
          int to = dir ? pipes[i].client : pipes[i].server;
          ssize_t n = read(from, buf.data(), buf.size());
          if (n > 0 && dir == 0) {
            std::lock_guard l(mu_);
            seen_.append(buf.data(), static_cast<size_t>(n));
          }
          if (n <= 0 || !send_all(to, buf.data(), static_cast<size_t>(n))) pipes[i].dead = true;
        }
      }
      for (auto it = pipes.begin(); it != pipes.end();) {
        if (it->dead) {
          close(it->client);
          close(it->server);
          it = pipes.erase(it);
        } else {
          ++it;
        }
      }
      if (fds[0].revents & POLLIN) {
        int c = accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) continue;
        int s = connect_server();
        if (s < 0) {
          close(c);
          continue;
        }
        pipes.push_back({c, s});
      }
    }
    for (auto& p : pipes) {
      close(p.client);
      close(p.server);
    }
  }
  int to_;
  int lfd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::string seen_;
};

// 64-byte pieces of the (random, incompressible) data at the start of
// the disk, as they are shipped in the base copy.
std::vector<std::string> disk_samples(const std::string& base) {
  std::string data = read_file(base);
  REQUIRE(data.size() >= (6u << 20));
  std::vector<std::string> out;
  for (size_t off = 4096; off < (6u << 20); off += 512u << 10) out.push_back(data.substr(off, 64));
  return out;
}

int found(const std::string& wire, const std::vector<std::string>& samples) {
  int n = 0;
  for (const auto& s : samples) n += wire.find(s) != std::string::npos;
  return n;
}

// Waits until the server closes `fd` (true) or 90 s pass.
bool closed_by_server(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 90000) != 1) return false;
  char c;
  return recv(fd, &c, 1, 0) <= 0;
}

}  // namespace

TEST_CASE("remote tls: shipped over tls:// the server's store restores every point, the wire "
          "shows none of the disk") {
  TempDir dir;
  std::string disk = make_disk(dir);
  auto vm = start_vm(dir, disk);
  std::string root = make_root(dir);
  std::string secret = new_store(dir, root, "vm1");
  std::string fp = init_tls(dir.file("tls"));
  Server server(dir, root, "0", "serve.log", tls_args(dir.file("tls")));
  // The server says which fingerprint clients pin.
  CHECK_MESSAGE(server.proc->output().find(fp) != std::string::npos, server.proc->output());
  Relay relay(server.port);

  std::string store = dir.file("local");
  ProtectProcess protect(vm->tool_socket(), "vd0", store,
                         {"--remote", fmt::format("tls://127.0.0.1:{}/vm1", relay.port),
                          "--secret-file", secret, "--server-fingerprint", fp, "--ack-from",
                          "remote", "--remote-wait", "60"});
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  std::mt19937_64 rng(11);
  std::vector<std::pair<uint64_t, std::string>> points;
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 8; ++i) {
      uint64_t len = (1 + rng() % 32) * 4096;
      uint64_t off = (rng() % ((kDiskSize - len) / 4096)) * 4096;
      qemu_io(*vm, fmt::format("write -P {} {} {}", rng() % 255 + 1, off, len));
    }
    points.push_back({filter_seq(*vm), md5_of_file(disk)});
    wait_acked(*vm);  // --ack-from remote: the server has it
  }
  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
  CHECK_MESSAGE(protect.output().find("not encrypted") == std::string::npos, protect.output());

  std::string remote_store = root + "/vm1";
  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", remote_store});
  CHECK_MESSAGE(verify.status == 0, verify.output);
  for (const auto& [seq, md5] : points) check_restore(dir, remote_store, seq, md5);
  for (const char* what : {"journal", "base.raw"}) {
    auto cmp = run_command({"diff", "-r", store + "/" + what, remote_store + "/" + what});
    CHECK_MESSAGE(cmp.status == 0, what, cmp.output);
  }

  // What crossed the relay is all of it (the base copy alone is 6 MiB),
  // yet no piece of the disk, no name, no JSON.
  std::string wire = relay.seen();
  CHECK(wire.size() > (6u << 20));
  CHECK(found(wire, disk_samples(store + "/base.raw")) == 0);
  CHECK(wire.find("\"nonce\"") == std::string::npos);
  CHECK(wire.find("\"stream_id\"") == std::string::npos);
}

TEST_CASE("remote tls: the eavesdropper's check sees the disk in a tcp:// stream") {
  // The same relay and samples in the clear: the check above can fail.
  TempDir dir;
  std::string disk = make_disk(dir);
  auto vm = start_vm(dir, disk);
  std::string root = make_root(dir);
  std::string secret = new_store(dir, root, "vm1");
  Server server(dir, root);
  Relay relay(server.port);
  std::string store = dir.file("local");
  ProtectProcess protect(vm->tool_socket(), "vd0", store,
                         {"--remote", fmt::format("tcp://127.0.0.1:{}/vm1", relay.port),
                          "--secret-file", secret, "--ack-from", "remote"});
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  // The server renames base.raw into place once all of it arrived.
  for (int i = 0; i < 600 && access((root + "/vm1/base.raw").c_str(), F_OK) != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  REQUIRE(access((root + "/vm1/base.raw").c_str(), F_OK) == 0);
  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
  std::string wire = relay.seen();
  auto samples = disk_samples(store + "/base.raw");
  CHECK(found(wire, samples) == static_cast<int>(samples.size()));
  CHECK(wire.find("\"nonce\"") != std::string::npos);
}

TEST_CASE("remote tls: wrong or missing fingerprints and clients in the clear are refused, "
          "nothing is written and the server goes on") {
  TempDir dir;
  std::string root = make_root(dir);
  std::string secret = new_store(dir, root, "vm1");
  std::string tls = dir.file("tls");
  std::string fp = init_tls(tls);
  Server server(dir, root, "0", "serve.log", tls_args(tls));
  // No VM: every refusal comes before protect looks for QEMU.
  auto protect = [&](std::vector<std::string> extra) {
    std::vector<std::string> argv{KVMCDP_BINARY, "protect", "--qmp", dir.file("no-qmp.sock"),
                                  "--drive", "vd0", "--store", dir.file("local")};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return run_command(argv);
  };
  std::string url = fmt::format("tls://127.0.0.1:{}/vm1", server.port);
  auto errors = [](const std::string& out) {
    size_t n = 0;
    for (size_t at = out.find("kvmcdp: error:"); at != std::string::npos;
         at = out.find("kvmcdp: error:", at + 1))
      ++n;
    return n;
  };

  auto nothing_written = [&] {
    CHECK(access((root + "/vm1/manifest.json").c_str(), F_OK) != 0);
    CHECK(access((root + "/vm1/journal").c_str(), F_OK) != 0);
  };
  SUBCASE("missing fingerprint: a usage error saying how to get it") {
    auto r = protect({"--remote", url, "--secret-file", secret});
    CHECK(r.status == 2);
    CHECK_MESSAGE(r.output.find("--server-fingerprint") != std::string::npos, r.output);
    CHECK_MESSAGE(r.output.find("prints it") != std::string::npos, r.output);
    nothing_written();
  }
  SUBCASE("another server's fingerprint: refused, both named, nothing sent") {
    std::string other = init_tls(dir.file("tls2"));
    auto r = protect({"--remote", url, "--secret-file", secret, "--server-fingerprint", other});
    CHECK(r.status == 1);
    CHECK(errors(r.output) == 1);
    CHECK_MESSAGE(r.output.find(fp) != std::string::npos, r.output);
    CHECK_MESSAGE(r.output.find(other) != std::string::npos, r.output);
    nothing_written();
  }
  SUBCASE("the right one in openssl's form gets in (and fails later, at QEMU)") {
    std::string theirs = "sha256 Fingerprint=";
    for (char c : fp.substr(7)) theirs += static_cast<char>(toupper(c));
    auto ok = protect({"--remote", url, "--secret-file", secret, "--server-fingerprint", theirs});
    CHECK_MESSAGE(ok.status == 3, ok.output);
  }
  SUBCASE("a tcp:// client on the TLS port: refused with a reason") {
    auto r = protect({"--remote", fmt::format("tcp://127.0.0.1:{}/vm1", server.port),
                      "--secret-file", secret});
    CHECK(r.status == 1);
    CHECK(errors(r.output) == 1);
    CHECK_MESSAGE(r.output.find("TLS only") != std::string::npos, r.output);
    CHECK_MESSAGE(server.proc->wait_output("without TLS", std::chrono::seconds(10)),
                  server.proc->output());
    nothing_written();
  }
  SUBCASE("--server-fingerprint is for tls:// only") {
    auto r = protect({"--remote", fmt::format("tcp://127.0.0.1:{}/vm1", server.port),
                      "--secret-file", secret, "--server-fingerprint", fp});
    CHECK(r.status == 2);
    nothing_written();
  }
  // Still serving, and a client with the right pin and secret gets in.
  REQUIRE(server.proc->wait_exit(std::chrono::seconds(0)) == -1);
  auto c = dial_tls(server.port, fp);
  auto w = handshake(*c, "vm1", secret_of(secret));
  CHECK_MESSAGE(w, w.status().message());
}

TEST_CASE("remote tls: --init-tls never replaces a key, cleartext beyond loopback must be asked "
          "for") {
  TempDir dir;
  std::string tls = dir.file("tls");
  std::string fp = init_tls(tls);
  struct stat st;
  REQUIRE(stat((tls + "/server.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  std::string key = read_file(tls + "/server.key");
  auto again = run_command({KVMCDP_BINARY, "serve", "--init-tls", tls});
  CHECK(again.status == 8);
  CHECK_MESSAGE(again.output.find("kvmcdp: error:") != std::string::npos, again.output);
  CHECK(read_file(tls + "/server.key") == key);

  std::string root = make_root(dir);
  auto open = run_command({KVMCDP_BINARY, "serve", "--listen", "0.0.0.0:0", "--store-root", root});
  CHECK(open.status == 2);
  CHECK_MESSAGE(open.output.find("--insecure-cleartext") != std::string::npos, open.output);
  CHECK_MESSAGE(open.output.find("--init-tls") != std::string::npos, open.output);

  // Asked for: it serves, and a client reaching it from another address
  // is warned (not an error).
  BackgroundProcess plain({KVMCDP_BINARY, "serve", "--listen", "0.0.0.0:0", "--store-root", root,
                           "--insecure-cleartext"},
                          dir.file("plain.log"));
  REQUIRE_MESSAGE(plain.wait_output("serving", std::chrono::seconds(20)), plain.output());
  CHECK(plain.output().find("unencrypted") != std::string::npos);
  std::string out = plain.output();
  std::string port = out.substr(out.find("0.0.0.0:") + 8);
  port = port.substr(0, port.find_first_not_of("0123456789"));
  std::string secret = new_store(dir, root, "vm1");
  std::string ip;
  ifaddrs* ifs = nullptr;
  if (getifaddrs(&ifs) == 0) {
    for (ifaddrs* i = ifs; i && ip.empty(); i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
      if (remote::is_loopback(i->ifa_addr)) continue;
      char h[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, h, sizeof h);
      ip = h;
    }
    freeifaddrs(ifs);
  }
  REQUIRE_MESSAGE(!ip.empty(), "this machine has no non-loopback IPv4 address");
  auto r = run_command({KVMCDP_BINARY, "protect", "--qmp", dir.file("no-qmp.sock"), "--drive",
                        "vd0", "--store", dir.file("local"), "--remote",
                        fmt::format("tcp://{}:{}/vm1", ip, port), "--secret-file", secret});
  CHECK_MESSAGE(r.output.find("kvmcdp: warning: tcp://") != std::string::npos, r.output);
  CHECK_MESSAGE(r.output.find("not encrypted") != std::string::npos, r.output);
  CHECK(r.status == 3);  // got in, then found no QEMU
  // On loopback: no warning.
  auto lo = run_command({KVMCDP_BINARY, "protect", "--qmp", dir.file("no-qmp.sock"), "--drive",
                         "vd0", "--store", dir.file("local2"), "--remote",
                         fmt::format("tcp://127.0.0.1:{}/vm1", port), "--secret-file", secret});
  CHECK_MESSAGE(lo.output.find("not encrypted") == std::string::npos, lo.output);
  // A tls:// client at a server without TLS is told so, not left retrying.
  auto tls_at_plain = run_command(
      {KVMCDP_BINARY, "protect", "--qmp", dir.file("no-qmp.sock"), "--drive", "vd0", "--store",
       dir.file("local3"), "--remote", fmt::format("tls://127.0.0.1:{}/vm1", port),
       "--secret-file", secret, "--server-fingerprint", fp});
  CHECK(tls_at_plain.status == 1);
  CHECK_MESSAGE(tls_at_plain.output.find("without --tls-cert") != std::string::npos,
                tls_at_plain.output);
  CHECK(plain.stop() == 0);
}

TEST_CASE("remote tls: connections that never finish the handshake count as not logged in and "
          "are closed by the login timeout") {
  TempDir dir;
  std::string root = make_root(dir);
  std::string secret = new_store(dir, root, "vm1");
  std::string tls = dir.file("tls");
  std::string fp = init_tls(tls);
  Server server(dir, root, "0", "serve.log", tls_args(tls));
  // The limit per address is 8: these open TCP and send nothing.
  std::vector<int> idle;
  for (int i = 0; i < 8; ++i) idle.push_back(dial_fd(server.port));
  int excess = dial_fd(server.port);
  CHECK(closed_by_server(excess));
  close(excess);
  CHECK(server.proc->wait_output("that have not logged in", std::chrono::seconds(10)));
  // The first idle one is closed when the login's 30 s run out.
  CHECK(closed_by_server(idle[0]));
  CHECK_MESSAGE(server.proc->wait_output("did not finish in time", std::chrono::seconds(10)),
                server.proc->output());
  for (int fd : idle) close(fd);
  REQUIRE(server.proc->wait_exit(std::chrono::seconds(0)) == -1);
  auto c = dial_tls(server.port, fp);
  auto w = handshake(*c, "vm1", secret_of(secret));
  CHECK_MESSAGE(w, w.status().message());
}

}  // namespace kvmcdp::test
