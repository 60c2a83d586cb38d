#include "store/frame_prefetcher.h"

namespace kvmcdp::journal {

FramePrefetcher::FramePrefetcher(JournalReader& reader, std::vector<size_t> order, size_t ahead)
    : reader_(reader), order_(std::move(order)), ahead_(ahead ? ahead : 1) {
  thread_ = std::thread([this] { run(); });
}

FramePrefetcher::~FramePrefetcher() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

FramePrefetcher::Frame* FramePrefetcher::next() {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return !ready_.empty() || finished_; });
  if (ready_.empty()) return nullptr;
  held_ = std::move(ready_.front());
  ready_.pop_front();
  l.unlock();
  cv_.notify_all();  // room for one more
  return held_.get();
}

void FramePrefetcher::release(Frame* f) {
  std::lock_guard<std::mutex> l(mu_);
  if (held_.get() == f) free_.push_back(std::move(held_));
}

void FramePrefetcher::run() {
  for (size_t k = 0; k < order_.size(); k++) {
    std::unique_ptr<Frame> f;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return stop_ || ready_.size() < ahead_; });
      if (stop_) break;
      if (!free_.empty()) {
        f = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (!f) f = std::make_unique<Frame>();
    f->index = order_[k];
    f->status = reader_.read_frame(f->index, &f->raw, &f->records);
    bool failed = !f->status.is_ok();
    {
      std::lock_guard<std::mutex> l(mu_);
      ready_.push_back(std::move(f));
    }
    cv_.notify_all();
    if (failed) break;  // nothing after a damaged frame is handed out
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    finished_ = true;
  }
  cv_.notify_all();
}

}  // namespace kvmcdp::journal
