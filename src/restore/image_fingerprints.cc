// The restore writes out of order (the journal newest record first, then
// the base: restore_engine.cc), so its output cannot be hashed as it
// passes.  It goes to a sparse, unnamed temporary file in the store
// instead (ImageOutput::scratch: O_TMPFILE, so nothing is left behind even
// if protect dies meanwhile), which is hashed block by block and dropped.
// The store's filesystem has room for it: it holds the disk's data
// already.
#include "restore/image_fingerprints.h"

#include "restore/output_target.h"
#include "restore/restore_engine.h"
#include "store/store_view.h"

namespace kvmcdp {

Result<BlockFingerprints> fingerprint_image(const std::string& store_dir, uint64_t seq) {
  auto view = open_store_view(store_dir);
  if (!view) return view.status();
  auto out = ImageOutput::scratch(store_dir, view->manifest.disk_size);
  if (!out) return out.status();
  auto st = restore_into(*view, seq, *out);
  if (!st) return st.status();
  return BlockFingerprints::of_image(out->fd(), out->path(), view->manifest.disk_size);
}

}  // namespace kvmcdp
