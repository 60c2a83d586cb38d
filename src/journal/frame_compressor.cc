#include "journal/frame_compressor.h"
#include "journal/frame_effort.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>

#include "base/crc32c.h"

namespace kvmcdp::journal {
namespace {

// A payload of `raw` as a zstd frame of raw (stored) blocks: any zstd
// decoder reads it, and it costs no copy: `head`, after room for the frame
// header, gets the fixed bytes (RFC 8878: magic, a single-segment
// descriptor with a 4-byte content size, then a 3-byte header before each
// block of at most 128 KiB) and `iov` lists the payload's pieces, pointing
// into `raw` between them.  Returns the payload's size.
size_t store_frame(const ByteBuf& raw, ByteBuf* head, std::vector<iovec>* iov) {
  size_t n = raw.size();
  size_t blocks = n ? (n + ZSTD_BLOCKSIZE_MAX - 1) / ZSTD_BLOCKSIZE_MAX : 1;
  head->resize(kFrameHeaderSize + 9 + 3 * blocks);
  uint8_t* p = head->data() + kFrameHeaderSize;
  auto put32 = [&p](uint32_t v) {
    for (int i = 0; i < 4; i++) *p++ = uint8_t(v >> (8 * i));
  };
  put32(0xFD2FB528u);
  *p++ = 0xA0;  // content size in 4 bytes, single segment, no checksum
  put32(uint32_t(n));
  iov->clear();
  const uint8_t* piece = head->data() + kFrameHeaderSize;
  size_t done = 0;
  do {
    size_t block = std::min<size_t>(n - done, ZSTD_BLOCKSIZE_MAX);
    uint32_t bh = uint32_t(block) << 3 | (done + block == n ? 1u : 0u);  // type 0: raw
    *p++ = uint8_t(bh);
    *p++ = uint8_t(bh >> 8);
    *p++ = uint8_t(bh >> 16);
    iov->push_back({const_cast<uint8_t*>(piece), size_t(p - piece)});
    piece = p;
    if (block) iov->push_back({const_cast<uint8_t*>(raw.data() + done), block});
    done += block;
  } while (done < n);
  return head->size() - kFrameHeaderSize + n;
}

// Makes `raw` one frame, `iov` its bytes: encoded header + payload, in
// `out` when compressed, in `out` and `raw` when stored.
Status compress(ZSTD_CCtx* cctx, int level, const ByteBuf& raw, bool backlog, FrameHeader* h,
                ByteBuf* out, ByteBuf* probe, std::vector<iovec>* iov) {
  size_t n;
  uint32_t crc;
  Effort e = effort_for(cctx, level, raw, backlog, probe);
  if (e != Effort::kStore) {
    size_t bound = ZSTD_compressBound(raw.size());
    out->resize(kFrameHeaderSize + bound);
    uint8_t* payload = out->data() + kFrameHeaderSize;
    if (e == Effort::kFast) ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, kFastLevel);
    n = ZSTD_compress2(cctx, payload, bound, raw.data(), raw.size());
    if (e == Effort::kFast) ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
    if (ZSTD_isError(n))
      return {ErrorKind::kFailure, std::string("zstd: ") + ZSTD_getErrorName(n)};
    out->resize(kFrameHeaderSize + n);
    crc = crc32c(payload, n);
    *iov = {{out->data(), out->size()}};
  } else {
    n = store_frame(raw, out, iov);
    crc = 0;
    for (const iovec& v : *iov) crc = crc32c_extend(crc, v.iov_base, v.iov_len);
    // The frame header goes in front of the first piece, in the same buffer.
    (*iov)[0].iov_base = out->data();
    (*iov)[0].iov_len += kFrameHeaderSize;
  }
  h->payload_len = static_cast<uint32_t>(n);
  h->raw_len = static_cast<uint32_t>(raw.size());
  h->payload_crc = crc;
  encode_frame_header(*h, out->data());
  return Status::ok();
}

}  // namespace

FrameCompressor::FrameCompressor(int level, int zstd_workers, size_t threads, size_t max_in_flight,
                                 Sink sink, int nice)
    : level_(level),
      zstd_workers_(zstd_workers),
      nice_(nice),
      max_in_flight_(max_in_flight ? max_in_flight : 1),
      sink_(std::move(sink)) {
  for (size_t i = 0; i < (threads ? threads : 1); i++) threads_.emplace_back([this] { run(); });
}

FrameCompressor::~FrameCompressor() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

ByteBuf FrameCompressor::submit(ByteBuf&& raw, const FrameHeader& h) {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return undone_ < max_in_flight_; });
  jobs_.push_back(Job{std::move(raw), h});
  submitted_++;
  undone_++;
  ByteBuf next;
  if (!free_raw_.empty()) {
    next = std::move(free_raw_.back());
    free_raw_.pop_back();
    next.clear();
  }
  l.unlock();
  cv_.notify_all();
  return next;
}

Status FrameCompressor::drain() {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return undone_ == 0; });
  return error_;
}

uint64_t FrameCompressor::submitted() {
  std::lock_guard<std::mutex> l(mu_);
  return submitted_;
}

Status FrameCompressor::wait_sunk(uint64_t n) {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return stop_ || sunk_ >= n; });
  if (sunk_ < n) return {ErrorKind::kFailure, "journal writer stopped before the commit"};
  return error_;
}

void FrameCompressor::run() {
  // Compression is background work next to the guest's own I/O threads,
  // which share the host's cores: at a lower priority it yields to them
  // instead of stretching their latency.  Falling behind only queues
  // frames, and queued frames that compress poorly are then stored.
  if (nice_ > 0) (void)setpriority(PRIO_PROCESS, pid_t(syscall(SYS_gettid)), nice_);
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level_);
  if (zstd_workers_ > 0)  // ignored if libzstd lacks threads
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_nbWorkers, zstd_workers_);
  ByteBuf out, probe;  // this thread's compressed frame and probe, reused
  std::vector<iovec> iov;
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    cv_.wait(l, [&] { return stop_ || !jobs_.empty(); });
    if (stop_) break;
    Job j = std::move(jobs_.front());
    jobs_.pop_front();
    const uint64_t ticket = taken_++;
    const bool skip = !error_.is_ok();
    // Frames wait that no thread has taken, or records that the journal
    // has not taken yet.
    const bool backlog = !jobs_.empty() || source_ahead_.load(std::memory_order_relaxed);
    l.unlock();
    Status s = skip ? Status::ok() : compress(cctx, level_, j.raw, backlog, &j.h, &out, &probe, &iov);
    l.lock();
    // The sink takes frames in submission order, one at a time.
    cv_.wait(l, [&] { return stop_ || sunk_ == ticket; });
    if (stop_) break;
    if (s && error_.is_ok()) {
      l.unlock();
      s = sink_(j.h, iov.data(), iov.size());
      l.lock();
    }
    if (!s && error_.is_ok()) error_ = s;
    sunk_++;
    free_raw_.push_back(std::move(j.raw));
    undone_--;
    cv_.notify_all();
  }
  l.unlock();
  ZSTD_freeCCtx(cctx);
}

}  // namespace kvmcdp::journal
