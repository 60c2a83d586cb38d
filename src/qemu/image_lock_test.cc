#include "qemu/image_lock.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include <doctest/doctest.h>

namespace kvmcdp {
namespace {

struct TempFile {
  std::string path;
  TempFile() {
    char tmpl[] = "/tmp/kvmcdp-image-lock-XXXXXX";
    int fd = ::mkstemp(tmpl);
    REQUIRE(fd >= 0);
    REQUIRE(::ftruncate(fd, 1 << 20) == 0);
    ::close(fd);
    path = tmpl;
  }
  ~TempFile() { ::unlink(path.c_str()); }
};

// A read lock on one byte, the way QEMU's file driver takes them.
int lock_byte(const std::string& path, off_t byte) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  struct flock fl {};
  fl.l_type = F_RDLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  REQUIRE(::fcntl(fd, F_OFD_SETLK, &fl) == 0);
  return fd;
}

TEST_CASE("image_holder: a file nobody opened, and a missing one, are not in use") {
  TempFile f;
  CHECK(!image_holder(f.path));
  CHECK(!image_holder(f.path + ".missing"));
}

TEST_CASE("image_holder: QEMU's lock bytes (a read-only backing file's too) mean in use") {
  TempFile f;
  // Our own process is not counted as a holder by its open files, so only
  // the lock probe can see these.  Byte 100: "consistent read" (every
  // reader); byte 203: "resize" not shared (a read-only backing file).
  for (off_t byte : {100, 203}) {
    int fd = lock_byte(f.path, byte);
    auto h = image_holder(f.path);
    CHECK_MESSAGE(h == std::optional<std::string>("a QEMU image lock"), byte);
    ::close(fd);
    CHECK_MESSAGE(!image_holder(f.path), byte);
  }
  // A lock outside QEMU's bytes is someone else's business.
  int fd = lock_byte(f.path, 50);
  CHECK(!image_holder(f.path));
  ::close(fd);
}

TEST_CASE("image_holder: another process holding the file open, without a lock, is named") {
  TempFile f;
  int ready[2], release[2];
  REQUIRE(::pipe(ready) == 0);
  REQUIRE(::pipe(release) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(release[1]);
    int fd = ::open(f.path.c_str(), O_RDONLY);
    char c = fd >= 0 ? 'y' : 'n';
    (void)!::write(ready[1], &c, 1);
    (void)!::read(release[0], &c, 1);
    ::_exit(0);
  }
  char c = 0;
  CHECK(::read(ready[0], &c, 1) == 1);
  CHECK(c == 'y');
  auto h = image_holder(f.path);
  ::close(release[1]);  // the child reads EOF and exits
  int status = 0;
  ::waitpid(pid, &status, 0);
  REQUIRE(h);
  CHECK_MESSAGE(h->find("pid " + std::to_string(pid)) != std::string::npos, *h);
  CHECK(!image_holder(f.path));
  for (int fd : {ready[0], ready[1], release[0]}) ::close(fd);
}

}  // namespace
}  // namespace kvmcdp
