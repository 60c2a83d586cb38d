// Starts the kernel's writeback of a file's dirty pages now and then while
// another process (qemu-nbd) is still filling it.  A restore or build
// through qemu-nbd ends with a flush that makes the image durable; on an
// image of many small scattered writes (a qcow2 overlay with one 4 KiB
// subcluster per 128 KiB cluster) writing those pages back is a good part
// of the whole run, and started early it overlaps with the writes instead
// of following them.  Only a hint: it never waits for the writeback and
// the flush stays what makes the file durable.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace kvmcdp {

class WritebackKicker {
 public:
  // Does nothing if `path` cannot be opened.
  WritebackKicker(const std::string& path, std::chrono::milliseconds period);
  ~WritebackKicker();  // stops the thread
  WritebackKicker(const WritebackKicker&) = delete;
  WritebackKicker& operator=(const WritebackKicker&) = delete;

 private:
  void run(std::chrono::milliseconds period);

  int fd_ = -1;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace kvmcdp
