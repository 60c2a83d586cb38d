// The resync of mirror capture: a thread that reads ranges of the disk
// through QEMU's NBD export and hands them to the NbdReceiver, which
// journals them between the guest's writes (or sends a chunk back to be
// read again if a guest write reached it meanwhile: nbd_receiver.h).
// Ranges come from QEMU's dirty bitmap after a gap, from the whole disk
// when the bitmap is gone, and from discards the receiver could not read
// back in time.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

#include "base/status.h"
#include "capture/disk_reader.h"
#include "capture/nbd_receiver.h"

namespace kvmcdp {

class MirrorResync {
 public:
  MirrorResync(NbdReceiver* rx, std::unique_ptr<DiskReader> reader)
      : rx_(rx), reader_(std::move(reader)) {}
  ~MirrorResync() { stop(); }
  MirrorResync(const MirrorResync&) = delete;
  MirrorResync& operator=(const MirrorResync&) = delete;

  void start() { thread_ = std::thread([this] { loop(); }); }
  void stop();
  // Thread-safe; the receiver's resync sink.
  void add(uint64_t offset, uint64_t length);
  // A read that failed: the gap stays open (protect reports it).
  Status error() const;
  uint64_t resent_bytes() const;

 private:
  void loop();
  Status resend(uint64_t offset, uint64_t length);

  NbdReceiver* rx_;
  std::unique_ptr<DiskReader> reader_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<uint64_t, uint64_t>> ranges_;
  bool stopping_ = false;
  Status error_;
  uint64_t resent_ = 0;
  std::thread thread_;
};

}  // namespace kvmcdp
