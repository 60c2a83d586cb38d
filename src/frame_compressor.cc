#include "frame_compressor.h"

#include <zstd.h>

#include "crc32c.h"

namespace kvmcdp::journal {

FrameCompressor::FrameCompressor(int level, int zstd_workers, size_t max_in_flight, Sink sink)
    : cctx_(ZSTD_createCCtx()),
      max_in_flight_(max_in_flight ? max_in_flight : 1),
      sink_(std::move(sink)) {
  auto* c = static_cast<ZSTD_CCtx*>(cctx_);
  ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
  if (zstd_workers > 0)  // ignored if libzstd lacks threads
    ZSTD_CCtx_setParameter(c, ZSTD_c_nbWorkers, zstd_workers);
  thread_ = std::thread([this] { run(); });
}

FrameCompressor::~FrameCompressor() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  thread_.join();
  ZSTD_freeCCtx(static_cast<ZSTD_CCtx*>(cctx_));
}

ByteBuf FrameCompressor::submit(ByteBuf&& raw, const FrameHeader& h) {
  std::unique_lock<std::mutex> l(mu_);
  done_cv_.wait(l, [&] { return undone_ < max_in_flight_; });
  jobs_.push_back(Job{std::move(raw), h});
  undone_++;
  ByteBuf next;
  if (!free_raw_.empty()) {
    next = std::move(free_raw_.back());
    free_raw_.pop_back();
    next.clear();
  }
  l.unlock();
  work_cv_.notify_one();
  return next;
}

Status FrameCompressor::drain() {
  std::unique_lock<std::mutex> l(mu_);
  done_cv_.wait(l, [&] { return undone_ == 0; });
  return error_;
}

void FrameCompressor::run() {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    work_cv_.wait(l, [&] { return stop_ || !jobs_.empty(); });
    if (stop_) return;
    Job j = std::move(jobs_.front());
    jobs_.pop_front();
    bool skip = !error_;
    l.unlock();
    // Only this thread sets error_, so reading it unlocked above is a
    // snapshot of its own last verdict.
    Status s = Status::ok();
    if (!skip) {
      s = compress(j.raw, &j.h);
      if (s) s = sink_(j.h, out_.data(), out_.size());
    }
    l.lock();
    if (!s && error_) error_ = s;
    free_raw_.push_back(std::move(j.raw));
    undone_--;
    done_cv_.notify_all();
  }
}

Status FrameCompressor::compress(const ByteBuf& raw, FrameHeader* h) {
  size_t bound = ZSTD_compressBound(raw.size());
  out_.resize(kFrameHeaderSize + bound);
  uint8_t* payload = out_.data() + kFrameHeaderSize;
  size_t n = ZSTD_compress2(static_cast<ZSTD_CCtx*>(cctx_), payload, bound, raw.data(),
                            raw.size());
  if (ZSTD_isError(n))
    return {ErrorKind::kFailure, std::string("zstd: ") + ZSTD_getErrorName(n)};
  h->payload_len = static_cast<uint32_t>(n);
  h->raw_len = static_cast<uint32_t>(raw.size());
  h->payload_crc = crc32c(payload, n);
  encode_frame_header(*h, out_.data());
  out_.resize(kFrameHeaderSize + n);
  return Status::ok();
}

}  // namespace kvmcdp::journal
