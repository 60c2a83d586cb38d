// Where `kvmcdp restore -o` may write, against real things: a store
// journalled from a patched QEMU, loop devices over temp files, a device
// node made with mknod, a device held open with O_EXCL, an image held open
// by qemu-storage-daemon, and standard output piped into md5sum.  Every
// refusal leaves the target as it was; every write matches the MD5 of the
// disk at that point.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <random>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "harness/protect_process.h"
#include "harness/qemu_process.h"
#include "harness/vm_io.h"

namespace kvmcdp::test {
namespace {

constexpr uint64_t kDiskSize = 32ull << 20;

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// A store with a base of 8 MiB of data (then holes) and a journal of
// writes, write-zeroes and discards; `seq`/`md5`: its last point.  With a
// built node at `node_seq`, for the restores that start from a node.
struct Store {
  std::string path;
  uint64_t seq = 0, node_seq = 0;
  std::string md5;
};

Store make_store(TempDir& dir) {
  setenv("KVMCDP_QEMU_IMG", qemu_bin("qemu-img").c_str(), 1);
  Store s;
  std::string disk = dir.file("disk.raw");
  s.path = dir.file("store");
  REQUIRE(run_command({"dd", "if=/dev/urandom", "of=" + disk, "bs=1M", "count=8"}).status == 0);
  REQUIRE(run_command({"truncate", "-s", std::to_string(kDiskSize), disk}).status == 0);
  auto vm = start_vm(dir, disk);
  ProtectProcess protect(vm->tool_socket(), "vd0", s.path);
  REQUIRE_MESSAGE(protect.wait_base_complete(std::chrono::seconds(60)), protect.output());
  std::mt19937_64 rng(77);
  auto round = [&]() {
    for (int i = 0; i < 12; ++i) {
      uint64_t len = (1 + rng() % 256) * 512;
      uint64_t off = (rng() % ((kDiskSize - len) / 512)) * 512;
      switch (rng() % 6) {
        case 0: qemu_io(*vm, fmt::format("write -z {} {}", off, len)); break;
        case 1: qemu_io(*vm, fmt::format("discard {} {}", off, len)); break;
        default: qemu_io(*vm, fmt::format("write -P {} {} {}", rng() % 255 + 1, off, len));
      }
    }
    wait_acked(*vm);
    return filter_seq(*vm);
  };
  s.node_seq = round();
  s.seq = round();
  s.md5 = md5_of_file(disk);
  REQUIRE_MESSAGE(protect.stop() == 0, protect.output());
  auto b = run_command(
      {KVMCDP_BINARY, "build", "--store", s.path, "--seq", std::to_string(s.node_seq)});
  REQUIRE_MESSAGE(b.status == 0, b.output);
  return s;
}

std::vector<std::string> restore_argv(const Store& s, std::vector<std::string> extra) {
  std::vector<std::string> argv = {KVMCDP_BINARY, "restore", "--store", s.path, "--seq",
                                   std::to_string(s.seq)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

// MD5 of the first `n` bytes of a file or device.
std::string md5_head(const std::string& path, uint64_t n) {
  auto r = run_command({"sh", "-c", fmt::format("head -c {} '{}' | md5sum", n, path)});
  REQUIRE(r.status == 0);
  return r.output.substr(0, 32);
}

struct stat stat_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st;
}

// A loop device over a temp file of `size` bytes of 0xAA (so bytes the
// restore forgets to write show), detached when the test ends.  The tests
// write through a node of their own made with mknod in the temp dir, so a
// restore that replaces the node (the bug this guards against) cannot
// turn the host's /dev/loopN into a file.
class LoopDevice {
 public:
  LoopDevice(const TempDir& dir, const std::string& name, uint64_t size) {
    file_ = dir.file(name);
    auto fill = run_command(
        {"sh", "-c",
         fmt::format("head -c {} /dev/zero | tr '\\0' '\\252' > '{}'", size, file_)});
    REQUIRE(fill.status == 0);
    auto r = run_command({"losetup", "-f", "--show", file_});
    REQUIRE_MESSAGE(r.status == 0, r.output);
    loop_.dev = trim(r.output);
    struct stat st {};
    REQUIRE(::stat(loop_.dev.c_str(), &st) == 0);
    node_ = file_ + ".dev";
    REQUIRE(::mknod(node_.c_str(), S_IFBLK | 0600, st.st_rdev) == 0);
  }
  const std::string& dev() const { return node_; }

 private:
  // A member, so that it detaches even when the constructor fails.
  struct Detach {
    std::string dev;
    ~Detach() {
      if (!dev.empty()) run_command({"losetup", "-d", dev});
    }
  };
  Detach loop_;
  std::string file_, node_;
};

// One store for every case (a VM and a protect run each time would cost
// more than the cases themselves); removed at exit.
struct Fixture {
  TempDir dir;
  Store store = make_store(dir);
};
const Store& shared_store() {
  static Fixture f;
  return f.store;
}

size_t leftovers(const std::string& dir) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().string().find("kvmcdp-partial") != std::string::npos) n++;
  return n;
}

}  // namespace

TEST_CASE("restore -o: files, devices, standard output, and what is refused") {
  const Store& s = shared_store();
  TempDir dir;
  std::string outdir = dir.file("out");
  std::filesystem::create_directory(outdir);

  SUBCASE("a new file, then the same path: refused without --force, replaced with it") {
    std::string out = outdir + "/r.raw";
    auto first = run_command(restore_argv(s, {"-o", out}));
    REQUIRE_MESSAGE(first.status == 0, first.output);
    CHECK(md5_of_file(out) == s.md5);
    ino_t ino = stat_of(out).st_ino;
    write_file(out, "precious");
    auto again = run_command(restore_argv(s, {"-o", out}));
    CHECK_MESSAGE(again.status == 8, again.output);
    CHECK(again.output.find("kvmcdp: error: ") == 0);
    CHECK(again.output.find("--force") != std::string::npos);
    CHECK(read_file(out) == "precious");
    auto forced = run_command(restore_argv(s, {"--force", "-o", out}));
    REQUIRE_MESSAGE(forced.status == 0, forced.output);
    CHECK(md5_of_file(out) == s.md5);
    CHECK(stat_of(out).st_ino != ino);  // a new file renamed over it
    CHECK(leftovers(outdir) == 0);

    // --format qcow2 and --overlay follow the same rule, side files too.
    std::string q = outdir + "/r.qcow2";
    write_file(q, "precious");
    for (std::vector<std::string> how : {std::vector<std::string>{"--format", "qcow2"},
                                         std::vector<std::string>{"--overlay"}}) {
      how.insert(how.end(), {"-o", q});
      auto refused = run_command(restore_argv(s, how));
      CHECK_MESSAGE(refused.status == 8, refused.output);
      CHECK(read_file(q) == "precious");
      how.push_back("--force");
      auto ok = run_command(restore_argv(s, how));
      REQUIRE_MESSAGE(ok.status == 0, ok.output);
      auto raw = run_command({qemu_bin("qemu-img"), "convert", "-O", "raw", q, outdir + "/q.raw"});
      REQUIRE_MESSAGE(raw.status == 0, raw.output);
      CHECK(md5_of_file(outdir + "/q.raw") == s.md5);
      std::filesystem::remove(outdir + "/q.raw");
      write_file(q, "precious");
    }
    CHECK(leftovers(outdir) == 0);
  }

  SUBCASE("a character device is never written, even with --force") {
    std::string null_node = outdir + "/null";
    REQUIRE(::mknod(null_node.c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0);
    for (bool force : {false, true}) {
      auto argv = restore_argv(s, {"-o", null_node});
      if (force) argv.push_back("--force");
      auto r = run_command(argv);
      CHECK_MESSAGE(r.status == 8, r.output);
      CHECK(r.output.find("character device") != std::string::npos);
      CHECK(S_ISCHR(stat_of(null_node).st_mode));
    }
    CHECK(leftovers(outdir) == 0);
  }

  SUBCASE("a block device: only with --force, written in place, the node stays") {
    LoopDevice loop(dir, "loop.img", kDiskSize + (1 << 20));
    std::string before = md5_head(loop.dev(), kDiskSize + (1 << 20));
    auto refused = run_command(restore_argv(s, {"-o", loop.dev()}));
    CHECK_MESSAGE(refused.status == 8, refused.output);
    CHECK(refused.output.find("block device") != std::string::npos);
    CHECK(md5_head(loop.dev(), kDiskSize + (1 << 20)) == before);

    // Image formats other than raw make no sense on a device.
    auto qcow = run_command(restore_argv(s, {"--force", "--format", "qcow2", "-o", loop.dev()}));
    CHECK_MESSAGE(qcow.status == 2, qcow.output);

    dev_t rdev = stat_of(loop.dev()).st_rdev;
    auto ok = run_command(restore_argv(s, {"--force", "-o", loop.dev()}));
    REQUIRE_MESSAGE(ok.status == 0, ok.output);
    CHECK(S_ISBLK(stat_of(loop.dev()).st_mode));
    CHECK(stat_of(loop.dev()).st_rdev == rdev);
    // The base's holes and the zeroed ranges were 0xAA before: all
    // written, so the device holds exactly the disk.
    CHECK(md5_head(loop.dev(), kDiskSize) == s.md5);
    CHECK(ok.output.find("the rest left as it was") != std::string::npos);

    // From the built node (qemu-img writes the node onto the device).
    REQUIRE(run_command({"sh", "-c", fmt::format("head -c {} /dev/zero | tr '\\0' '\\252' "
                                                 "> {}",
                                                 kDiskSize, loop.dev())})
                .status == 0);
    auto node = run_command(restore_argv(s, {"--force", "--from-node", "-o", loop.dev()}));
    REQUIRE_MESSAGE(node.status == 0, node.output);
    CHECK(node.output.find("restore point") != std::string::npos);
    CHECK(md5_head(loop.dev(), kDiskSize) == s.md5);
  }

  SUBCASE("a block device smaller than the disk: refused before anything is written") {
    LoopDevice loop(dir, "small.img", kDiskSize - (1 << 20));
    std::string before = md5_head(loop.dev(), kDiskSize);
    auto r = run_command(restore_argv(s, {"--force", "-o", loop.dev()}));
    CHECK_MESSAGE(r.status == 2, r.output);
    CHECK(r.output.find("nothing written") != std::string::npos);
    CHECK(md5_head(loop.dev(), kDiskSize) == before);
  }

  SUBCASE("a block device someone holds open exclusively: refused") {
    LoopDevice loop(dir, "held.img", kDiskSize);
    std::string before = md5_head(loop.dev(), kDiskSize);
    int held = ::open(loop.dev().c_str(), O_RDWR | O_EXCL);  // as mount or LVM would
    REQUIRE(held >= 0);
    auto r = run_command(restore_argv(s, {"--force", "-o", loop.dev()}));
    ::close(held);
    CHECK_MESSAGE(r.status == 8, r.output);
    CHECK(r.output.find("in use") != std::string::npos);
    CHECK(md5_head(loop.dev(), kDiskSize) == before);
  }

  SUBCASE("an image a running QEMU has open: refused even with --force") {
    for (std::string fmt_name : {"qcow2", "raw"}) {
      CAPTURE(fmt_name);
      std::string image = outdir + "/vm." + fmt_name;
      auto c = run_command({qemu_bin("qemu-img"), "create", "-q", "-f", fmt_name, image, "32M"});
      REQUIRE_MESSAGE(c.status == 0, c.output);
      std::string before = md5_of_file(image);
      ino_t ino = stat_of(image).st_ino;
      {
        auto qsd = QemuProcess::start_storage_daemon(
            dir, {"--blockdev", fmt::format("driver=file,filename={},node-name=f0", image),
                  "--blockdev", fmt::format("driver={},file=f0,node-name=disk0", fmt_name),
                  "--nbd-server", fmt::format("addr.type=unix,addr.path={}", dir.file("nbd.sock")),
                  "--export", "type=nbd,id=e0,node-name=disk0,name=e0,writable=on"});
        auto r = run_command(restore_argv(s, {"--force", "-o", image}));
        CHECK_MESSAGE(r.status == 8, r.output);
        CHECK(r.output.find("QEMU") != std::string::npos);
        CHECK(stat_of(image).st_ino == ino);
        CHECK(md5_of_file(image) == before);
      }
      // QEMU gone: --force replaces it.
      auto r = run_command(restore_argv(s, {"--force", "-o", image}));
      CHECK_MESSAGE(r.status == 0, r.output);
      CHECK(md5_of_file(image) == s.md5);
      std::filesystem::remove(image);
    }
    CHECK(leftovers(outdir) == 0);
  }

  SUBCASE("-o -: the raw image on standard output, the messages on stderr") {
    std::string err = outdir + "/err";
    auto piped = run_command(
        {"sh", "-c",
         fmt::format("'{}' restore --store '{}' --seq {} -o - 2>'{}' | md5sum", KVMCDP_BINARY,
                     s.path, s.seq, err)});
    REQUIRE_MESSAGE(piped.status == 0, piped.output);
    CHECK(piped.output.substr(0, 32) == s.md5);
    CHECK(read_file(err).find(fmt::format("restored seq {} to standard output", s.seq)) !=
          std::string::npos);
    auto node = run_command(
        {"sh", "-c",
         fmt::format("'{}' restore --quiet --from-node --store '{}' --seq {} -o - | md5sum",
                     KVMCDP_BINARY, s.path, s.seq)});
    REQUIRE_MESSAGE(node.status == 0, node.output);
    CHECK(node.output.substr(0, 32) == s.md5);
    // No leftover temp in the store.
    CHECK(leftovers(s.path) == 0);
    for (std::vector<std::string> how : {std::vector<std::string>{"--format", "qcow2"},
                                         std::vector<std::string>{"--overlay"}}) {
      how.insert(how.end(), {"-o", "-"});
      auto r = run_command(restore_argv(s, how));
      CHECK_MESSAGE(r.status == 2, r.output);
    }
  }
}

}  // namespace kvmcdp::test
