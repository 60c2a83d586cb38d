// protect --remote against a real `kvmcdp serve` (tcp on loopback, and
// through a real sshd started on a loopback port), with a real patched
// QEMU producing the stream: the server's store must restore every
// checkpoint exactly, across server outages, and refuse strangers.
#include <sys/stat.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <random>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "harness/protect_process.h"
#include "harness/qemu_process.h"
#include "harness/vm_io.h"
#include "integration/remote_client.h"
#include "remote/remote_auth.h"
#include "remote/remote_io.h"

namespace kvmcdp::test {
namespace {

using nlohmann::json;

constexpr uint64_t kDiskSize = kRemoteDiskSize;

struct Checkpoint {
  uint64_t seq;
  std::string md5;
};

void random_writes(QemuProcess& vm, std::mt19937_64& rng, int n, uint64_t max_len = 256 << 10) {
  for (int i = 0; i < n; ++i) {
    uint64_t len = (1 + rng() % (max_len / 4096)) * 4096;
    uint64_t off = (rng() % ((kDiskSize - len) / 4096)) * 4096;
    if (rng() % 8 == 0)
      qemu_io(vm, fmt::format("write -z {} {}", off, len));
    else
      qemu_io(vm, fmt::format("write -P {} {} {}", rng() % 255 + 1, off, len));
  }
}

json status_json(const std::string& store) {
  auto r = run_command({KVMCDP_BINARY, "status", "--json", "--store", store});
  if (r.status != 0) return json();
  // run_command folds stderr in; the JSON is the stdout part.
  return json::parse(r.output.substr(r.output.find('{')), nullptr, false);
}

// Waits until protect reports that the server holds `seq` durably.
bool wait_remote(const std::string& store, uint64_t seq, std::chrono::seconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    json j = status_json(store);
    if (j.is_object() && j.contains("remote") && j["remote"]["durable_seq"].get<uint64_t>() >= seq)
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return false;
}

void check_restores(const TempDir& dir, const std::string& store,
                    const std::vector<Checkpoint>& points) {
  for (const auto& c : points) check_restore(dir, store, c.seq, c.md5);
}

// A paused VM with a disk, and a backup server (on a free loopback port)
// with store vm1 and its secret file: what most cases start from.
struct Rig {
  TempDir dir;
  std::string disk = make_disk(dir);
  std::unique_ptr<QemuProcess> vm = start_vm(dir, disk);
  std::string root = make_root(dir);
  std::string secret = new_store(dir, root, "vm1");
  std::unique_ptr<Server> server = std::make_unique<Server>(dir, root);
  std::string port = server->port;
  std::string url = fmt::format("tcp://127.0.0.1:{}/vm1", port);
};

}  // namespace

TEST_CASE("remote: tcp with a local store: the server's store restores every point") {
  Rig rig;
  auto& [dir, disk, vm, root, secret, server, port, url] = rig;

  std::string store = dir.file("local");
  // --ack-from remote: the filter hears "durable" only once the server
  // has the records.
  ProtectProcess protect(vm->tool_socket(), "vd0", store,
                         {"--remote", url, "--secret-file", secret, "--ack-from", "remote",
                          "--remote-wait", "60"});
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());

  std::mt19937_64 rng(7);
  std::vector<Checkpoint> points;
  for (int round = 0; round < 6; ++round) {
    random_writes(*vm, rng, 10);
    points.push_back({filter_seq(*vm), md5_of_file(disk)});
    wait_acked(*vm);
    json server_side = status_json(root + "/vm1");
    REQUIRE(server_side.is_object());
    CHECK(server_side["last_seq"].get<uint64_t>() >= points.back().seq);
    // Seen from the server: the store is protected, fed by this client.
    CHECK(server_side["protected"].get<bool>());
    REQUIRE(server_side.contains("server"));
    CHECK(server_side["server"]["receiving"].get<bool>());
    CHECK(server_side["server"]["client"].get<std::string>().rfind("127.0.0.1:", 0) == 0);
    CHECK(server_side["server"]["pid"].get<int>() == server->proc->pid());
  }
  auto text = run_command({KVMCDP_BINARY, "status", "--store", root + "/vm1"});
  CHECK_MESSAGE(text.output.find("protected:   yes, shipped here by 127.0.0.1:") !=
                    std::string::npos,
                text.output);
  REQUIRE_MESSAGE(wait_remote(store, points.back().seq, std::chrono::seconds(60)),
                  protect.output());
  json st = status_json(store);
  CHECK(st["remote"]["connected"].get<bool>());
  CHECK(st["remote"]["url"] == url);
  // The client stays connected and idle: the server's status still gets
  // to the last durable record (its once-a-second updates skip none).
  uint64_t served_seq = 0;
  for (int i = 0; i < 50 && served_seq < points.back().seq; ++i) {
    json sj = status_json(root + "/vm1");
    if (sj.is_object() && sj.contains("server"))
      served_seq = sj["server"]["durable_seq"].get<uint64_t>();
    if (served_seq < points.back().seq) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  CHECK(served_seq >= points.back().seq);
  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());

  // The server's store is an ordinary store: verify and restore there.
  std::string remote_store = root + "/vm1";
  // Once the client is gone the server says so, with how far it got.
  json after;
  for (int i = 0; i < 100; ++i) {
    after = status_json(remote_store);
    if (after.is_object() && !after["protected"].get<bool>()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  REQUIRE(after.is_object());
  CHECK_FALSE(after["protected"].get<bool>());
  CHECK_FALSE(after["server"]["receiving"].get<bool>());
  CHECK(after["server"]["ended"] == "the client disconnected");
  CHECK(after["server"]["durable_seq"].get<uint64_t>() == after["last_seq"].get<uint64_t>());
  CHECK(after["server"]["bytes"].get<uint64_t>() > 0);
  text = run_command({KVMCDP_BINARY, "status", "--store", remote_store});
  CHECK_MESSAGE(text.output.find("last client: 127.0.0.1:") != std::string::npos, text.output);
  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", remote_store});
  CHECK_MESSAGE(verify.status == 0, verify.output);
  check_restores(dir, remote_store, points);
  // Shipped byte for byte: every segment and index is identical.
  for (const char* what : {"journal", "base.raw", "base.raw.crc"}) {
    auto cmp = run_command({"diff", "-r", store + "/" + what, remote_store + "/" + what});
    CHECK_MESSAGE(cmp.status == 0, what, cmp.output);
  }
}

TEST_CASE("remote: spool only, the server down for 10 s while the VM writes: nothing lost") {
  Rig rig;
  auto& [dir, disk, vm, root, secret, server, port, url] = rig;

  std::string spool = dir.file("spool");
  ProtectProcess protect(vm->tool_socket(), "vd0", "",
                         {"--remote", url, "--secret-file", secret, "--spool", spool,
                          "--segment-size", "1"});
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());

  std::mt19937_64 rng(11);
  std::vector<Checkpoint> points;
  random_writes(*vm, rng, 10);
  points.push_back({filter_seq(*vm), md5_of_file(disk)});
  REQUIRE_MESSAGE(wait_remote(spool, points.back().seq, std::chrono::seconds(60)),
                  protect.output());
  // The base copy went to the server and left the spool.
  auto base_gone = [&] { return access((spool + "/base.raw").c_str(), F_OK) != 0; };
  for (int i = 0; i < 100 && !base_gone(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(base_gone());
  // Connected, the spool's acks wait for the server: once the filter has
  // its ack, the server holds the records.
  for (int i = 0; i < 3; ++i) {
    random_writes(*vm, rng, 5);
    points.push_back({filter_seq(*vm), md5_of_file(disk)});
    wait_acked(*vm);
    json server_side = status_json(root + "/vm1");
    REQUIRE(server_side.is_object());
    CHECK(server_side["last_seq"].get<uint64_t>() >= points.back().seq);
  }

  server->proc->kill9();
  auto down = std::chrono::steady_clock::now();
  // Its serve.json still says "connected", but its pid is gone.
  json dead = status_json(root + "/vm1");
  REQUIRE(dead.is_object());
  CHECK_FALSE(dead["protected"].get<bool>());
  CHECK(dead["server"]["ended"] == "kvmcdp serve is gone");
  while (std::chrono::steady_clock::now() - down < std::chrono::seconds(10)) {
    random_writes(*vm, rng, 6);
    qemu_io(*vm, "flush");  // flushes complete: the spool acks them
    points.push_back({filter_seq(*vm), md5_of_file(disk)});
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  json st = status_json(spool);
  REQUIRE(st.is_object());
  CHECK_FALSE(st["remote"]["connected"].get<bool>());
  CHECK(st["remote"]["lag"]["records"].get<uint64_t>() > 0);
  CHECK(st["remote"]["lag"]["bytes"].get<uint64_t>() > 0);

  server = std::make_unique<Server>(dir, root, port, "serve2.log");
  random_writes(*vm, rng, 10);
  points.push_back({filter_seq(*vm), md5_of_file(disk)});
  REQUIRE_MESSAGE(wait_remote(spool, points.back().seq, std::chrono::seconds(90)),
                  protect.output());
  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());

  // Trimmed: the spool keeps at most its newest segment.
  auto segs = run_command({"sh", "-c", "ls " + spool + "/journal/*.seg | wc -l"});
  CHECK(std::stoi(segs.output) <= 2);

  std::string remote_store = root + "/vm1";
  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", remote_store});
  CHECK_MESSAGE(verify.status == 0, verify.output);  // continuity: no record twice or skipped
  auto pts = run_command({KVMCDP_BINARY, "points", "--json", "--store", remote_store});
  json pj = json::parse(pts.output.substr(pts.output.find('{')), nullptr, false);
  REQUIRE(pj.is_object());
  CHECK(pj["gaps"].empty());
  check_restores(dir, remote_store, points);
}

TEST_CASE("remote: a spool past its limit hands over to the filter's bitmap, gaps are exact") {
  Rig rig;
  auto& [dir, disk, vm, root, secret, server, port, url] = rig;
  std::string spool = dir.file("spool");
  ProtectProcess protect(vm->tool_socket(), "vd0", "",
                         {"--remote", url, "--secret-file", secret, "--spool", spool,
                          "--spool-size", "1", "--segment-size", "1", "--filter-timeout",
                          "1000"});
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  std::mt19937_64 rng(13);
  std::vector<Checkpoint> before;
  random_writes(*vm, rng, 5);
  before.push_back({filter_seq(*vm), md5_of_file(disk)});
  REQUIRE_MESSAGE(wait_remote(spool, before.back().seq, std::chrono::seconds(60)),
                  protect.output());

  server->proc->kill9();
  // Random data does not compress: a few MiB overflow a 1 MiB spool.
  for (int i = 0; i < 4; ++i) {
    uint64_t off = (2 + i) << 20;
    std::string rnd = dir.file(fmt::format("rnd{}", i));
    REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + rnd, "bs=1M", "count=1"}).status == 0);
    qemu_io(*vm, fmt::format("write -s {} {} 1M", rnd, off));
    qemu_io(*vm, fmt::format("write -P {} {} 4k", 0x60 + i, (rng() % 4000) * 4096));
    qemu_io(*vm, "flush");
  }
  REQUIRE_MESSAGE(protect.wait_output("the spool is full", std::chrono::seconds(60)),
                  protect.output());
  // The filter, left without a receiver past its timeout, drops to its
  // dirty bitmap: what is written now is only covered by the resync.
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  random_writes(*vm, rng, 5);
  // In the bitmap the writes get no sequence numbers: the moment names
  // this point.
  std::string during = iso_now();

  server = std::make_unique<Server>(dir, root, port, "serve2.log");
  REQUIRE_MESSAGE(protect.wait_output("reconnecting the filter", std::chrono::seconds(90)),
                  protect.output());
  // Wait for the resync to finish (the filter leaves its gap state).
  for (int i = 0; i < 600; ++i) {
    QmpReply q = vm->qmp().execute("query-cdp");
    if (q.ok() && !q.value.empty() && !q.value[0]["gap"].get<bool>()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  random_writes(*vm, rng, 5);
  Checkpoint after{filter_seq(*vm), md5_of_file(disk)};
  REQUIRE_MESSAGE(wait_remote(spool, after.seq, std::chrono::seconds(90)), protect.output());
  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());

  std::string remote_store = root + "/vm1";
  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", remote_store});
  CHECK_MESSAGE(verify.status == 0, verify.output);
  auto pts = run_command({KVMCDP_BINARY, "points", "--json", "--store", remote_store});
  json pj = json::parse(pts.output.substr(pts.output.find('{')), nullptr, false);
  REQUIRE(pj.is_object());
  CHECK(pj["gaps"].size() == 1);
  check_restores(dir, remote_store, before);
  check_restores(dir, remote_store, {after});
  // Inside the gap the journal cannot vouch for the disk: refused.
  auto r = run_command({KVMCDP_BINARY, "restore", "--store", remote_store, "--at", during, "-o",
                        dir.file("gap.raw")});
  CHECK_MESSAGE(r.status == 6, r.output, pts.output);
}

TEST_CASE("remote: wrong secrets and escaping names are refused, the server survives garbage") {
  TempDir dir;
  std::string disk = make_disk(dir);
  auto vm = start_vm(dir, disk);
  std::string root = dir.file("server");
  mkdir(root.c_str(), 0700);
  new_store(dir, root, "vm1");
  std::string other = new_store(dir, root, "vm2");
  Server server(dir, root);

  // vm2's secret does not open vm1: protect fails before touching the VM.
  auto wrong = run_command({KVMCDP_BINARY, "protect", "--qmp", vm->tool_socket(), "--drive",
                            "vd0", "--store", dir.file("local"), "--remote",
                            fmt::format("tcp://127.0.0.1:{}/vm1", server.port), "--secret-file",
                            other});
  CHECK(wrong.status == 1);
  CHECK_MESSAGE(wrong.output.find("kvmcdp: error: the server refused: authentication failed") !=
                    std::string::npos,
                wrong.output);
  CHECK(access((root + "/vm1/manifest.json").c_str(), F_OK) != 0);
  CHECK(access((root + "/vm1/journal").c_str(), F_OK) != 0);
  QmpReply cdp = vm->qmp().execute("query-cdp");
  REQUIRE(cdp.ok());
  CHECK(cdp.value.empty());

  // A path out of the root is not even a URL kvmcdp accepts ...
  auto escape = run_command({KVMCDP_BINARY, "protect", "--qmp", vm->tool_socket(), "--drive",
                             "vd0", "--store", dir.file("local"), "--remote",
                             fmt::format("tcp://127.0.0.1:{}/../vm1", server.port),
                             "--secret-file", other});
  CHECK(escape.status == 2);
  // ... and a hand-made client that asks for it anyway gets nothing.
  for (const char* name : {"../server/vm2", "..", "vm2/../vm1", "/etc"}) {
    auto c = dial(server.port);
    auto got = handshake(*c, name, std::string(64, '0'));
    REQUIRE_FALSE(got);
    CHECK(got.status().cause() == Cause::kRefused);
  }
  // Garbage instead of a hello: that connection ends, the server goes on.
  {
    auto c = dial(server.port);
    std::string junk(4096, '\x5a');
    CHECK(write(c->in_fd(), junk.data(), junk.size()) > 0);
    remote::Message m;
    CHECK_FALSE(c->receive(&m, 10000));
  }
  auto stores = run_command({"ls", root});
  CHECK(stores.output == "vm1\nvm2\n");
  auto right = run_command({KVMCDP_BINARY, "serve", "--store-root", root, "--new-store", "vm1"});
  CHECK(right.status == 5);  // exists already
  CHECK(server.proc->wait_exit(std::chrono::seconds(0)) == -1);  // still serving
}

TEST_CASE("remote: ssh:// through a real sshd on loopback") {
  if (access("/usr/sbin/sshd", X_OK) != 0) FAIL("openssh-server is not installed (setup installs it)");
  TempDir dir;
  // A throw-away sshd: its own host key, one authorized client key.
  std::string hostkey = dir.file("host_key"), key = dir.file("client_key");
  REQUIRE(run_command({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostkey}).status == 0);
  REQUIRE(run_command({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key}).status == 0);
  REQUIRE(run_command({"cp", key + ".pub", dir.file("authorized_keys")}).status == 0);
  mkdir("/run/sshd", 0755);
  int probe = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  REQUIRE(bind(probe, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  socklen_t len = sizeof sa;
  getsockname(probe, reinterpret_cast<sockaddr*>(&sa), &len);
  std::string port = std::to_string(ntohs(sa.sin_port));
  close(probe);
  std::ofstream(dir.file("sshd_config"))
      << "Port " << port << "\nListenAddress 127.0.0.1\nHostKey " << hostkey
      << "\nAuthorizedKeysFile " << dir.file("authorized_keys")
      << "\nPidFile " << dir.file("sshd.pid")
      << "\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
         "PasswordAuthentication no\n";
  BackgroundProcess sshd({"/usr/sbin/sshd", "-D", "-e", "-f", dir.file("sshd_config")},
                         dir.file("sshd.log"));
  REQUIRE_MESSAGE(sshd.wait_output("Server listening", std::chrono::seconds(20)), sshd.output());
  setenv("KVMCDP_RSH",
         fmt::format("ssh -i {} -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no "
                     "-o LogLevel=ERROR",
                     key)
             .c_str(),
         1);

  std::string disk = make_disk(dir);
  auto vm = start_vm(dir, disk);
  std::string remote_store = dir.file("over-ssh");
  std::string url = fmt::format("ssh://{}@127.0.0.1:{}{}", getenv("USER") ? getenv("USER") : "root",
                                port, remote_store);
  std::string spool = dir.file("spool");
  ProtectProcess protect(vm->tool_socket(), "vd0", "",
                         {"--remote", url, "--spool", spool, "--remote-path", KVMCDP_BINARY});
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  std::mt19937_64 rng(17);
  std::vector<Checkpoint> points;
  for (int round = 0; round < 4; ++round) {
    random_writes(*vm, rng, 8);
    points.push_back({filter_seq(*vm), md5_of_file(disk)});
  }
  REQUIRE_MESSAGE(wait_remote(spool, points.back().seq, std::chrono::seconds(60)),
                  protect.output(), sshd.output());
  // The server side names the client by sshd's SSH_CLIENT.
  json served = status_json(remote_store);
  REQUIRE(served.is_object());
  CHECK(served["server"]["receiving"].get<bool>());
  CHECK_MESSAGE(served["server"]["client"].get<std::string>().rfind("ssh 127.0.0.1:", 0) == 0,
                served.dump());
  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
  // An "error:" line means the command failed: this run did not.
  CHECK_MESSAGE(protect.output().find("error:") == std::string::npos, protect.output());
  unsetenv("KVMCDP_RSH");
  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", remote_store});
  CHECK_MESSAGE(verify.status == 0, verify.output);
  check_restores(dir, remote_store, points);
}

}  // namespace kvmcdp::test

namespace kvmcdp::test {

TEST_CASE("remote: a client takes its store over from its own stale connection") {
  TempDir dir;
  std::string root = dir.file("server");
  mkdir(root.c_str(), 0700);
  std::string secret = secret_of(new_store(dir, root, "vm1"));
  Server server(dir, root);
  // The first connection gets in and then goes silent, as one whose
  // network dropped without a FIN would.
  auto stale = dial(server.port);
  REQUIRE(handshake(*stale, "vm1", secret));
  // The same client again: it must not wait for TCP keepalive.
  auto fresh = dial(server.port);
  auto w = handshake(*fresh, "vm1", secret);
  REQUIRE_MESSAGE(w, w.status().message());
  CHECK(server.proc->output().find("takes over") != std::string::npos);
  remote::Message m;
  auto got = stale->receive(&m, 5000);
  CHECK_FALSE(got);  // the stale one was closed
  // A client without the secret cannot take anything over.
  auto stranger = dial(server.port);
  CHECK_FALSE(handshake(*stranger, "vm1", std::string(64, 'a')));
}

}  // namespace kvmcdp::test

namespace kvmcdp::test {

TEST_CASE("remote: a stop while the server is down keeps the rest in the spool for the next run") {
  Rig rig;
  auto& [dir, disk, vm, root, secret, server, port, url] = rig;
  std::string spool = dir.file("spool");
  std::vector<std::string> args = {"--remote", url, "--secret-file", secret, "--spool", spool,
                                   "--remote-wait", "2"};
  std::mt19937_64 rng(19);
  std::vector<Checkpoint> points;
  {
    ProtectProcess protect(vm->tool_socket(), "vd0", "", args);
    REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
    random_writes(*vm, rng, 8);
    points.push_back({filter_seq(*vm), md5_of_file(disk)});
    REQUIRE_MESSAGE(wait_remote(spool, points.back().seq, std::chrono::seconds(60)),
                    protect.output());
    server->proc->kill9();
    random_writes(*vm, rng, 8);
    points.push_back({filter_seq(*vm), md5_of_file(disk)});
    // The stop waits --remote-wait for the server, then says what is left.
    REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
    CHECK_MESSAGE(protect.output().find("bytes behind; they stay in") != std::string::npos,
                  protect.output());
  }
  json st = status_json(spool);
  REQUIRE(st.is_object());
  CHECK(st["remote"]["durable_seq"].get<uint64_t>() < points.back().seq);

  // The next run, with the server back, ships what the last one left.
  server = std::make_unique<Server>(dir, root, port, "serve2.log");
  ProtectProcess again(vm->tool_socket(), "vd0", "", args);
  REQUIRE_MESSAGE(again.wait_output("protecting vd0", std::chrono::seconds(60)), again.output());
  CHECK(again.output().find("continuing the stream") != std::string::npos);
  random_writes(*vm, rng, 8);
  REQUIRE_MESSAGE(wait_remote(spool, filter_seq(*vm), std::chrono::seconds(90)), again.output());
  REQUIRE_MESSAGE(again.stop() == 0, again.output());
  std::string remote_store = root + "/vm1";
  auto verify = run_command({KVMCDP_BINARY, "journal", "verify", "--store", remote_store});
  CHECK_MESSAGE(verify.status == 0, verify.output);
  check_restores(dir, remote_store, points);
}

}  // namespace kvmcdp::test
