#include "base/stream_writeback.h"

#include <fcntl.h>
#include <unistd.h>

namespace kvmcdp {
namespace {
const uint64_t kPage = uint64_t(::sysconf(_SC_PAGESIZE));
}  // namespace

void StreamWriteback::written(int fd, uint64_t off, uint64_t len) {
  (void)::sync_file_range(fd, off64_t(off), off64_t(len), SYNC_FILE_RANGE_WRITE);
  uint64_t end = off + len;
  // Drop in steps of lag, not per write: each drop is two system calls.
  if (end >= dropped_ + 2 * lag_) drop(fd, end - lag_, true);
}

void StreamWriteback::synced(int fd, uint64_t end) { drop(fd, end, false); }

void StreamWriteback::drop(int fd, uint64_t end, bool wait) {
  // Whole pages only: the kernel keeps a partial page at either end, and
  // the next drop starts where this one ended.
  end &= ~uint64_t(kPage - 1);
  if (end <= dropped_) return;
  off64_t from = off64_t(dropped_), n = off64_t(end - dropped_);
  // DONTNEED skips pages still under writeback, so wait for it first.
  if (wait)
    (void)::sync_file_range(fd, from, n,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                SYNC_FILE_RANGE_WAIT_AFTER);
  (void)::posix_fadvise(fd, from, n, POSIX_FADV_DONTNEED);
  dropped_ = end;
}

}  // namespace kvmcdp
