// The set-up the systemd units run, against a real patched QEMU: a backup
// server and a protect that take every option from --config files, with
// the store's secret written by `serve --new-store --secret-out` under a
// permissive umask.  The server's store must restore the disk exactly.
#include <sys/stat.h>

#include <chrono>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "harness/protect_process.h"
#include "harness/qemu_process.h"
#include "harness/vm_io.h"

namespace kvmcdp::test {

TEST_CASE("config: protect and serve from --config files, the secret from --secret-out") {
  TempDir dir;
  std::string disk = dir.file("disk.raw");
  REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + disk, "bs=1M", "count=4"}).status == 0);
  REQUIRE(run_command({"truncate", "-s", "16M", disk}).status == 0);
  auto vm = start_vm(dir, disk);
  std::string root = dir.file("server");
  REQUIRE(mkdir(root.c_str(), 0700) == 0);

  // The usual umask would make a redirected stdout 0644, which protect
  // refuses; --secret-out makes the file 0600 itself.
  std::string secret = dir.file("vm1.secret");
  mode_t old_umask = umask(022);
  auto made = run_command(
      {KVMCDP_BINARY, "serve", "--store-root", root, "--new-store", "vm1", "--secret-out", secret});
  umask(old_umask);
  REQUIRE_MESSAGE(made.status == 0, made.output);
  CHECK(made.output.empty());  // nothing on the terminal
  struct stat st {};
  REQUIRE(stat(secret.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  CHECK(read_file(secret) == read_file(root + "/vm1/secret"));

  write_file(dir.file("serve.conf"), "listen=127.0.0.1:0\nstore-root=" + root + "\n");
  BackgroundProcess server({KVMCDP_BINARY, "serve", "--config", dir.file("serve.conf")},
                           dir.file("serve.log"));
  REQUIRE_MESSAGE(server.wait_output("serving", std::chrono::seconds(20)), server.output());
  std::string out = server.output();
  size_t at = out.find("on 127.0.0.1:");
  REQUIRE(at != std::string::npos);
  std::string port = out.substr(at + 13, out.find_first_not_of("0123456789", at + 13) - at - 13);

  // The README's recommended set-up: a spool, the server as the store.
  std::string conf = dir.file("vm1.conf");
  write_file(conf, fmt::format("# vm1's disk, shipped to the server\n"
                               "qmp = {}\n"
                               "drive = vd0\n"
                               "spool = {}\n"
                               "remote = tcp://127.0.0.1:{}/vm1\n"
                               "secret-file = {}\n"
                               "remote-wait = 60\n",
                               vm->tool_socket(), dir.file("spool"), port, secret));
  BackgroundProcess protect({KVMCDP_BINARY, "protect", "--config", conf},
                            dir.file("protect.log"));
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  qemu_io(*vm, "write -P 0x5a 1M 256k");
  qemu_io(*vm, "write -z 3M 64k");
  qemu_io(*vm, "flush");
  uint64_t seq = filter_seq(*vm);
  std::string md5 = md5_of_file(disk);
  wait_acked(*vm);
  // A stop waits (remote-wait) until the server has taken the spool.
  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
  CHECK(server.stop() == 0);
  check_restore(dir, root + "/vm1", seq, md5);
}

}  // namespace kvmcdp::test
