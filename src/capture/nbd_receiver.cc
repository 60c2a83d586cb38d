#include "capture/nbd_receiver.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "base/fsutil.h"
#include "base/wall_clock.h"
#include "journal/journal_codec.h"
#include "capture/nbd_server_wire.h"
#include "kvmcdp/nbd_format.h"
#include "kvmcdp/wire_format.h"

namespace kvmcdp {
namespace {

using Clock = std::chrono::steady_clock;

using nbd::get16;
using nbd::get32;
using nbd::get64;
using nbd::protocol_error;
using nbd::put32;
using nbd::put64;
using nbd::send_all;

constexpr uint16_t kTransmissionFlags =
    nbd::kHasFlags | nbd::kSendFlush | nbd::kSendFua | nbd::kSendTrim | nbd::kSendWriteZeroes;

}  // namespace

NbdReceiver::NbdReceiver(int fd, journal::JournalWriter* writer, NbdReceiverOptions o)
    : fd_(fd), writer_(writer), o_(o), items_fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  region_seq_.assign((o_.disk_size + kRegion - 1) / kRegion, 0);
}

NbdReceiver::~NbdReceiver() { close(items_fd_); }

Status NbdReceiver::handshake(int timeout_ms) {
  nbd::ExportInfo e;
  e.size = o_.disk_size;
  e.transmission_flags = kTransmissionFlags;
  e.any_name = true;
  e.max_block = nbd::kMaxBlock;
  return nbd::server_handshake(fd_, e, timeout_ms);
}

void NbdReceiver::start_at(uint64_t last_seq, bool gap, uint64_t ranges) {
  seq_ = last_seq;
  appended_ = last_seq;
  counters_.last_seq = counters_.durable_seq = counters_.acked_seq = last_seq;
  if (gap) {
    in_gap_ = true;
    in_gap_flag_ = true;
    outstanding_ = ranges;
    pending_gap_record_ = true;
  }
}

void NbdReceiver::submit(ResyncItem item) {
  {
    // A resync reads faster than the journal takes it: hold it back.
    std::unique_lock l(items_mu_);
    items_cv_.wait(l, [&] { return items_.size() < kMaxItems || items_closed_; });
    if (items_closed_) return;
    items_.push_back(std::move(item));
  }
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(items_fd_, &one, sizeof one);
}

void NbdReceiver::note_written(uint64_t offset, uint64_t length, uint64_t seq) {
  if (length == 0) return;
  for (uint64_t r = offset / kRegion; r <= (offset + length - 1) / kRegion && r < region_seq_.size();
       ++r)
    region_seq_[r] = seq;
}

bool NbdReceiver::written_since(uint64_t offset, uint64_t length, uint64_t seq) const {
  if (length == 0) return false;
  for (uint64_t r = offset / kRegion; r <= (offset + length - 1) / kRegion && r < region_seq_.size();
       ++r)
    if (region_seq_[r] > seq) return true;
  return false;
}

Status NbdReceiver::append(wire::MsgType type, uint16_t flags, uint64_t offset, uint64_t length,
                           const uint8_t* data) {
  wire::MsgHeader h{};
  h.magic = wire::kMagic;
  h.type = static_cast<uint16_t>(type);
  h.flags = flags;
  h.seq = seq_ + 1;
  h.time_ns = now_ns();
  h.offset = type == wire::MsgType::kGap ? h.seq : offset;
  h.length = length;
  h.payload_len = data ? uint32_t(length) : 0;
  if (compare_ && compare_->comparing()) compare_->on_record(&h, &data);
  if (Status s = writer_->append(journal::view_of(h, data)); !s) return s;
  seq_ = h.seq;
  appended_ = seq_;
  uncommitted_ = true;
  counters_.records++;
  counters_.bytes += h.payload_len;
  counters_.last_seq = seq_;
  counters_.last_time_ns = h.time_ns;
  if (type == wire::MsgType::kWrite || type == wire::MsgType::kWriteZeroes ||
      type == wire::MsgType::kDiscard)
    note_written(h.offset, h.length, seq_);
  return Status::ok();
}

Status NbdReceiver::open_gap() {
  if (in_gap_ && !pending_gap_record_) return Status::ok();
  pending_gap_record_ = false;
  in_gap_ = true;
  in_gap_flag_ = true;
  return append(wire::MsgType::kGap, 0, 0, 0, nullptr);
}

Status NbdReceiver::resend(uint64_t offset, uint64_t length) {
  if (Status s = open_gap(); !s) return s;
  outstanding_++;
  if (resync_sink_) resync_sink_(offset, length);
  return Status::ok();
}

// What the discard left behind, read back while QEMU's mirror still holds
// overlapping writes back (nbd_receiver.h).  Zero extents are journaled
// as write-zeroes, the rest as data; a range not read in time is resent.
Status NbdReceiver::journal_trim(uint64_t offset, uint64_t length) {
  if (!trim_reader_ || !trim_reader_->usable()) return resend(offset, length);
  auto deadline = Clock::now() + o_.trim_deadline;
  auto extents = trim_reader_->extents(offset, length, deadline);
  if (!extents) return resend(offset, length);
  std::vector<uint8_t> buf;
  for (const DiskExtent& e : *extents) {
    if (e.set) {
      if (Status s = append(wire::MsgType::kWriteZeroes, wire::kFlagUnmap, e.offset, e.length,
                            nullptr);
          !s)
        return s;
      continue;
    }
    for (uint64_t at = e.offset; at < e.offset + e.length;) {
      uint64_t n = std::min<uint64_t>(e.offset + e.length - at, wire::kMaxPayload);
      buf.resize(n);
      if (Status r = trim_reader_->read(buf.data(), n, at, Clock::now() + o_.trim_deadline); !r)
        return resend(at, offset + length - at);
      bool zero = std::all_of(buf.begin(), buf.end(), [](uint8_t b) { return b == 0; });
      Status s = zero ? append(wire::MsgType::kWriteZeroes, 0, at, n, nullptr)
                      : append(wire::MsgType::kWrite, 0, at, n, buf.data());
      if (!s) return s;
      at += n;
    }
  }
  return Status::ok();
}

void NbdReceiver::queue_reply(uint64_t cookie, uint32_t error) {
  put32(&out_, nbd::kSimpleReplyMagic);
  put32(&out_, error);
  put64(&out_, cookie);
}

// One send for every reply a commit (or a parse) made ready.
Status NbdReceiver::flush_replies() {
  if (out_.empty()) return Status::ok();
  Status s = send_all(fd_, out_.data(), out_.size());
  out_.clear();
  return s;
}

Status NbdReceiver::handle_request(const uint8_t* h, const uint8_t* payload) {
  uint16_t flags = get16(h + 4), type = get16(h + 6);
  uint64_t cookie = get64(h + 8), offset = get64(h + 16);
  uint32_t length = get32(h + 24);
  bool in_bounds = offset <= o_.disk_size && length <= o_.disk_size - offset;
  auto reply_when_durable = [&] { pending_.push_back({cookie, seq_, Clock::now()}); };
  switch (type) {
    case nbd::kCmdWrite:
      if (!in_bounds) {
        queue_reply(cookie, nbd::kEnospc);
        return Status::ok();
      }
      for (uint32_t at = 0; at < length;) {
        uint32_t n = std::min<uint32_t>(length - at, wire::kMaxPayload);
        if (Status s = append(wire::MsgType::kWrite, (flags & nbd::kCmdFlagFua) ? wire::kFlagFua : 0,
                              offset + at, n, payload + at);
            !s)
          return s;
        at += n;
      }
      reply_when_durable();
      return Status::ok();
    case nbd::kCmdWriteZeroes:
      if (!in_bounds) {
        queue_reply(cookie, nbd::kEnospc);
        return Status::ok();
      }
      if (Status s = append(wire::MsgType::kWriteZeroes,
                            (flags & nbd::kCmdFlagNoHole) ? 0 : wire::kFlagUnmap, offset, length,
                            nullptr);
          !s)
        return s;
      reply_when_durable();
      return Status::ok();
    case nbd::kCmdTrim:
      if (!in_bounds) {
        queue_reply(cookie, nbd::kEnospc);
        return Status::ok();
      }
      if (Status s = journal_trim(offset, length); !s) return s;
      reply_when_durable();
      return Status::ok();
    case nbd::kCmdFlush:
      if (Status s = append(wire::MsgType::kFlush, 0, 0, 0, nullptr); !s) return s;
      reply_when_durable();
      return Status::ok();
    case nbd::kCmdDisc:
      closed_ = true;
      return Status::ok();
    default:
      // READ included: with sync=none the mirror never reads its target.
      queue_reply(cookie, nbd::kEinval);
      return Status::ok();
  }
}

Status NbdReceiver::take_items() {
  uint64_t v;
  while (::read(items_fd_, &v, sizeof v) > 0) {
  }
  std::deque<ResyncItem> items;
  {
    std::lock_guard l(items_mu_);
    items.swap(items_);
  }
  items_cv_.notify_all();
  for (ResyncItem& it : items) {
    if (it.mark_seq) {
      if (Status s = append(wire::MsgType::kMark, 0, 0, it.mark.size(),
                            reinterpret_cast<const uint8_t*>(it.mark.data()));
          !s)
        return s;
      it.mark_seq->set_value(seq_);
      continue;
    }
    if (written_since(it.offset, it.length, it.read_after_seq)) {
      // A guest write reached the range after the read began: read again.
      if (it.last_of_range) outstanding_--;
      outstanding_++;
      if (resync_sink_) resync_sink_(it.offset, it.length);
      continue;
    }
    Status s = it.zeroes ? append(wire::MsgType::kWriteZeroes, 0, it.offset, it.length, nullptr)
                         : append(wire::MsgType::kWrite, wire::kFlagResync, it.offset, it.length,
                                  it.data.data());
    if (!s) return s;
    if (it.last_of_range) outstanding_--;
  }
  if (in_gap_ && !pending_gap_record_ && outstanding_ == 0) {
    if (Status s = append(wire::MsgType::kResyncDone, 0, 0, 0, nullptr); !s) return s;
    in_gap_ = false;
    in_gap_flag_ = false;
  }
  return Status::ok();
}

Status NbdReceiver::on_durable(uint64_t durable) {
  counters_.commits++;
  counters_.durable_seq = durable;
  if (live_durable_) *live_durable_ = durable;
  Status replied = reply_durable();
  if (live_counters_) {
    std::lock_guard l(*live_mu_);
    *live_counters_ = counters_;
  }
  return replied;
}

Status NbdReceiver::reply_durable() {
  while (!pending_.empty() && pending_.front().seq <= counters_.durable_seq) {
    queue_reply(pending_.front().cookie, 0);
    counters_.acked_seq = pending_.front().seq;
    pending_.pop_front();
  }
  return flush_replies();
}

Status NbdReceiver::fill() {
  // Room for the largest request after what is unparsed; moved to the
  // front when the tail runs out.
  constexpr size_t kRead = 4u << 20, kCap = nbd::kMaxRequest + nbd::kRequestHeaderSize + kRead;
  if (!in_) {
    in_cap_ = kCap;
    in_.reset(new uint8_t[in_cap_]);
  }
  if (in_cap_ - in_len_ < kRead) {
    std::memmove(in_.get(), in_.get() + in_pos_, in_len_ - in_pos_);
    in_len_ -= in_pos_;
    in_pos_ = 0;
  }
  ssize_t r = ::recv(fd_, in_.get() + in_len_, in_cap_ - in_len_, MSG_DONTWAIT);
  if (r > 0) in_len_ += size_t(r);
  // Much waiting at once: QEMU is ahead of us and the guest waits.  Then
  // the writer stores frames that compress poorly instead of spending the
  // CPU the guest's own threads need (frame_effort.h), as for the filter.
  bool ahead = r >= kAheadBytes;
  if (ahead != source_ahead_) {
    source_ahead_ = ahead;
    writer_->set_source_ahead(ahead);
  }
  if (r == 0) closed_ = true;
  if (r < 0 && errno != EAGAIN && errno != EINTR) {
    if (errno == ECONNRESET || errno == EPIPE) closed_ = true;
    else return Status(ErrorKind::kQemu, fsutil::errno_message("recv", "NBD"), Cause::kConnectionLost);
  }
  return Status::ok();
}

Result<NbdReceiver::End> NbdReceiver::run(const std::atomic<bool>& stop) {
  // However it ends, a resync waiting to hand over items must not wait
  // for ever.
  struct CloseItems {
    NbdReceiver* r;
    ~CloseItems() {
      {
        std::lock_guard l(r->items_mu_);
        r->items_closed_ = true;
      }
      r->items_cv_.notify_all();
    }
  } close_items{this};
  // A stream that continues after a gap says so before anything else.
  if (pending_gap_record_) {
    if (Status s = open_gap(); !s) return s;
    if (Status s = take_items(); !s) return s;
  }
  while (!stop.load()) {
    // Parse every complete request received so far.
    for (;;) {
      size_t avail = in_len_ - in_pos_;
      if (avail < nbd::kRequestHeaderSize) break;
      const uint8_t* h = in_.get() + in_pos_;
      if (get32(h) != nbd::kRequestMagic) return protocol_error("bad request magic");
      uint32_t length = get32(h + 24);
      bool with_data = get16(h + 6) == nbd::kCmdWrite;
      if (with_data && length > nbd::kMaxRequest)
        return protocol_error(fmt::format("a write of {} bytes", length));
      size_t need = nbd::kRequestHeaderSize + (with_data ? length : 0);
      if (avail < need) break;
      if (Status s = handle_request(h, h + nbd::kRequestHeaderSize); !s) return s;
      in_pos_ += need;
    }
    if (closed_) break;
    // Replies that need no commit (nothing was appended since the last),
    // and refusals.
    if (!uncommitted_ && !syncing_) {
      if (Status s = reply_durable(); !s) return s;
    }
    if (Status s = flush_replies(); !s) return s;
    if (!pending_.empty() && Clock::now() - pending_.front().since > o_.stall_timeout)
      return Status(ErrorKind::kFailure,
                    fmt::format("the journal did not make a write durable within {} ms: capture "
                                "stops, and the guest goes on without it",
                                o_.stall_timeout.count()));
    pollfd p[3] = {{fd_, POLLIN, 0}, {items_fd_, POLLIN, 0}, {writer_->commit_event_fd(), POLLIN, 0}};
    bool may_start = uncommitted_ && !syncing_;
    int ready = ::poll(p, 3, may_start ? 0 : 100);
    if (ready < 0 && errno != EINTR)
      return Status(ErrorKind::kFailure, fmt::format("poll: {}", std::strerror(errno)));
    if (ready > 0 && (p[2].revents & POLLIN)) {
      syncing_ = false;
      auto durable = writer_->take_commit_event();
      if (!durable) return durable.status();
      if (Status s = on_durable(*durable); !s) return s;
    }
    if (ready > 0 && (p[1].revents & POLLIN)) {
      if (Status s = take_items(); !s) return s;
    }
    bool readable = ready > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR));
    // One fdatasync for everything that arrived while the socket was busy.
    if (uncommitted_ && !syncing_ && !readable) {
      if (Status s = writer_->commit_async(); !s) return s;
      syncing_ = true;
      uncommitted_ = false;
    }
    if (readable) {
      if (Status s = fill(); !s) return s;
    }
  }
  // Make durable what arrived, and answer what can still be answered.
  auto durable = writer_->commit();
  if (!durable) return durable.status();
  syncing_ = false;
  uncommitted_ = false;
  counters_.durable_seq = *durable;
  if (!closed_) {
    if (Status s = on_durable(*durable); !s) return s;
  } else {
    // After NBD_CMD_DISC the server closes: a client may wait for that.
    ::shutdown(fd_, SHUT_RDWR);
  }
  return closed_ ? End::kDisconnected : End::kStopped;
}

}  // namespace kvmcdp
