#include "capture/mirror_resync.h"

#include <algorithm>

#include "kvmcdp/wire_format.h"

namespace kvmcdp {

void MirrorResync::stop() {
  {
    std::lock_guard l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void MirrorResync::add(uint64_t offset, uint64_t length) {
  {
    std::lock_guard l(mu_);
    ranges_.emplace_back(offset, length);
  }
  cv_.notify_all();
}

Status MirrorResync::error() const {
  std::lock_guard l(mu_);
  return error_;
}

uint64_t MirrorResync::resent_bytes() const {
  std::lock_guard l(mu_);
  return resent_;
}

void MirrorResync::loop() {
  for (;;) {
    std::pair<uint64_t, uint64_t> r;
    {
      std::unique_lock l(mu_);
      cv_.wait(l, [&] { return stopping_ || (!ranges_.empty() && error_.is_ok()); });
      if (stopping_) return;
      r = ranges_.front();
      ranges_.pop_front();
    }
    Status s = resend(r.first, r.second);
    if (!s) {
      std::lock_guard l(mu_);
      error_ = s;
    }
  }
}

// Chunks of at most one journal record, each read after noting the last
// seq appended, so the receiver can tell whether a guest write came after.
Status MirrorResync::resend(uint64_t offset, uint64_t length) {
  const uint64_t end = std::min(offset + length, reader_->size());
  if (offset >= end) {
    rx_->submit(ResyncItem{true, offset, 0, {}, rx_->appended_seq(), true});
    return Status::ok();
  }
  for (uint64_t at = offset; at < end;) {
    {
      std::lock_guard l(mu_);
      if (stopping_) return Status::ok();
    }
    uint64_t n = std::min<uint64_t>(end - at, wire::kMaxPayload);
    uint64_t after = rx_->appended_seq();
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    auto extents = reader_->extents(at, n, deadline);
    if (!extents) return extents.status();
    for (size_t i = 0; i < extents->size(); ++i) {
      const DiskExtent& e = (*extents)[i];
      ResyncItem item{e.set, e.offset, e.length, {}, after,
                      i + 1 == extents->size() && at + n >= end};
      if (!e.set) {
        item.data.resize(e.length);
        if (Status s = reader_->read(item.data.data(), e.length, e.offset, deadline); !s) return s;
      }
      {
        std::lock_guard l(mu_);
        resent_ += e.length;
      }
      rx_->submit(std::move(item));
    }
    at += n;
  }
  return Status::ok();
}

}  // namespace kvmcdp
