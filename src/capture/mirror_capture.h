// Mirror capture as one object: what protect does on a QEMU without the
// cdp filter (man kvmcdp(1), CAPTURE MODES).  The steps, in protect's
// order:
//
//   prepare()    the last run's leftovers go, QEMU's NBD server starts on
//                a private socket with a read-only export of the disk
//   start()      the dirty bitmap (kept from the last run, or new), the
//                NBD target and the active mirror job; the receiver thread
//                journals from now on.  A continued stream opens with a
//                GAP and resends what the bitmap marks (the whole disk if
//                QEMU lost it), closed by RESYNC_DONE.
//   take_base()  a new store's base copy through the export
//   checkpoint() every few seconds: clears the bitmap inside a drain
//   stop()       the bitmap cleared, the job cancelled (the guest stays on
//                its disk), the target node and the NBD server removed
//
// The destructor undoes whatever is still in place.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "base/status.h"
#include "capture/base_copy.h"
#include "capture/mark_channel.h"
#include "capture/mirror_job.h"
#include "capture/mirror_resync.h"
#include "capture/nbd_receiver.h"
#include "journal/journal_writer.h"
#include "qemu/qemu_target.h"
#include "qemu/qmp_client.h"

namespace kvmcdp {

class MirrorCapture {
 public:
  MirrorCapture(QemuTarget target, std::string node, uint64_t stream_id,
                std::chrono::milliseconds stall_timeout);
  ~MirrorCapture();
  MirrorCapture(const MirrorCapture&) = delete;
  MirrorCapture& operator=(const MirrorCapture&) = delete;

  Status prepare(QmpClient& qmp);
  uint64_t disk_size() const { return disk_size_; }
  // `continuing`: the journal holds the stream up to writer->last_durable_seq().
  Status start(QmpClient& qmp, journal::JournalWriter* writer, bool continuing);
  Result<BaseCopyResult> take_base(QmpClient& qmp, const std::string& out_path,
                                   bool show_progress);
  // Skipped (ok) while a resync runs: the bitmap still holds its ranges.
  Status checkpoint(QmpClient& qmp);
  Status stop(QmpClient& qmp);
  // A named point in the stream, once durable (`kvmcdp mark`, and
  // kvmcdp:stopped at the end, as the filter's cdp-mark).
  Result<uint64_t> mark(const std::string& name);

  // The receiver thread ended (an error, QEMU gone, the job ended).
  bool ended() const { return ended_.load(); }
  Status error() const;
  ReceiverCounters counters() const;
  bool resyncing() const { return rx_ && rx_->in_gap(); }
  uint64_t resent_bytes() const { return resync_ ? resync_->resent_bytes() : 0; }
  // What the bitmap marked when a continued stream started.
  uint64_t scanned_dirty() const { return scanned_dirty_; }
  // QEMU still had the stream's bitmap (else the whole disk is resent).
  bool bitmap_kept() const { return bitmap_kept_; }
  // Before start(): trims a full resync (QEMU lost the bitmap).
  void set_resync_compare(ResyncCompare* c) { compare_ = c; }
  // Before start(): where the receiver publishes its counters.
  void set_live(std::atomic<uint64_t>* durable, ReceiverCounters* counters, std::mutex* mu) {
    live_durable_ = durable;
    live_counters_ = counters;
    live_mu_ = mu;
  }
  const MirrorNames& names() const { return names_; }

 private:
  Status connect_target(QmpClient& qmp);
  Status scan_bitmap(QmpClient& qmp);
  void receive();
  void teardown(QmpClient* qmp);

  QemuTarget target_;
  std::string node_;
  MirrorNames names_;
  std::chrono::milliseconds stall_timeout_;
  uint64_t disk_size_ = 0;
  uint64_t scanned_dirty_ = 0;
  bool bitmap_kept_ = false;
  std::string socket_;  // QEMU's NBD server
  bool server_started_ = false, export_added_ = false, mirror_started_ = false;
  journal::JournalWriter* writer_ = nullptr;
  int fd_ = -1;
  std::unique_ptr<NbdReceiver> rx_;
  std::unique_ptr<MirrorResync> resync_;
  std::unique_ptr<MarkServer> marks_;
  ResyncCompare* compare_ = nullptr;
  std::atomic<uint64_t>* live_durable_ = nullptr;
  ReceiverCounters* live_counters_ = nullptr;
  std::mutex* live_mu_ = nullptr;
  std::atomic<bool> stop_{false};
  std::atomic<bool> stopping_{false};  // the job's end is ours, not a failure
  std::atomic<bool> ended_{false};
  mutable std::mutex mu_;
  ReceiverCounters counters_;
  Status error_;
  std::thread thread_;
};

}  // namespace kvmcdp
