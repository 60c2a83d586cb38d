#include "restore/image_restore.h"

#include <optional>

#include <fmt/format.h>

#include "base/fsutil.h"
#include "qemu/subprocess.h"
#include "store/base_checksums.h"

namespace kvmcdp {

Status restore_failure(const Status& s, uint64_t seq) {
  if (s.kind() != ErrorKind::kDamaged || is_base_damage(s)) return s;
  return Status(ErrorKind::kNotRecoverable,
                fmt::format("seq {} lies past damage in the journal ({}); "
                            "`kvmcdp journal verify` shows the last good record",
                            seq, s.message()));
}

Result<NearestRestore> restore_image(StoreView& view, uint64_t seq, const OutputTarget& target,
                                     const std::string& format,
                                     const RestoreProgressFn& progress, NodeUse use) {
  const uint64_t disk_size = view.manifest.disk_size;
  std::optional<TempBeside> qcow2_file;
  if (format == "qcow2") {
    auto f = TempBeside::create(target.path, target.kind == OutputKind::kExistingFile);
    if (!f) return f.status();
    qcow2_file.emplace(std::move(*f));
  }
  auto raw = format == "raw" ? ImageOutput::open(target, disk_size, view.store_dir)
                             : ImageOutput::scratch(fsutil::dirname_of(target.path), disk_size);
  if (!raw) return raw.status();
  auto nearest = restore_nearest(view, seq, *raw, progress, use);
  if (!nearest) return restore_failure(nearest.status(), seq);
  if (qcow2_file) {
    if (auto s = run_process({qemu_img_binary(), "convert", "-q", "-f", "raw", "-O", "qcow2",
                              raw->path(), qcow2_file->path()});
        !s)
      return s;
  }
  if (auto s = qcow2_file ? qcow2_file->commit() : raw->commit(); !s) return s;
  return nearest;
}

}  // namespace kvmcdp
