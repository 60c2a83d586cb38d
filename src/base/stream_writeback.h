// Appending a long stream to a file through the page cache without letting
// its pages pile up there.
//
// The journal and the backup server's mirror append gigabytes they will not
// read back soon.  Left alone, every appended page stays cached until memory
// runs short, so the page cache grows into memory the system has not used
// yet; on a virtual host each such page costs a fault in the hypervisor, and
// the buffered write ran at ~300 MiB/s and 3.3 ms of system time per MiB on
// the project's machine, against 1,100-1,300 MiB/s and 0.4-0.5 ms when the
// written pages are dropped once on disk (they are then reused, already
// backed).  Dropping them also leaves the guest's and the host's own cache
// alone.  Durability is not this class's business: fdatasync still decides
// what survives a crash.
#pragma once

#include <cstdint>

namespace kvmcdp {

class StreamWriteback {
 public:
  // Pages more than `lag` bytes behind the end of the stream are waited for
  // and dropped; the newest `lag` bytes are left to their writeback.
  explicit StreamWriteback(uint64_t lag = kDefaultLag) : lag_(lag) {}

  // A new file: nothing of it has been dropped yet.
  void reset() { dropped_ = 0; }

  // After [off, off + len) was written to fd: starts its writeback and drops
  // what lies more than lag behind (waiting for its writeback, which started
  // long ago).  Hints only: failures are ignored.
  void written(int fd, uint64_t off, uint64_t len);

  // After fdatasync made fd durable up to `end`: its pages are clean, so
  // they all go now (a file about to be closed or sealed).
  void synced(int fd, uint64_t end);

  uint64_t dropped() const { return dropped_; }

  static constexpr uint64_t kDefaultLag = 8ull << 20;

 private:
  void drop(int fd, uint64_t end, bool wait);

  uint64_t lag_;
  uint64_t dropped_ = 0;
};

}  // namespace kvmcdp
