// The one-writer rule of a store: flock() on <store>/lock, held for the
// life of the object.  The holder writes its pid into the file so that a
// second process can say who is in the way.
#pragma once

#include <string>

#include "fsutil.h"
#include "status.h"

namespace kvmcdp {

class StoreLock {
 public:
  // Never waits.  Fails with ErrorKind::kBusy ("store /s is locked by pid
  // 1234") if another open file description holds the lock, even in this
  // process.
  static Result<StoreLock> acquire(const std::string& store_dir);
  StoreLock(StoreLock&&) = default;
  StoreLock& operator=(StoreLock&&) = default;
  // Releasing is closing the fd.
 private:
  StoreLock() = default;
  fsutil::Fd fd_;
};

}  // namespace kvmcdp
