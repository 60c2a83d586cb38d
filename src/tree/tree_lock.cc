#include "tree/tree_lock.h"

namespace kvmcdp {

Result<TreeLock> TreeLock::acquire(const std::string& tree_dir, bool wait) {
  auto l = PidLock::acquire(tree_dir + "/lock", "snapshot tree " + tree_dir, wait,
                            " (use --wait to queue)");
  if (!l) return l.status();
  return TreeLock(std::move(*l));
}

}  // namespace kvmcdp
