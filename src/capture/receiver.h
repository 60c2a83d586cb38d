// The kvmcdp end of the filter's stream: reads records from the socket
// (or, protocol version 3, from the shared-memory ring it gives the filter),
// appends them to the journal, tells the filter once they are written to
// a segment file (RECEIVED, protocol version 2: a crash of kvmcdp keeps
// them) and acknowledges them (ACK) only once a group commit has made
// them durable.
//
// Batching follows the socket: when it has nothing more to read, what
// arrived is committed with one fdatasync and acked with one message (in
// async mode only if the guest waits for some of it: see
// set_every_write_waits).  The
// fdatasync runs on the journal writer's sync thread while this one reads
// on, and the records that arrive meanwhile go into the next commit: under
// load batches grow and the socket never waits for the disk; when idle
// each record is committed at once, so a guest flush waits for one fsync,
// not a timer.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "capture/ack_gate.h"
#include "capture/resync_compare.h"
#include "journal/journal_writer.h"
#include "kvmcdp/wire_format.h"
#include "base/status.h"
#include "capture/wire_io.h"

namespace kvmcdp {

struct Hello {
  uint64_t stream_id = 0;
  uint64_t last_seq = 0;  // the last seq the filter has assigned
  uint64_t disk_size = 0;
  bool gap_pending = false;
  std::string node_name;
};

struct ReceiverCounters {
  uint64_t records = 0;
  uint64_t bytes = 0;  // payload bytes
  uint64_t commits = 0;
  uint64_t last_seq = 0;       // appended
  uint64_t durable_seq = 0;    // committed to the local journal
  uint64_t acked_seq = 0;      // acked to the filter (see AckGate)
  uint64_t last_time_ns = 0;   // of the newest durable record
  uint64_t ahead_reads = 0;    // reads that found the filter ahead of us
  uint64_t coalesced = 0;      // polls delayed so that messages gather
  uint32_t version = 0;        // the stream protocol agreed (3: the ring)
};

class StreamReceiver {
 public:
  StreamReceiver(int fd, journal::JournalWriter* writer) : fd_(fd), reader_(fd), writer_(writer) {}

  // Reads the filter's HELLO and answers with `durable_seq`, the last seq
  // the journal holds for this stream (the filter resends what follows).
  Result<Hello> handshake(uint64_t durable_seq, int timeout_ms);

  enum class End { kStopped, kDisconnected, kPaused };
  // Pumps records until `stop` is set (then commits what it has) or the
  // filter disconnects, or the gate pauses it (kPaused; the caller then
  // lets go of the filter).  An error from the journal (out of space, I/O) ends
  // it with that error and nothing acked beyond what is durable.
  Result<End> run(const std::atomic<bool>& stop);

  const ReceiverCounters& counters() const { return counters_; }
  void set_writer(journal::JournalWriter* writer) { writer_ = writer; }
  // With a gate, acks wait for what it says (a remote server); without,
  // they follow the local journal.
  void set_gate(AckGate* gate) { gate_ = gate; }
  // In sync mode every write waits for its ack, so whatever arrived is
  // committed as soon as the socket is idle.  In async mode only a flush
  // (or a FUA write) waits: the rest is committed when a flush or FUA
  // write arrives or the batch is kBatchBytes or kBatchAge old (the
  // filter's queue must still drain), so a stream of small writes is not
  // an fdatasync every few records.
  void set_every_write_waits(bool yes) { every_write_waits_ = yes; }
  // Continuing a stream: resync records are compared with the journal's
  // image and trimmed (resync_compare.h).  It outlives this receiver: a
  // reconnect's receiver goes on with the same compare.
  void set_resync_compare(ResyncCompare* compare) { compare_ = compare; }
  // Publishes the counters after every commit, for other threads.
  void set_live(std::atomic<uint64_t>* durable, ReceiverCounters* counters, std::mutex* mu) {
    live_durable_ = durable;
    live_counters_ = counters;
    live_mu_ = mu;
  }

 private:
  Status commit_and_ack();  // waits for the disk
  Status start_commit();    // commit_async; finish_commit when it ends
  int ms_until_batch_due() const;
  Status finish_commit();
  Status on_durable(uint64_t durable);
  Status send_ack();
  Status send_received();
  void note_source_ahead();
  void note_read();

  int fd_;
  std::unique_ptr<wire::StreamRing> ring_;  // version 3
  wire::MessageReader reader_;
  journal::JournalWriter* writer_;
  AckGate* gate_ = nullptr;
  ResyncCompare* compare_ = nullptr;
  std::atomic<uint64_t>* live_durable_ = nullptr;
  ReceiverCounters* live_counters_ = nullptr;
  std::mutex* live_mu_ = nullptr;
  ReceiverCounters counters_;
  uint32_t version_ = 1;         // agreed in the handshake
  uint64_t received_acked_ = 0;  // the last RECEIVED sent (written seq)
  uint64_t acks_sent_ = 0, received_sent_ = 0;
  bool uncommitted_ = false;  // appended, not yet asked to commit
  bool syncing_ = false;      // a commit_async has not ended yet
  bool every_write_waits_ = true;
  bool waited_for_ = false;   // an uncommitted record is waited for
  uint64_t uncommitted_bytes_ = 0;
  std::chrono::steady_clock::time_point first_uncommitted_;
  bool source_ahead_ = false;  // last told to the writer
  bool coalesce_ = false;      // wait kCoalesce before the next poll
  std::chrono::steady_clock::time_point last_read_;
  static constexpr std::chrono::nanoseconds kCoalesce{200'000};
  static constexpr uint64_t kBatchBytes = 8u << 20;
  // Bytes waiting on the socket before a read from which the sender is
  // ahead of us (a socket buffer holds ~200 KiB by default).
  static constexpr int kAheadBytes = 64 << 10;
  static constexpr std::chrono::milliseconds kBatchAge{5};
  // Version 3's ring: two largest messages, and 4 KiB writes by the
  // thousand between two reads.
  static constexpr uint64_t kRingBytes = 16u << 20;
};

}  // namespace kvmcdp
