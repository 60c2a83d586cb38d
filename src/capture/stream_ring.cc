#include "capture/stream_ring.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

#include <fmt/format.h>

#include "base/fsutil.h"
#include "kvmcdp/wire_format.h"

namespace kvmcdp::wire {
namespace {

constexpr unsigned kSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

bool valid_size(uint64_t n) {
  return n >= kRingMinData && n <= kRingMaxData && (n & (n - 1)) == 0;
}

std::atomic_ref<uint64_t> word64(uint8_t* header, size_t off) {
  return std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(header + off));
}
std::atomic_ref<uint32_t> word32(uint8_t* header, size_t off) {
  return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(header + off));
}

Status ring_error(const std::string& what) {
  return {ErrorKind::kFailure, "stream ring: " + what};
}

}  // namespace

Status StreamRing::map(int fd, uint64_t size) {
  fd_ = fd;
  size_ = size;
  void* h = mmap(nullptr, kRingHeaderSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (h == MAP_FAILED) return ring_error(fsutil::errno_message("mmap", ""));
  header_ = static_cast<uint8_t*>(h);
  // Reserve twice the data's size, then map the data into both halves.
  void* r = mmap(nullptr, 2 * size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) return ring_error(fsutil::errno_message("mmap", ""));
  data_ = static_cast<uint8_t*>(r);
  for (int half = 0; half < 2; ++half) {
    void* m = mmap(data_ + half * size, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd,
                   static_cast<off_t>(kRingHeaderSize));
    if (m == MAP_FAILED) return ring_error(fsutil::errno_message("mmap", ""));
  }
  return Status::ok();
}

Result<std::unique_ptr<StreamRing>> StreamRing::create(uint64_t data_size) {
  if (!valid_size(data_size)) return ring_error(fmt::format("bad size {}", data_size));
  int fd = memfd_create("kvmcdp-stream-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return ring_error(fsutil::errno_message("memfd_create", ""));
  std::unique_ptr<StreamRing> ring(new StreamRing);
  ring->fd_ = fd;
  if (ftruncate(fd, static_cast<off_t>(kRingHeaderSize + data_size)) != 0)
    return ring_error(fsutil::errno_message("ftruncate", ""));
  if (fcntl(fd, F_ADD_SEALS, kSeals) != 0)
    return ring_error(fsutil::errno_message("F_ADD_SEALS", ""));
  if (Status s = ring->map(fd, data_size); !s) return s;
  uint32_t magic = kRingMagic, version = kRingVersion;
  std::memcpy(ring->header_ + 0, &magic, 4);
  std::memcpy(ring->header_ + 4, &version, 4);
  std::memcpy(ring->header_ + 8, &data_size, 8);
  return ring;
}

Result<std::unique_ptr<StreamRing>> StreamRing::attach(int fd) {
  std::unique_ptr<StreamRing> ring(new StreamRing);
  ring->fd_ = fd;
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (static_cast<unsigned>(seals) & kSeals) != kSeals)
    return ring_error("not a sealed memfd");
  struct stat st;
  if (fstat(fd, &st) != 0) return ring_error(fsutil::errno_message("fstat", ""));
  uint8_t head[16];
  if (st.st_size < static_cast<off_t>(kRingHeaderSize) || pread(fd, head, 16, 0) != 16)
    return ring_error("too small");
  uint32_t magic, version;
  uint64_t size;
  std::memcpy(&magic, head, 4);
  std::memcpy(&version, head + 4, 4);
  std::memcpy(&size, head + 8, 8);
  if (magic != kRingMagic || version != kRingVersion) return ring_error("bad magic or version");
  if (!valid_size(size) || static_cast<uint64_t>(st.st_size) != kRingHeaderSize + size)
    return ring_error(fmt::format("data size {} does not match the file's {}", size,
                                  st.st_size));
  if (Status s = ring->map(fd, size); !s) return s;
  return ring;
}

StreamRing::~StreamRing() {
  if (data_) munmap(data_, 2 * size_);
  if (header_) munmap(header_, kRingHeaderSize);
  if (fd_ >= 0) close(fd_);
}

uint64_t StreamRing::head() const {
  return word64(header_, kRingHeadOffset).load(std::memory_order_acquire);
}
uint64_t StreamRing::tail() const {
  return word64(header_, kRingTailOffset).load(std::memory_order_acquire);
}
void StreamRing::publish_head(uint64_t head) {
  word64(header_, kRingHeadOffset).store(head, std::memory_order_release);
  std::atomic_thread_fence(std::memory_order_seq_cst);
}
void StreamRing::publish_tail(uint64_t tail) {
  word64(header_, kRingTailOffset).store(tail, std::memory_order_release);
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

bool StreamRing::sleep_unless_moved(uint64_t seen) {
  word32(header_, kRingConsumerSleepsOffset).store(1, std::memory_order_seq_cst);
  if (head() == seen) return false;
  awake();
  return true;
}
void StreamRing::awake() {
  word32(header_, kRingConsumerSleepsOffset).store(0, std::memory_order_relaxed);
}
bool StreamRing::take_consumer_sleeps() {
  return word32(header_, kRingConsumerSleepsOffset).exchange(0, std::memory_order_seq_cst) != 0;
}
bool StreamRing::take_producer_waits() {
  return word32(header_, kRingProducerWaitsOffset).exchange(0, std::memory_order_seq_cst) != 0;
}
void StreamRing::set_producer_waits() {
  word32(header_, kRingProducerWaitsOffset).store(1, std::memory_order_seq_cst);
}

}  // namespace kvmcdp::wire
