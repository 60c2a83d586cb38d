// The kvmcdp end of mirror capture: an NBD server (include/kvmcdp/
// nbd_format.h) on one connection from QEMU's NBD client, the target of
// an active mirror job (blockdev-mirror sync=none copy-mode=write-blocking)
// on the protected disk.  QEMU writes the guest's data to the disk first
// and then here, and completes the guest's request only when this server
// replies; every request becomes a journal record with the next seq and
// the time it arrived, and is answered only once a group commit has made
// it durable.  A stock QEMU's mirror does not pass flushes on (its flush
// goes to the disk only), so per-write durability is what makes a guest
// flush safe: every write it waits for was acknowledged durable before.
//
// Ordering: QEMU's active mirror holds back a write that overlaps one in
// flight to the target until the target has answered it, so the order of
// arrival here is an order in which overlapping writes reached the disk.
//
// Discards: whether a discarded range then reads as zeroes, as before or
// as a backing file depends on the disk's options (discard=ignore, the
// default, leaves the data).  The server reads the range back through
// QEMU's NBD export (DiskReader) before it replies, while the mirror still
// holds back overlapping writes, and journals what it read.  That read can
// wait behind a drain of the disk that waits for this very reply; after
// `trim_deadline` the server gives up, journals a GAP, replies, and hands
// the range to the resync (mirror_resync.h), whose records close the gap.
//
// Resync records (ranges read from the disk after a gap, by another
// thread) are appended here, between the guest's writes: a chunk whose
// range a guest write reached since its read began is stale and goes back
// to be read again, so the journal never replays old data over new.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/status.h"
#include "capture/disk_reader.h"
#include "capture/receiver.h"
#include "capture/resync_compare.h"
#include "journal/journal_writer.h"

namespace kvmcdp {

struct NbdReceiverOptions {
  uint64_t disk_size = 0;
  // --filter-timeout: a request not durable within it ends capture (QEMU's
  // mirror job then fails and the guest goes on; the dirty bitmap keeps
  // the ranges for the next protect).
  std::chrono::milliseconds stall_timeout{10000};
  std::chrono::milliseconds trim_deadline{200};
};

// A piece of a resync, from the resync thread.  A range is resent as
// chunks, the last one marked; a stale chunk comes back as a new range.
// The gap closes (RESYNC_DONE) when no range is outstanding.
struct ResyncItem {
  bool zeroes = false;          // else `data` holds the range
  uint64_t offset = 0, length = 0;
  std::vector<uint8_t> data;
  uint64_t read_after_seq = 0;  // the last seq appended when the read began
  bool last_of_range = false;
  // Not a resync chunk but a mark (mark_channel.h): its seq goes here.
  std::string mark;
  std::shared_ptr<std::promise<uint64_t>> mark_seq;
};

class NbdReceiver {
 public:
  NbdReceiver(int fd, journal::JournalWriter* writer, NbdReceiverOptions o);
  ~NbdReceiver();
  NbdReceiver(const NbdReceiver&) = delete;
  NbdReceiver& operator=(const NbdReceiver&) = delete;

  // The server side of the handshake, until the client's NBD_OPT_GO.
  Status handshake(int timeout_ms);

  // Before run(): the seq to continue from (the journal's last), and
  // whether a gap opens the stream (`ranges` ranges will be resent).
  void start_at(uint64_t last_seq, bool gap, uint64_t ranges);
  // Reads discarded ranges back (owned by the receiver's thread).
  void set_trim_reader(std::unique_ptr<DiskReader> r) { trim_reader_ = std::move(r); }
  // Where ranges to read (again) go: a discard not read back in time, or
  // a stale resync chunk.
  void set_resync_sink(std::function<void(uint64_t, uint64_t)> sink) {
    resync_sink_ = std::move(sink);
  }
  // A full resync after QEMU lost the bitmap: resent blocks the journal's
  // image holds already are not journaled again (resync_compare.h).
  void set_resync_compare(ResyncCompare* c) { compare_ = c; }
  void set_live(std::atomic<uint64_t>* durable, ReceiverCounters* counters, std::mutex* mu) {
    live_durable_ = durable;
    live_counters_ = counters;
    live_mu_ = mu;
  }

  // Thread-safe.  Waits while kMaxItems wait; dropped once run() ended.
  void submit(ResyncItem item);
  // A range that another thread hands to the resync (before its items).
  void expect_range() { outstanding_++; }
  uint64_t appended_seq() const { return appended_.load(); }
  // A gap is open (a resync runs): the dirty bitmap must not be cleared.
  bool in_gap() const { return in_gap_flag_.load(); }

  enum class End { kStopped, kDisconnected };
  Result<End> run(const std::atomic<bool>& stop);
  const ReceiverCounters& counters() const { return counters_; }

 private:
  struct Pending {
    uint64_t cookie;
    uint64_t seq;  // replied once durable covers it
    std::chrono::steady_clock::time_point since;
  };
  Status handle_request(const uint8_t* hdr, const uint8_t* payload);
  Status journal_trim(uint64_t offset, uint64_t length);
  Status append(wire::MsgType type, uint16_t flags, uint64_t offset, uint64_t length,
                const uint8_t* data);
  Status open_gap();
  Status resend(uint64_t offset, uint64_t length);
  Status take_items();
  void queue_reply(uint64_t cookie, uint32_t error);
  Status flush_replies();
  Status on_durable(uint64_t durable);
  Status reply_durable();
  void note_written(uint64_t offset, uint64_t length, uint64_t seq);
  bool written_since(uint64_t offset, uint64_t length, uint64_t seq) const;
  Status fill();

  int fd_;
  journal::JournalWriter* writer_;
  NbdReceiverOptions o_;
  std::unique_ptr<DiskReader> trim_reader_;
  ResyncCompare* compare_ = nullptr;
  std::function<void(uint64_t, uint64_t)> resync_sink_;
  std::atomic<uint64_t>* live_durable_ = nullptr;
  ReceiverCounters* live_counters_ = nullptr;
  std::mutex* live_mu_ = nullptr;
  ReceiverCounters counters_;

  // Received bytes in_[in_pos_, in_len_): a buffer that is not cleared
  // before each read (a 4 KiB write must not cost a 4 MiB memset).
  std::unique_ptr<uint8_t[]> in_;
  size_t in_cap_ = 0, in_pos_ = 0, in_len_ = 0;
  std::vector<uint8_t> out_;  // replies, sent together
  bool source_ahead_ = false;  // last told to the writer
  static constexpr ssize_t kAheadBytes = 64 << 10;
  bool closed_ = false;
  std::deque<Pending> pending_;
  uint64_t seq_ = 0;  // the last seq appended
  std::atomic<uint64_t> appended_{0};
  bool in_gap_ = false;
  bool pending_gap_record_ = false;  // start_at(gap): the GAP goes first
  std::atomic<bool> in_gap_flag_{false};
  std::atomic<int64_t> outstanding_{0};  // ranges handed to the resync, not yet back
  bool uncommitted_ = false, syncing_ = false;
  // The last seq that wrote each kRegion of the disk: a resync chunk read
  // before it is stale.
  static constexpr uint64_t kRegion = 1u << 20;
  std::vector<uint64_t> region_seq_;

  std::mutex items_mu_;
  std::condition_variable items_cv_;
  bool items_closed_ = false;  // run() ended: nobody takes items any more
  static constexpr size_t kMaxItems = 8;
  std::deque<ResyncItem> items_;
  int items_fd_;  // eventfd: items waiting
};

}  // namespace kvmcdp
