// The QEMU side of mirror capture, all through QMP and all of it stock
// QEMU (6.0 and later):
//
// - a dirty bitmap cdp-<stream> on the disk's node, added before the
//   mirror starts: the ranges written since kvmcdp last knew everything
//   was durable.  kvmcdp clears it now and then inside a `transaction`,
//   which drains the disk first: once every request in flight has ended,
//   every write so far is in the journal (the mirror completes a write
//   only after kvmcdp's reply).  After a kill of kvmcdp it holds what the
//   next protect must resend.  Persistent on a qcow2 image, so it also
//   survives a restart of QEMU.
// - an NBD client node on kvmcdp's server (NbdReceiver), and an active
//   mirror job from the disk into it (sync=none, copy-mode=write-blocking,
//   on-target-error=report: if kvmcdp goes, the guest's writes go on and
//   the job ends).  The job is never completed, only cancelled, so the
//   guest stays on its disk.
// - a read-only export of the disk on QEMU's NBD server, started by
//   kvmcdp on a private socket: the base copy, discards read back and the
//   resync read through it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "qemu/qmp_client.h"

namespace kvmcdp {

struct MirrorNames {
  uint64_t stream_id = 0;
  std::string job;      // the mirror job's id
  std::string target;   // the NBD client node
  std::string filter;   // the job's filter node above the disk
  std::string bitmap;   // on the disk's node
  std::string frozen;   // a disabled copy of it, for reading it
  std::string export_;  // the read-only export of the disk
  std::string bitmap_export;
};
MirrorNames mirror_names(uint64_t stream_id);

// Whether QEMU has kvmcdp's filter (its schema knows cdp-attach).
Result<bool> qemu_has_cdp_filter(QmpClient& qmp);

// A job of that id exists in QEMU.
Result<bool> job_exists(QmpClient& qmp, const std::string& job);
// The bitmap on `node`: absent, or present (and usable).
Result<bool> bitmap_exists(QmpClient& qmp, const std::string& node, const std::string& bitmap);

// What a killed protect left: its job (cancelled) and its NBD node.
Status remove_mirror_leftovers(QmpClient& qmp, const MirrorNames& n);

Status add_bitmap(QmpClient& qmp, const std::string& node, const std::string& bitmap);
// Starts the job; `addr` is the SocketAddress of kvmcdp's NBD server (a
// getfd name or a unix path).  blockdev-add connects at once: the server
// must answer meanwhile (another thread).
Status start_mirror(QmpClient& qmp, const std::string& node, const MirrorNames& n,
                    const json& addr);
// Ends the job without switching the guest to its target, and removes the
// target node.
Status stop_mirror(QmpClient& qmp, const MirrorNames& n);
// A drain: returns once every request in flight on every disk has ended.
Status drain_all(QmpClient& qmp);
// Clears the bitmap inside a drain (see above).
Status checkpoint_bitmap(QmpClient& qmp, const std::string& node, const std::string& bitmap);
// The bitmap's contents as a disabled copy n.frozen, for an export.
Status freeze_bitmap(QmpClient& qmp, const std::string& node, const MirrorNames& n);
Status drop_frozen_bitmap(QmpClient& qmp, const std::string& node, const MirrorNames& n);

// QEMU's NBD server on a private unix socket, with kvmcdp's exports.
class QemuNbdServer {
 public:
  static Result<QemuNbdServer> start(QmpClient& qmp, const std::string& socket);
  Status add_export(QmpClient& qmp, const std::string& name, const std::string& node,
                    const std::string& bitmap = "");
  void del_export(QmpClient& qmp, const std::string& name);
  void stop(QmpClient& qmp);
  const std::string& socket() const { return socket_; }

 private:
  std::string socket_;
};

}  // namespace kvmcdp
