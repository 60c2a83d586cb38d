// The output rules on real files, a device node made with mknod and a lock
// held the way QEMU holds one.  Block devices and QEMU itself: the restore
// e2e test (tests/e2e/restore_output_test.sh).
#include "restore/output_target.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "store/journal_test_util.h"

namespace kvmcdp {
namespace {

using journal::testing::TempDir;

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

ino_t inode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_ino;
}

size_t entries_in(const std::string& dir) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) (void)e, n++;
  return n;
}

}  // namespace

TEST_CASE("output target: a new path is written, an existing file only with force") {
  TempDir d;
  auto t = check_output_target(d.path + "/new.raw", false);
  REQUIRE(t);
  CHECK(t->kind == OutputKind::kNewFile);

  std::string file = d.path + "/old.raw";
  write_text(file, "keep me");
  auto refused = check_output_target(file, false);
  REQUIRE(!refused);
  CHECK(refused.status().kind() == ErrorKind::kExists);
  CHECK(refused.status().message().find("--force") != std::string::npos);
  auto forced = check_output_target(file, true);
  REQUIRE(forced);
  CHECK(forced->kind == OutputKind::kExistingFile);
  CHECK(read_text(file) == "keep me");
}

TEST_CASE("output target: device nodes, folders and dangling links are refused") {
  TempDir d;
  std::string null_node = d.path + "/null";
  REQUIRE(::mknod(null_node.c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0);
  for (bool force : {false, true}) {
    auto t = check_output_target(null_node, force);
    REQUIRE(!t);
    CHECK(t.status().kind() == ErrorKind::kExists);
    CHECK(t.status().message().find("character device") != std::string::npos);
  }
  struct stat st {};
  REQUIRE(::stat(null_node.c_str(), &st) == 0);
  CHECK(S_ISCHR(st.st_mode));

  auto dir = check_output_target(d.path, true);
  REQUIRE(!dir);
  CHECK(dir.status().kind() == ErrorKind::kExists);

  std::string link = d.path + "/dangling";
  REQUIRE(::symlink((d.path + "/nowhere").c_str(), link.c_str()) == 0);
  auto dangling = check_output_target(link, false);
  REQUIRE(!dangling);
  CHECK(dangling.status().kind() == ErrorKind::kExists);
}

TEST_CASE("output target: a file QEMU has open (its lock bytes held) is refused even with force") {
  TempDir d;
  std::string file = d.path + "/disk.raw";
  write_text(file, std::string(4096, 'x'));
  // What QEMU's file-posix does on open: a shared OFD lock on byte 100
  // (consistent read), from an open file description of its own.
  int holder = ::open(file.c_str(), O_RDWR);
  REQUIRE(holder >= 0);
  struct flock fl {};
  fl.l_type = F_RDLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 100;
  fl.l_len = 1;
  REQUIRE(::fcntl(holder, F_OFD_SETLK, &fl) == 0);
  auto t = check_output_target(file, true);
  REQUIRE(!t);
  CHECK(t.status().kind() == ErrorKind::kExists);
  CHECK(t.status().message().find("QEMU") != std::string::npos);
  ::close(holder);  // lock gone with the description
  CHECK(check_output_target(file, true));
}

TEST_CASE("output target: a block device must hold the whole disk") {
  OutputTarget t;
  t.kind = OutputKind::kBlockDevice;
  t.path = "/dev/fake";
  t.device_size = 1 << 20;
  CHECK(check_output_fits(t, 1 << 20));
  auto small = check_output_fits(t, (1 << 20) + 512);
  REQUIRE(!small);
  CHECK(small.kind() == ErrorKind::kUsage);
}

TEST_CASE("temp beside: renamed in, never over a file that appeared meanwhile") {
  TempDir d;
  std::string target = d.path + "/out.raw";
  {
    auto t = TempBeside::create(target, false);
    REQUIRE(t);
    CHECK(fsutil::dirname_of(t->path()) == d.path);
    write_text(t->path(), "new");
    write_text(target, "someone else's");  // appears while we write
    auto s = t->commit();
    REQUIRE(!s);
    CHECK(s.kind() == ErrorKind::kExists);
  }
  CHECK(read_text(target) == "someone else's");
  CHECK(entries_in(d.path) == 1);  // the temp is gone

  ino_t before = inode_of(target);
  {
    auto t = TempBeside::create(target, true);
    REQUIRE(t);
    write_text(t->path(), "replaced");
    REQUIRE(t->commit());
  }
  CHECK(read_text(target) == "replaced");
  CHECK(inode_of(target) != before);  // a new file renamed in, not rewritten
  CHECK(entries_in(d.path) == 1);

  {
    auto t = TempBeside::create(d.path + "/never.raw", false);
    REQUIRE(t);
  }  // not committed: removed
  CHECK(entries_in(d.path) == 1);

  // kvmcdp's own files: a temp a crash recovery can find by name.
  {
    auto t = TempBeside::fixed(target);
    REQUIRE(t);
    CHECK(t->path() == target + ".kvmcdp-partial");
    write_text(t->path(), "own");
    REQUIRE(t->commit());
  }
  CHECK(read_text(target) == "own");
  CHECK(entries_in(d.path) == 1);
}

TEST_CASE("image output: a new file is a sparse temp of the disk's size until commit") {
  TempDir d;
  auto t = check_output_target(d.path + "/img.raw", false);
  REQUIRE(t);
  auto out = ImageOutput::open(*t, 1 << 20, d.path);
  REQUIRE(out);
  CHECK(!out->in_place());
  CHECK(out->path() != d.path + "/img.raw");
  CHECK(!std::filesystem::exists(d.path + "/img.raw"));
  REQUIRE(fsutil::pwrite_all(out->fd(), "abc", 3, 4096, out->path()));
  REQUIRE(out->commit());
  CHECK(std::filesystem::file_size(d.path + "/img.raw") == 1 << 20);
  auto bytes = journal::testing::read_bytes(d.path + "/img.raw");
  CHECK(bytes[4096] == 'a');
  CHECK(bytes[0] == 0);
  CHECK(entries_in(d.path) == 1);
}

}  // namespace kvmcdp
