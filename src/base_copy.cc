// Why NBD: QEMU owns the image (qcow2 metadata changes under a running
// guest), so the only consistent reader is QEMU's own block layer.  A
// read-only export of the filter node, copied by qemu-img convert, reads
// every block through it and skips zero areas, leaving holes.
#include "base_copy.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>

#include <fmt/format.h>

#include "fsutil.h"
#include "qemu_drive.h"
#include "subprocess.h"

namespace kvmcdp {

Result<BaseCopyResult> take_base_copy(QmpClient& qmp, const std::string& filter_node,
                                      const std::string& out_path, bool show_progress) {
  std::string sock = fmt::format("/tmp/kvmcdp-nbd-{}.sock", getpid());
  std::string export_id = fmt::format("kvmcdp-base-{}", getpid());
  unlink(sock.c_str());

  QmpReply started = qmp.execute(
      "nbd-server-start", {{"addr", {{"type", "unix"}, {"data", {{"path", sock}}}}}});
  if (!started.ok())
    return Status(ErrorKind::kQemu,
                  fmt::format("cannot start an NBD server for the base copy ({}); "
                              "is another one running in this QEMU?",
                              started.status().message()));
  QmpReply exported = qmp.execute("block-export-add", {{"type", "nbd"},
                                                       {"id", export_id},
                                                       {"name", export_id},
                                                       {"node-name", filter_node},
                                                       {"writable", false}});
  Status copied = exported.status();
  if (copied) {
    std::string tmp = out_path + ".tmp";
    copied = run_process({qemu_img_binary(), "convert", show_progress ? "-p" : "-q", "-f", "raw",
                          "-O", "raw",
                          fmt::format("nbd+unix:///{}?socket={}", export_id, sock), tmp},
                         show_progress);
    if (copied) {
      int fd = ::open(tmp.c_str(), O_RDONLY);
      if (fd >= 0) {
        fsync(fd);
        close(fd);
      }
      if (rename(tmp.c_str(), out_path.c_str()) != 0)
        copied = Status(ErrorKind::kFailure, fsutil::errno_message("rename", tmp));
      else
        copied = fsutil::fsync_dir(fsutil::dirname_of(out_path));
    } else {
      unlink(tmp.c_str());
    }
  }
  // The copy ended before this query: every seq from here on is exact.
  auto info = query_cdp(qmp, filter_node);
  qmp.execute("block-export-del", {{"id", export_id}, {"mode", "hard"}});
  qmp.execute("nbd-server-stop");
  unlink(sock.c_str());
  if (!copied) return copied;
  if (!info) return info.status();
  if (!*info) return Status(ErrorKind::kQemu, "the cdp filter disappeared during the base copy");
  BaseCopyResult r;
  r.complete_seq = (*info)->seq;
  return r;
}

}  // namespace kvmcdp
