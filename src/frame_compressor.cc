#include "frame_compressor.h"

#include <zstd.h>

#include "crc32c.h"

namespace kvmcdp::journal {
namespace {

// Compresses `raw` into `out` as one frame: encoded header + payload.
Status compress(ZSTD_CCtx* cctx, const ByteBuf& raw, FrameHeader* h, ByteBuf* out) {
  size_t bound = ZSTD_compressBound(raw.size());
  out->resize(kFrameHeaderSize + bound);
  uint8_t* payload = out->data() + kFrameHeaderSize;
  size_t n = ZSTD_compress2(cctx, payload, bound, raw.data(), raw.size());
  if (ZSTD_isError(n)) return {ErrorKind::kFailure, std::string("zstd: ") + ZSTD_getErrorName(n)};
  h->payload_len = static_cast<uint32_t>(n);
  h->raw_len = static_cast<uint32_t>(raw.size());
  h->payload_crc = crc32c(payload, n);
  encode_frame_header(*h, out->data());
  out->resize(kFrameHeaderSize + n);
  return Status::ok();
}

}  // namespace

FrameCompressor::FrameCompressor(int level, int zstd_workers, size_t threads, size_t max_in_flight,
                                 Sink sink)
    : level_(level),
      zstd_workers_(zstd_workers),
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

void FrameCompressor::run() {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level_);
  if (zstd_workers_ > 0)  // ignored if libzstd lacks threads
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_nbWorkers, zstd_workers_);
  ByteBuf out;  // this thread's compressed frame, reused
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    cv_.wait(l, [&] { return stop_ || !jobs_.empty(); });
    if (stop_) break;
    Job j = std::move(jobs_.front());
    jobs_.pop_front();
    const uint64_t ticket = taken_++;
    const bool skip = !error_.is_ok();
    l.unlock();
    Status s = skip ? Status::ok() : compress(cctx, j.raw, &j.h, &out);
    l.lock();
    // The sink takes frames in submission order, one at a time.
    cv_.wait(l, [&] { return stop_ || sunk_ == ticket; });
    if (stop_) break;
    if (s && error_.is_ok()) {
      l.unlock();
      s = sink_(j.h, out.data(), out.size());
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
