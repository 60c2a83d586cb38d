// Reads of a store against the journal fold.  Everything that reads a
// store through a StoreView (restore, build, points) or verifies its
// journal holds a shared flock on DIR/readers.lock; the fold takes it
// exclusively before it deletes folded segments and the old base.  So a
// fold waits for the reads that may still use those files, and a read
// that starts meanwhile waits for the deletions and then sees the folded
// store.  The fold's commit (the manifest switch) needs no lock: a reader
// sees the manifest before or after it, and both name files that exist
// until the deletions.
#pragma once

#include <string>

#include "base/fsutil.h"
#include "base/status.h"

namespace kvmcdp {

class StoreReaders {
 public:
  // Blocks while a fold deletes.  A store the caller may not write to (a
  // read-only mount) cannot be folded either: no lock is taken then.
  static Result<StoreReaders> shared(const std::string& store_dir);
  // Blocks until no reader holds the store; `waited` says whether it had to.
  static Result<StoreReaders> exclusive(const std::string& store_dir, bool* waited);

 private:
  explicit StoreReaders(fsutil::Fd fd) : fd_(std::move(fd)) {}
  fsutil::Fd fd_;  // the lock goes with it
};

}  // namespace kvmcdp
