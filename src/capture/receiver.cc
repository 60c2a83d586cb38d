#include "capture/receiver.h"

#include <fcntl.h>
#include <poll.h>
#include <time.h>

#include <algorithm>
#include <utility>
#include <cerrno>
#include <cstring>
#include <chrono>

#include <fmt/format.h>

#include "base/crash_point.h"
#include "base/fault_point.h"

namespace kvmcdp {

using wire::MsgHeader;
using wire::MsgType;

Result<Hello> StreamReceiver::handshake(uint64_t durable_seq, int timeout_ms) {
  fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL) | O_NONBLOCK);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  MsgHeader h{};
  const uint8_t* payload = nullptr;
  for (;;) {
    auto got = reader_.next(&h, &payload);
    if (!got) return got.status();
    if (*got) break;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{fd_, POLLIN, 0};
    if (left.count() <= 0 || poll(&p, 1, static_cast<int>(left.count())) == 0)
      return Status(ErrorKind::kQemu, "the cdp filter did not say hello in time");
    auto r = reader_.fill();
    if (!r) return r.status();
    if (*r == wire::MessageReader::Next::kClosed)
      return Status(ErrorKind::kQemu, "the cdp filter closed the stream before its hello");
  }
  if (h.type != static_cast<uint16_t>(MsgType::kHello))
    return Status(ErrorKind::kQemu, fmt::format("stream: expected hello, got message type {}", h.type));
  if (h.aux < wire::kMinVersion)
    return Status(ErrorKind::kQemu,
                  fmt::format("stream: the filter speaks protocol version {}, kvmcdp {} to {}",
                              h.aux, wire::kMinVersion, wire::kVersion));
  version_ = std::min(h.aux, wire::kVersion);
  if (version_ >= wire::kVersionRing) {
    // Without a ring (no memfd here, or a test's injected failure) the
    // stream stays on the socket: version 2.
    if (injected_failure("ring", "create", "memfd")) {
      if (auto ring = wire::StreamRing::create(kRingBytes)) ring_ = std::move(*ring);
    }
    if (!ring_) version_ = wire::kVersionRing - 1;
  }
  Hello hello;
  hello.stream_id = h.offset;
  hello.last_seq = h.seq;
  hello.disk_size = h.length;
  hello.gap_pending = h.flags & wire::kFlagGap;
  hello.node_name.assign(reinterpret_cast<const char*>(payload), h.payload_len);
  if (Status s = wire::send_control(fd_, MsgType::kHelloReply, durable_seq, version_,
                                    ring_ ? ring_->fd() : -1);
      !s)
    return s;
  if (ring_) reader_.use_ring(ring_.get());
  counters_.last_seq = counters_.durable_seq = counters_.acked_seq = durable_seq;
  counters_.version = version_;
  received_acked_ = durable_seq;
  return hello;
}

Status StreamReceiver::commit_and_ack() {
  if (!uncommitted_ && !syncing_) return Status::ok();
  auto durable = writer_->commit();
  if (!durable) return durable.status();
  uncommitted_ = false;
  waited_for_ = false;
  uncommitted_bytes_ = 0;
  return on_durable(*durable);
}

int StreamReceiver::ms_until_batch_due() const {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      first_uncommitted_ + kBatchAge - std::chrono::steady_clock::now());
  return std::max<int>(1, int(left.count()) + 1);
}

Status StreamReceiver::start_commit() {
  if (Status s = writer_->commit_async(); !s) return s;
  syncing_ = true;
  waited_for_ = false;
  uncommitted_ = false;
  uncommitted_bytes_ = 0;
  return Status::ok();
}

Status StreamReceiver::finish_commit() {
  syncing_ = false;
  auto durable = writer_->take_commit_event();
  if (!durable) return durable.status();
  return on_durable(*durable);
}

Status StreamReceiver::on_durable(uint64_t durable) {
  counters_.commits++;
  counters_.durable_seq = durable;
  if (live_durable_) *live_durable_ = durable;
  if (gate_) gate_->committed();
  Status acked = send_ack();
  if (live_counters_) {
    std::lock_guard l(*live_mu_);
    *live_counters_ = counters_;
  }
  return acked;
}

Status StreamReceiver::send_ack() {
  uint64_t ack = gate_ ? gate_->ackable(counters_.durable_seq) : counters_.durable_seq;
  if (ack <= counters_.acked_seq) return Status::ok();
  // Tests: ack:<k> dies after the commit whose ack is the k-th, before it leaves.
  crash_point("ack", static_cast<int>(++acks_sent_));
  counters_.acked_seq = ack;
  return wire::send_control(fd_, MsgType::kAck, ack);
}

// Version 2: what the journal writer has written to its segment is safe
// from a crash of kvmcdp (the next protect recovers it from the file and
// says so in its HELLO_REPLY), so the filter may free it: the guest's
// writes wait for the compressors and write(2), not for fdatasync.  Sent
// whenever a frame is written.  The writer bounds what is appended and not
// yet written (frames_in_flight): beyond that append waits, this thread
// stops reading, and the filter's queue fills.
Status StreamReceiver::send_received() {
  uint64_t written = std::min(writer_->take_written_event(), counters_.last_seq);
  if (version_ < wire::kVersionReceived || written <= received_acked_) return Status::ok();
  received_acked_ = written;
  Status sent = wire::send_control(fd_, MsgType::kReceived, received_acked_);
  // Tests: received:<k> dies right after the k-th RECEIVED left.
  crash_point("received", static_cast<int>(++received_sent_));
  return sent;
}

// Whether the filter is ahead of us: much is waiting on the socket when
// we come to read it (a sender that we keep up with has sent a message
// or two since the last read; one that waits for us has filled the
// socket).  Then the guest waits for this process, and the journal writer
// stores poorly compressing frames instead of taking the CPU the guest's
// own threads need (frame_effort.h).
void StreamReceiver::note_source_ahead() {
  bool ahead = reader_.pending() >= size_t{kAheadBytes};
  if (ahead) counters_.ahead_reads++;
  if (ahead == source_ahead_) return;
  source_ahead_ = ahead;
  writer_->set_source_ahead(ahead);
}

// Messages that arrive one by one at a high rate (4 KiB writes at many
// thousand a second) would wake this thread for each: on a virtual host
// each wake-up is an interrupt between cores, paid by the guest's I/O
// thread that sends (a tenth of its time under fio's random writes).
// When reads come closer than kCoalesce, the next poll waits kCoalesce
// first, so the messages gather and the sender finds nobody to wake.  Not
// in sync mode, nor with a flush or FUA write waiting, nor when the filter
// is ahead (then the socket is never empty anyway): those want the commit
// at once.  The filter has freed the guest's write by then, or its queue
// is far from full.
void StreamReceiver::note_read() {
  auto now = std::chrono::steady_clock::now();
  coalesce_ = !every_write_waits_ && !source_ahead_ && now - last_read_ < kCoalesce;
  last_read_ = now;
}

Result<StreamReceiver::End> StreamReceiver::run(const std::atomic<bool>& stop) {
  while (!stop.load()) {
    if (gate_ && gate_->paused()) {
      if (Status s = commit_and_ack(); !s) return s;
      return End::kPaused;
    }
    // Drain every message already buffered into the journal's batch.
    MsgHeader h{};
    const uint8_t* payload = nullptr;
    for (;;) {
      auto got = reader_.next(&h, &payload);
      if (!got) return got.status();
      if (!*got) break;
      if (h.type == static_cast<uint16_t>(MsgType::kHello) || h.seq <= counters_.last_seq)
        continue;  // a resend of something the journal already has
      counters_.bytes += h.payload_len;
      counters_.records++;
      counters_.last_seq = h.seq;
      counters_.last_time_ns = h.time_ns;
      if (!uncommitted_) first_uncommitted_ = std::chrono::steady_clock::now();
      // A resync that the journal's image mostly holds already is
      // trimmed to what differs (resync_compare.h).
      if (compare_ && compare_->comparing()) compare_->on_record(&h, &payload);
      // Serialized straight from the receive buffer: one copy per record.
      if (Status s = writer_->append(journal::view_of(h, payload)); !s) return s;
      uncommitted_ = true;
      uncommitted_bytes_ += h.payload_len;
      if (h.type == static_cast<uint16_t>(MsgType::kFlush) || (h.flags & wire::kFlagFua))
        waited_for_ = true;
    }
    // The filter waits for ring space that the messages just taken freed.
    if (ring_ && ring_->take_producer_waits()) {
      if (Status s = wire::send_control(fd_, MsgType::kReceived, received_acked_); !s) return s;
    }
    // Let the next messages gather on the socket (see note_read()), unless
    // what was just read holds a flush or FUA write.
    if (std::exchange(coalesce_, false) && !waited_for_) {
      counters_.coalesced++;
      timespec t{0, kCoalesce.count()};
      ::nanosleep(&t, nullptr);
    }
    // Ask for a commit when the socket has nothing more right now (one
    // fsync covers everything that arrived meanwhile), or when a batch is
    // big or old enough: a sender that never pauses must still get acks,
    // or its queue fills and the guest stalls.  The sync runs on the
    // writer's thread while this one reads on; what arrives meanwhile is
    // asked for as soon as it ends.
    pollfd p[4] = {{fd_, POLLIN, 0},
                   {gate_ ? gate_->receiver_fd() : -1, POLLIN, 0},
                   {writer_->commit_event_fd(), POLLIN, 0},
                   {writer_->written_event_fd(), POLLIN, 0}};
    bool may_start = uncommitted_ && !syncing_;
    bool prompt = every_write_waits_ || waited_for_;
    // With a ring, the filter wakes us through the socket only once we
    // say we sleep; if it published meanwhile, do not wait at all.
    bool ring_moved = ring_ && !reader_.may_sleep();
    int ready = poll(p, 4, ring_moved || (may_start && prompt) ? 0
                           : !may_start                        ? 100
                                                               : ms_until_batch_due());
    if (ready < 0 && errno != EINTR)
      return Status(ErrorKind::kFailure, fmt::format("poll: {}", std::strerror(errno)));
    if (ready > 0 && (p[3].revents & POLLIN)) {
      if (Status s = send_received(); !s) return s;
    }
    if (ready > 0 && (p[2].revents & POLLIN)) {
      if (Status s = finish_commit(); !s) return s;
    }
    if (ready > 0 && (p[1].revents & POLLIN)) {
      // The server made more durable: acks that waited for it go out now.
      AckGate::drain(p[1].fd);
      if (Status s = send_ack(); !s) return s;
    }
    bool readable = ring_moved || (ready > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR)));
    bool batch_due = uncommitted_ && (uncommitted_bytes_ >= kBatchBytes ||
                                      std::chrono::steady_clock::now() - first_uncommitted_ >=
                                          kBatchAge);
    if (uncommitted_ && !syncing_ && ((!readable && prompt) || batch_due)) {
      if (Status s = start_commit(); !s) return s;
    }
    if (!readable) continue;
    note_source_ahead();
    auto r = reader_.fill();
    if (!r) return r.status();
    note_read();
    if (*r == wire::MessageReader::Next::kClosed) {
      // Make durable what arrived; the ack cannot reach a closed peer, and
      // the filter learns the durable seq from the next handshake.
      if (uncommitted_ || syncing_) {
        auto durable = writer_->commit();
        if (!durable) return durable.status();
        counters_.durable_seq = *durable;
      }
      return End::kDisconnected;
    }
  }
  if (Status s = commit_and_ack(); !s) return s;
  return End::kStopped;
}

}  // namespace kvmcdp
