// qemu-nbd runs socket-activated on a socketpair and libnbd keeps up to
// 64 requests in flight: a round trip per small write would cost more than
// the write.
#include "restore/nbd_delta_writer.h"

#include <chrono>
#include <deque>
#include <vector>

#include <fmt/format.h>
#include <libnbd.h>

#include "qemu/snapshot_qemu.h"
#include "restore/range_coalescer.h"
#include "restore/writeback_kicker.h"

namespace kvmcdp {
Result<DeltaStats> write_delta_into(StoreView& view, uint64_t from_seq, uint64_t to_seq,
                                    const std::string& path) {
  // qemu-nbd serves the overlay to us over a socketpair (socket
  // activation, so no socket path and no port); each changed range is one
  // NBD write or write-zeroes (ranges that touch joined into one).
  struct Request {
    int64_t cookie;
    std::vector<uint8_t> data;
  };
  // Declared before the handle, so that on an early return the connection
  // is closed before the buffers of requests still in flight are freed.
  std::deque<Request> inflight;
  struct Handle {
    nbd_handle* h = nbd_create();
    ~Handle() {
      if (h) nbd_close(h);
    }
  } nbd;
  auto nbd_error = [&](const char* what) {
    return Status(ErrorKind::kFailure,
                  fmt::format("{} {} through qemu-nbd: {}", what, path, nbd_get_error()));
  };
  if (!nbd.h) return nbd_error("open");
  std::string server = qemu_nbd_binary();
  std::vector<std::string> args = {server, "-f", "qcow2", "--cache=writeback", path};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  if (nbd_connect_systemd_socket_activation(nbd.h, argv.data()) == -1) return nbd_error("open");
  // Up to kInFlight requests at once: a round trip per 4 KiB write would
  // cost more than the write.  libnbd keeps no copy, so each request owns
  // its bytes until it completes.
  constexpr size_t kInFlight = 64;
  // Data requests up to 1 MiB (at most 64 MiB held in flight); qemu-nbd
  // takes up to 32 MiB.
  constexpr uint64_t kMaxRequest = 1 << 20;
  auto retire_to = [&](size_t n) -> Status {
    while (inflight.size() > n) {
      int done = nbd_aio_command_completed(nbd.h, inflight.front().cookie);
      if (done == -1) return nbd_error("write");
      if (done == 1) {
        inflight.pop_front();
        continue;
      }
      if (nbd_poll(nbd.h, -1) == -1) return nbd_error("write");
    }
    return Status::ok();
  };
  // Adjacent ranges (a sequential burst of small writes) go as one request.
  RangeCoalescer coalesce(kMaxRequest, [&](uint64_t off, uint64_t len,
                                           std::vector<uint8_t> data) -> Status {
    if (auto s = retire_to(kInFlight - 1); !s) return s;
    Request r;
    r.data = std::move(data);
    // A zero range becomes a qcow2 zero cluster, not a hole that would
    // show the parent.
    r.cookie = r.data.empty() ? nbd_aio_zero(nbd.h, len, off, NBD_NULL_COMPLETION, 0)
                              : nbd_aio_pwrite(nbd.h, r.data.data(), len, off,
                                               NBD_NULL_COMPLETION, 0);
    if (r.cookie == -1) return nbd_error("write");
    inflight.push_back(std::move(r));
    return Status::ok();
  });
  auto delta = [&]() -> Result<DeltaStats> {
    WritebackKicker writeback(path, std::chrono::milliseconds(25));
    auto d = journal_delta(*view.reader, from_seq, to_seq, view.manifest.disk_size,
                           [&](uint64_t off, uint64_t len, const uint8_t* data) {
                             return coalesce.add(off, len, data);
                           });
    if (d)
      if (auto s = coalesce.flush(); !s) return s;
    return d;
  }();
  if (!delta) return delta.status();
  if (auto s = retire_to(0); !s) return s;
  if (nbd_flush(nbd.h, 0) == -1 || nbd_shutdown(nbd.h, 0) == -1) return nbd_error("flush");
  return *delta;
}

}  // namespace kvmcdp
