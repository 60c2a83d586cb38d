#include "frame_compressor.h"

#include <zstd.h>

#include "crc32c.h"

namespace kvmcdp::journal {

FrameCompressor::FrameCompressor(int level, int zstd_workers, size_t max_in_flight)
    : cctx_(ZSTD_createCCtx()), max_in_flight_(max_in_flight ? max_in_flight : 1) {
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
  std::unique_ptr<Job> j;
  if (!free_jobs_.empty()) {
    j = std::move(free_jobs_.back());
    free_jobs_.pop_back();
  } else {
    j = std::make_unique<Job>();
  }
  j->raw = std::move(raw);
  j->h = h;
  j->error.clear();
  jobs_.push_back(std::move(j));
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

Status FrameCompressor::drain(const FrameFn& fn) {
  std::unique_lock<std::mutex> l(mu_);
  done_cv_.wait(l, [&] { return undone_ == 0; });
  // Every job is done and only this thread submits, so the worker does not
  // touch jobs_ until the next submit: the frames can be handed out unlocked.
  std::deque<std::unique_ptr<Job>> jobs;
  jobs.swap(jobs_);
  next_ = 0;
  l.unlock();
  Status result = Status::ok();
  for (const auto& j : jobs)
    if (!j->error.empty()) {
      result = Status(ErrorKind::kFailure, "zstd: " + j->error);
      break;
    }
  if (result)
    for (const auto& j : jobs) fn(j->h, j->out.data(), j->out.size());
  l.lock();
  for (auto& j : jobs) free_jobs_.push_back(std::move(j));
  return result;
}

void FrameCompressor::run() {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    work_cv_.wait(l, [&] { return stop_ || next_ < jobs_.size(); });
    if (stop_) return;
    Job* j = jobs_[next_++].get();  // stays put: jobs_ holds pointers
    l.unlock();
    compress(*j);
    l.lock();
    free_raw_.push_back(std::move(j->raw));
    undone_--;
    done_cv_.notify_all();
  }
}

void FrameCompressor::compress(Job& j) {
  const ByteBuf& raw = j.raw;
  size_t bound = ZSTD_compressBound(raw.size());
  j.out.resize(kFrameHeaderSize + bound);
  uint8_t* payload = j.out.data() + kFrameHeaderSize;
  size_t n = ZSTD_compress2(static_cast<ZSTD_CCtx*>(cctx_), payload, bound, raw.data(),
                            raw.size());
  if (ZSTD_isError(n)) {
    j.error = ZSTD_getErrorName(n);
    j.out.clear();
    return;
  }
  j.h.payload_len = static_cast<uint32_t>(n);
  j.h.raw_len = static_cast<uint32_t>(raw.size());
  j.h.payload_crc = crc32c(payload, n);
  encode_frame_header(j.h, j.out.data());
  j.out.resize(kFrameHeaderSize + n);
}

}  // namespace kvmcdp::journal
