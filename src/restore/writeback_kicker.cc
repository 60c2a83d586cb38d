#include "restore/writeback_kicker.h"

#include <fcntl.h>
#include <unistd.h>

namespace kvmcdp {

WritebackKicker::WritebackKicker(const std::string& path, std::chrono::milliseconds period) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ >= 0) thread_ = std::thread([this, period] { run(period); });
}

WritebackKicker::~WritebackKicker() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) ::close(fd_);
}

void WritebackKicker::run(std::chrono::milliseconds period) {
  std::unique_lock<std::mutex> l(mu_);
  while (!cv_.wait_for(l, period, [this] { return stop_; })) {
    l.unlock();
    // SYNC_FILE_RANGE_WRITE alone: start writeback of what is dirty, do
    // not wait for it (the final flush does).  Errors are left to it too.
    (void)::sync_file_range(fd_, 0, 0, SYNC_FILE_RANGE_WRITE);
    l.lock();
  }
}

}  // namespace kvmcdp
