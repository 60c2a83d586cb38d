// Whether another process has an image file open: QEMU's image locks, and
// the open files of the processes we can see.  Commands that rewrite or
// remove an image (prune, snapshot delete/merge) ask this first, so that
// an image a VM, an export or a restore overlay reads through is kept.
#pragma once

#include <optional>
#include <string>

namespace kvmcdp {

// Who holds `path` ("qemu-storage-d pid 1234", "a QEMU image lock"), or
// nothing when no other process is seen to use it.  A missing file is not
// in use.  Processes of other users are seen only when we run as root.
std::optional<std::string> image_holder(const std::string& path);

// Whether a QEMU process (VM, qemu-img, qemu-nbd, qemu-storage-daemon)
// holds its image lock on the file open as `fd`; -1 with errno set when
// the kernel cannot say.  Takes no lock itself.
int qemu_image_locked(int fd);

}  // namespace kvmcdp
