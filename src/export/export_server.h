// kvmcdp export's NBD server: one point (point_image.h) served to any
// number of clients at once, each connection on a thread of its own.
// The handshake is the one mirror capture's server speaks
// (capture/nbd_server_wire.h); transmission uses simple replies: READ,
// and with a writable image WRITE, WRITE_ZEROES and TRIM into its
// throw-away overlay; FLUSH is answered at once (nothing a client writes
// is meant to last); DISC ends the connection.  A read-only export sets
// NBD_FLAG_READ_ONLY and answers writes EPERM.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "base/fsutil.h"
#include "base/status.h"
#include "export/point_image.h"

namespace kvmcdp {

// A listening socket: a unix socket at `path` (replacing a stale socket
// there, refusing any other file), or TCP on HOST:PORT.
Result<fsutil::Fd> listen_unix(const std::string& path);
Result<fsutil::Fd> listen_tcp(const std::string& host_port);

struct ExportServerStats {
  std::atomic<uint64_t> connections{0};
  std::atomic<uint64_t> bytes_read{0};
  std::atomic<uint64_t> first_read_ns{0};  // wall clock of the first READ answered
};

// One client on `fd` (handshake, then requests) until it disconnects or
// breaks the protocol; the fd stays the caller's.
void serve_nbd_connection(int fd, PointImage& image, const std::string& name,
                          ExportServerStats* stats);

// Accepts on `listen_fd` until `stop`, then closes every connection and
// waits for their threads.  `name` is the export's name ("" by default,
// what clients ask for unless told otherwise).
Status serve_export(int listen_fd, PointImage& image, const std::string& name,
                    const std::atomic<bool>& stop, ExportServerStats* stats);

}  // namespace kvmcdp
