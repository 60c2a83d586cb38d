// One writer per snapshot tree: flock() on <tree-dir>/lock.  Unlike the
// store lock it can wait (--wait), so overlapping cron jobs queue up
// instead of failing; without waiting a held lock is ErrorKind::kBusy.
#pragma once

#include <string>

#include "base/pid_lock.h"
#include "base/status.h"

namespace kvmcdp {

class TreeLock {
 public:
  static Result<TreeLock> acquire(const std::string& tree_dir, bool wait);
  TreeLock(TreeLock&&) = default;
  TreeLock& operator=(TreeLock&&) = default;

 private:
  explicit TreeLock(PidLock l) : lock_(std::move(l)) {}
  PidLock lock_;
};

}  // namespace kvmcdp
