#include "base/stream_writeback.h"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

namespace kvmcdp {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// Bytes of fd's first `size` bytes that are in the page cache.
uint64_t resident(int fd, uint64_t size) {
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  REQUIRE(m != MAP_FAILED);
  long page = ::sysconf(_SC_PAGESIZE);
  std::vector<unsigned char> v((size + page - 1) / page);
  REQUIRE(::mincore(m, size, v.data()) == 0);
  ::munmap(m, size);
  uint64_t n = 0;
  for (unsigned char c : v) n += (c & 1) ? page : 0;
  return n;
}

// Appends `total` bytes in 1 MiB writes (a pattern that names its offset),
// through `wb` if given.  The file lives in the test's working directory,
// the build tree, on a disk file system: tmpfs has no writeback to pace.
// Its name is unique: ctest runs this file's cases in parallel.
struct Stream {
  std::string path = "stream_writeback_test.XXXXXX";
  int fd = -1;
  Stream() {
    fd = ::mkostemp(path.data(), O_CLOEXEC);
    REQUIRE(fd >= 0);
  }
  ~Stream() {
    ::close(fd);
    ::unlink(path.c_str());
  }
  void append(uint64_t total, StreamWriteback* wb) {
    std::vector<uint64_t> buf(kMiB / 8);
    for (uint64_t off = 0; off < total; off += kMiB) {
      for (size_t i = 0; i < buf.size(); i++) buf[i] = off + i * 8;
      REQUIRE(::pwrite(fd, buf.data(), kMiB, off) == ssize_t(kMiB));
      if (wb) wb->written(fd, off, kMiB);
    }
  }
  bool intact(uint64_t total) {
    std::vector<uint64_t> buf(kMiB / 8);
    for (uint64_t off = 0; off < total; off += kMiB) {
      if (::pread(fd, buf.data(), kMiB, off) != ssize_t(kMiB)) return false;
      for (size_t i = 0; i < buf.size(); i++)
        if (buf[i] != off + i * 8) return false;
    }
    return true;
  }
};

}  // namespace

TEST_CASE("a streamed file keeps only its last lag bytes in the page cache") {
  constexpr uint64_t total = 64 * kMiB, lag = 4 * kMiB;
  {
    // Without the window the whole file stays cached: the check below
    // could fail.
    Stream plain;
    plain.append(total, nullptr);
    REQUIRE(::fdatasync(plain.fd) == 0);
    CHECK(resident(plain.fd, total) > total / 2);
  }
  Stream s;
  StreamWriteback wb(lag);
  s.append(total, &wb);
  CHECK(wb.dropped() >= total - 2 * lag);
  CHECK(resident(s.fd, total) <= 2 * lag);
  REQUIRE(::fdatasync(s.fd) == 0);
  wb.synced(s.fd, total);
  CHECK(wb.dropped() == total);
  CHECK(resident(s.fd, total) == 0);
  CHECK(s.intact(total));
}

TEST_CASE("drops are whole pages: an odd end leaves its page for the next drop") {
  Stream s;
  StreamWriteback wb(kMiB);
  s.append(8 * kMiB, nullptr);
  REQUIRE(::fdatasync(s.fd) == 0);
  wb.synced(s.fd, 3 * kMiB + 100);
  CHECK(wb.dropped() == 3 * kMiB);
  wb.synced(s.fd, 8 * kMiB);
  CHECK(resident(s.fd, 8 * kMiB) == 0);
  wb.reset();
  CHECK(wb.dropped() == 0);
}

}  // namespace kvmcdp
