// An exclusive flock() on a lock file that names its holder: the holder
// writes its pid into the file, so that a second process can say who is
// in the way.  The store lock (store/store_lock.h) and the tree lock
// (tree/tree_lock.h) are this with their own file and message.
#pragma once

#include <string>

#include "base/fsutil.h"
#include "base/status.h"

namespace kvmcdp {

class PidLock {
 public:
  // Locks `path` (created if missing).  With `wait`, blocks until the
  // holder lets go; without, a held lock is ErrorKind::kBusy with the
  // message "<what> is locked by pid 1234<hint>".  A directory that does
  // not exist is kNotFound.
  static Result<PidLock> acquire(const std::string& path, const std::string& what, bool wait,
                                 const std::string& hint = "");
  PidLock(PidLock&&) = default;
  PidLock& operator=(PidLock&&) = default;

  // Whether acquire() made the lock file (it was not there before).
  bool created() const { return created_; }
  // Deletes the lock file, then lets go.  acquire() checks that the file
  // it locked is still the one at the path, so this cannot let two
  // processes hold the lock.
  void remove();
  // Releasing is closing the fd.

 private:
  PidLock() = default;
  fsutil::Fd fd_;
  std::string path_;
  bool created_ = false;
};

}  // namespace kvmcdp
