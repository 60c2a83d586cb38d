// The one-writer rule of a store: flock() on <store>/lock, held for the
// life of the object.  The holder writes its pid into the file so that a
// second process can say who is in the way.
#pragma once

#include <string>

#include "base/pid_lock.h"
#include "base/status.h"

namespace kvmcdp {

class StoreLock {
 public:
  // Never waits.  Fails with ErrorKind::kBusy ("store /s is locked by pid
  // 1234") if another open file description holds the lock, even in this
  // process.
  static Result<StoreLock> acquire(const std::string& store_dir);
  StoreLock(StoreLock&&) = default;
  StoreLock& operator=(StoreLock&&) = default;

  // Whether acquire() made the lock file (it was not there before).
  bool created() const { return lock_.created(); }
  // Deletes the lock file, then lets go: for a command that failed before
  // it put anything else into the store.
  void remove() { lock_.remove(); }

 private:
  explicit StoreLock(PidLock l) : lock_(std::move(l)) {}
  PidLock lock_;
};

}  // namespace kvmcdp
