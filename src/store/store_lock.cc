#include "store/store_lock.h"

namespace kvmcdp {

Result<StoreLock> StoreLock::acquire(const std::string& store_dir) {
  auto l = PidLock::acquire(store_dir + "/lock", "store " + store_dir, false);
  if (!l) return l.status();
  return StoreLock(std::move(*l));
}

}  // namespace kvmcdp
