#include "remote/shipper.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/fsutil.h"
#include "journal/journal_codec.h"
#include "store/manifest.h"
#include "journal/segment_list.h"
#include "journal/frame_cursor.h"

namespace kvmcdp {

using journal::FrameHeader;
using journal::kFrameHeaderSize;
using journal::kSegmentHeaderSize;
using remote::Message;
using remote::MsgType;

namespace {

constexpr size_t kBatchBytes = 4u << 20;
constexpr size_t kBaseChunk = 1u << 20;

uint64_t file_size(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

bool exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

}  // namespace

// Where shipping stands inside one connection.
struct ShipCursor {
  uint64_t segment = 0;  // 0: not started (no local segment yet)
  uint64_t offset = 0;
  fsutil::Fd fd;
  uint64_t server_durable = 0;
  bool base_pending = false;   // the server lacks the base copy
  bool base_done_sent = false;
  uint64_t base_offset = 0;
  fsutil::Fd base_fd;
  std::vector<uint8_t> batch;  // reused between sends
  std::chrono::steady_clock::time_point last_account =
      std::chrono::steady_clock::now() - std::chrono::seconds(10);
};

Shipper::Shipper(ShipperConfig cfg, AckGate* gate, std::function<uint64_t()> local_durable)
    : cfg_(std::move(cfg)), gate_(gate), local_durable_(std::move(local_durable)) {}

Shipper::~Shipper() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void Shipper::start() { thread_ = std::thread([this] { run(); }); }

bool Shipper::finish(int wait_ms) {
  finishing_ = true;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  while (!caught_up_ && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  return caught_up_;
}

RemoteStatus Shipper::status() {
  std::lock_guard l(mu_);
  return status_;
}

void Shipper::set_error(const std::string& e) {
  std::lock_guard l(mu_);
  status_.error = e;
}

// Bytes of local journal the server does not hold yet, and (for a spool)
// pause the receiver when they pass the limit: the filter's dirty bitmap
// then remembers what changed, instead of the spool filling the disk.
static uint64_t unshipped_bytes(const std::string& store, uint64_t segment, uint64_t offset) {
  auto segs = journal::list_segments(store);
  if (!segs) return 0;
  uint64_t total = 0;
  for (uint64_t n : *segs) {
    if (n < segment) continue;
    uint64_t size = file_size(journal::segment_path(store, n));
    total += n == segment ? size - std::min(size, offset) : size;
  }
  return total;
}

void Shipper::run() {
  auto backoff = std::chrono::milliseconds(500);
  while (!stop_) {
    auto m = read_manifest(cfg_.store);
    Status failed;
    if (m) {
      // Short enough that a stop does not wait long on a dead address.
      auto link = RemoteLink::open(cfg_.remote, &*m, 10000);
      if (link) {
        backoff = std::chrono::milliseconds(500);
        failed = session(**link);
      } else {
        failed = link.status();
      }
      gate_->set_connected(false);
      {
        std::lock_guard l(mu_);
        status_.connected = false;
      }
      if (caught_up_) return;
      if (!failed) failed = Status(ErrorKind::kFailure, "the server went away");
      set_error(failed.message());
    }
    if (cfg_.spool) {
      uint64_t spooled = unshipped_bytes(cfg_.store, 0, 0);
      {
        std::lock_guard l(mu_);
        status_.spool_bytes = status_.lag_bytes = spooled;
      }
      if (spooled > cfg_.spool_limit && !gate_->paused()) gate_->set_paused(true);
    }
    if (finishing_) {
      // Nobody is waiting for a server that is not there.
      if (!m) return;
    }
    // Back off, not woken by the receiver's commits: a server that is down
    // must not be dialled (or ssh started) once per commit.
    auto wake = std::chrono::steady_clock::now() + (m ? backoff : std::chrono::milliseconds(200));
    while (!stop_ && std::chrono::steady_clock::now() < wake)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    AckGate::drain(gate_->shipper_fd());
    backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
  }
}

// One connection, pass by pass: resume where the server's copy ends,
// then until a stop or an error: read the server's replies, trim the
// spool, ship journal frames, ship a chunk of the base copy, account.
Status Shipper::session(RemoteLink& link) {
  auto m = read_manifest(cfg_.store);
  if (!m) return m.status();
  ShipCursor c;
  if (Status st = resume(link.state(), *m, c); !st) return st;
  remote::Conn& conn = link.conn();
  for (;;) {
    if (stop_) return Status::ok();
    if (Status st = read_replies(conn, *m, c); !st) return st;
    bool trimmed = trim_spool(c);
    auto shipped = ship_journal(conn, c);
    if (!shipped) return shipped.status();
    bool progressed = *shipped;
    if (!progressed) {
      auto based = ship_base(conn, c);
      if (!based) return based.status();
      progressed = *based;
    }
    account(c, trimmed);
    if (finishing_ && !progressed && all_shipped(c)) {
      caught_up_ = true;
      return Status::ok();
    }
    if (!progressed) {
      pollfd p[2] = {{conn.in_fd(), POLLIN, 0}, {gate_->shipper_fd(), POLLIN, 0}};
      poll(p, 2, 100);
      AckGate::drain(gate_->shipper_fd());
    }
  }
}

// Where the server's copy ends decides where shipping resumes: nothing is
// sent twice, nothing skipped, and a server that holds what this store
// never had is refused.
Status Shipper::resume(const ServerState& srv, const Manifest& m, ShipCursor& c) {
  std::string our_id = fmt::format("{:016x}", m.stream_id);
  if (!srv.stream_id.empty() && srv.stream_id != our_id)
    return Status(ErrorKind::kFailure, fmt::format("the server's store holds stream {}, this one "
                                                   "{}: it is another drive's store",
                                                   srv.stream_id, our_id));
  c.server_durable = srv.last_seq;
  auto listed = journal::list_segments(cfg_.store);
  std::vector<uint64_t> segs = listed ? *listed : std::vector<uint64_t>{};
  if (srv.segment == 0) {
    c.segment = segs.empty() ? 0 : segs.front();
  } else if (std::binary_search(segs.begin(), segs.end(), srv.segment)) {
    c.segment = srv.segment;
    c.offset = srv.size;
    if (srv.size > file_size(journal::segment_path(cfg_.store, srv.segment)))
      return Status(ErrorKind::kFailure,
                    fmt::format("the server holds more of segment {} than this store: they "
                                "have diverged",
                                srv.segment));
  } else if (segs.empty() || srv.segment + 1 == segs.front()) {
    c.segment = srv.segment + 1;  // everything before was shipped and trimmed
  } else if (srv.segment < segs.front()) {
    return Status(ErrorKind::kFailure,
                  fmt::format("segments {} to {} are neither on the server nor here",
                              srv.segment + 1, segs.front() - 1));
  } else {
    return Status(ErrorKind::kFailure,
                  fmt::format("the server holds segment {}, which this store never had",
                              srv.segment));
  }
  c.base_pending = !srv.base_complete;
  if (c.base_pending && m.base_complete && !exists(cfg_.store + "/" + m.base_image))
    return Status(ErrorKind::kFailure,
                  "the server has no base copy and this spool no longer holds one; "
                  "protect into a new spool to start a new base copy");
  gate_->set_remote(c.server_durable);
  gate_->set_connected(true);
  std::lock_guard l(mu_);
  status_.connected = true;
  status_.error.clear();
  status_.durable_seq = srv.last_seq;
  status_.durable_ns = srv.last_ns;
  status_.base_on_server = srv.base_complete;
  return Status::ok();
}

// What the server says, without waiting: durable seqs, the base copy,
// refusals.
Status Shipper::read_replies(remote::Conn& conn, const Manifest& m, ShipCursor& c) {
  Message msg;
  for (;;) {
    auto got = conn.receive(&msg, 0);
    if (!got) return got.status();
    if (!*got) return Status::ok();
    if (msg.h.type == static_cast<uint16_t>(MsgType::kError))
      return Status(ErrorKind::kFailure, fmt::format("the server refused: {}", msg.reason()),
                    Cause::kRefused);
    if (msg.h.type == static_cast<uint16_t>(MsgType::kAck)) {
      c.server_durable = msg.h.a;
      gate_->set_remote(msg.h.a);
      std::lock_guard l(mu_);
      status_.durable_seq = msg.h.a;
      status_.durable_ns = msg.h.b;
    } else if (msg.h.type == static_cast<uint16_t>(MsgType::kBaseAck)) {
      c.base_pending = false;
      if (cfg_.spool) unlink((cfg_.store + "/" + m.base_image).c_str());
      std::lock_guard l(mu_);
      status_.base_on_server = true;
    }
  }
}

// A spool keeps only what the server lacks: whole segments the server
// holds durably go, never the newest one (the writer numbers new segments
// after it).  True if something was removed.
bool Shipper::trim_spool(const ShipCursor& c) {
  if (!cfg_.spool) return false;
  auto now_segs = journal::list_segments(cfg_.store);
  if (!now_segs) return false;
  bool trimmed = false;
  for (size_t i = 0; i + 1 < now_segs->size() && (*now_segs)[i] < c.segment; ++i) {
    uint64_t n = (*now_segs)[i];
    auto sf = journal::load_segment(cfg_.store, n);
    if (!sf || (!sf->frames.empty() && sf->frames.back().last_seq > c.server_durable)) break;
    unlink(journal::index_path(cfg_.store, n).c_str());
    unlink(journal::segment_path(cfg_.store, n).c_str());
    trimmed = true;
  }
  return trimmed;
}

// Durable frames of the current segment, in batches; at the end of a
// sealed segment its index, then on to the next.  True if it moved on.
Result<bool> Shipper::ship_journal(remote::Conn& conn, ShipCursor& c) {
  uint64_t durable = local_durable_();
  if (c.segment == 0) {
    auto s = journal::list_segments(cfg_.store);
    if (s && !s->empty()) c.segment = s->front();
  }
  std::string path = c.segment ? journal::segment_path(cfg_.store, c.segment) : "";
  if (c.segment && !c.fd.valid()) c.fd = fsutil::Fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!c.fd.valid()) return false;
  uint64_t size = file_size(path);
  std::vector<uint8_t>& batch = c.batch;
  batch.clear();
  uint64_t pos = c.offset;
  if (pos == 0 && size >= kSegmentHeaderSize) {
    batch.resize(kSegmentHeaderSize);
    auto n = fsutil::pread_full(c.fd.get(), batch.data(), kSegmentHeaderSize, 0, path);
    if (!n) return n.status();
    pos = kSegmentHeaderSize;
  }
  while (pos != 0 && batch.size() < kBatchBytes && pos + kFrameHeaderSize <= size) {
    uint8_t hb[kFrameHeaderSize];
    auto n = fsutil::pread_full(c.fd.get(), hb, sizeof hb, pos, path);
    if (!n) return n.status();
    // A frame being written, or not yet durable: not yet.
    journal::FrameCheck fc = journal::check_frame(hb, *n == sizeof hb ? size - pos : *n);
    if (fc.problem != journal::FrameProblem::kNone || fc.header.last_seq > durable) break;
    size_t at = batch.size();
    batch.resize(at + fc.length);
    auto r = fsutil::pread_full(c.fd.get(), batch.data() + at, fc.length, pos, path);
    if (!r) return r.status();
    pos += fc.length;
  }
  if (!batch.empty()) {
    if (Status s = conn.send(MsgType::kSegmentData, c.segment, c.offset, batch.data(),
                             batch.size());
        !s)
      return s;
    c.offset = pos;
    return true;
  }
  if (c.offset != size || c.offset == 0) return false;
  // The end of this segment: if it is sealed, send its index and go on
  // with the next one.
  std::string idx = journal::index_path(cfg_.store, c.segment);
  bool next = exists(journal::segment_path(cfg_.store, c.segment + 1));
  auto bytes = fsutil::read_file(idx);
  if (bytes) {
    uint64_t seg_size = 0;
    std::vector<journal::FrameInfo> frames;
    if (!journal::decode_index(*bytes, c.segment, &seg_size, &frames) && seg_size == c.offset) {
      if (Status s = conn.send(MsgType::kSegmentSeal, c.segment, c.offset, bytes->data(),
                               bytes->size());
          !s)
        return s;
      next = true;
    }
  }
  if (!next) return false;
  c.segment++;
  c.offset = 0;
  c.fd = fsutil::Fd();
  return true;
}

// The base copy, a chunk at a time between journal batches, so the
// journal's lag stays small while a big base copy goes out.  True if it
// sent something.
Result<bool> Shipper::ship_base(remote::Conn& conn, ShipCursor& c) {
  if (!c.base_pending || c.base_done_sent) return false;
  auto fresh = read_manifest(cfg_.store);
  if (!fresh || !fresh->base_complete) return false;
  std::string base = cfg_.store + "/" + fresh->base_image;
  if (!c.base_fd.valid()) c.base_fd = fsutil::Fd(::open(base.c_str(), O_RDONLY | O_CLOEXEC));
  if (!c.base_fd.valid()) return Status(ErrorKind::kFailure, fsutil::errno_message("open", base));
  off_t data = lseek(c.base_fd.get(), static_cast<off_t>(c.base_offset), SEEK_DATA);
  if (data < 0 || static_cast<uint64_t>(data) >= fresh->disk_size) {
    nlohmann::json j = {{"time_ns", fresh->base_complete_time_ns}};
    if (Status s = conn.send(MsgType::kBaseDone, fresh->disk_size, fresh->base_complete_seq,
                             j.dump());
        !s)
      return s;
    c.base_done_sent = true;
    return true;
  }
  off_t hole = lseek(c.base_fd.get(), data, SEEK_HOLE);
  uint64_t end = std::min<uint64_t>(hole < 0 ? fresh->disk_size : hole, fresh->disk_size);
  size_t n = static_cast<size_t>(std::min<uint64_t>(kBaseChunk, end - data));
  c.batch.resize(n);
  auto r = fsutil::pread_full(c.base_fd.get(), c.batch.data(), n, data, base);
  if (!r) return r.status();
  if (Status s = conn.send(MsgType::kBaseData, data, 0, c.batch.data(), *r); !s) return s;
  c.base_offset = data + *r;
  return true;
}

// Twice a second (or after a trim): the lag for status, and for a spool
// the pause or release of the receiver.
void Shipper::account(ShipCursor& c, bool trimmed) {
  auto now = std::chrono::steady_clock::now();
  if (!trimmed && now - c.last_account <= std::chrono::milliseconds(500)) return;
  c.last_account = now;
  uint64_t lag = unshipped_bytes(cfg_.store, c.segment, c.offset);
  uint64_t spooled = cfg_.spool ? unshipped_bytes(cfg_.store, 0, 0) : 0;
  {
    std::lock_guard l(mu_);
    status_.lag_bytes = lag;
    status_.spool_bytes = spooled;
  }
  if (cfg_.spool) {
    if (spooled > cfg_.spool_limit && !gate_->paused()) gate_->set_paused(true);
    if (spooled <= cfg_.spool_limit / 2 && gate_->paused()) gate_->set_paused(false);
  }
}

// Everything is out once the server holds the local journal durably and
// no local segment is ahead of the cursor, or the cursor is at the end of
// the open (unsealed) last one.
bool Shipper::all_shipped(const ShipCursor& c) {
  if (c.base_pending || c.server_durable < local_durable_()) return false;
  auto s = journal::list_segments(cfg_.store);
  uint64_t newest = s && !s->empty() ? s->back() : 0;
  bool open_tail = newest == c.segment && !exists(journal::index_path(cfg_.store, c.segment)) &&
                   c.offset == file_size(journal::segment_path(cfg_.store, c.segment));
  return newest < c.segment || c.segment == 0 || open_tail;
}

}  // namespace kvmcdp
