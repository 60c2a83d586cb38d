// Reads a running VM's disk the way QEMU sees it, through a read-only
// export on QEMU's NBD server (mirror capture: what a discard left
// behind, and the ranges a dirty bitmap marks after a gap).  libnbd's
// asynchronous calls with a deadline: a read can wait on QEMU behind a
// drain that in turn waits for kvmcdp (see nbd_receiver.h), so nothing
// here may block for ever.  After a timeout the connection is in an
// unknown state and the reader refuses further work.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"

struct nbd_handle;

namespace kvmcdp {

struct DiskExtent {
  uint64_t offset = 0;
  uint64_t length = 0;
  bool set = false;  // base:allocation: reads as zeroes; a bitmap: dirty
};

class DiskReader {
 public:
  using Deadline = std::chrono::steady_clock::time_point;
  // `context`: the metadata context that extents() reports
  // ("base:allocation", or "qemu:dirty-bitmap:NAME").
  static Result<std::unique_ptr<DiskReader>> connect(const std::string& socket,
                                                     const std::string& export_name,
                                                     const std::string& context);
  // The same on an image served by a server it starts itself (`argv`,
  // qemu-nbd, socket-activated on a private socket): an export's built node.
  static Result<std::unique_ptr<DiskReader>> spawn(const std::vector<std::string>& argv,
                                                   const std::string& context);
  ~DiskReader();
  DiskReader(const DiskReader&) = delete;
  DiskReader& operator=(const DiskReader&) = delete;

  uint64_t size() const { return size_; }
  // The context's extents covering [offset, offset + length), merged where
  // neighbours agree.
  Result<std::vector<DiskExtent>> extents(uint64_t offset, uint64_t length, Deadline deadline);
  Status read(uint8_t* buf, uint64_t length, uint64_t offset, Deadline deadline);
  bool usable() const { return !broken_; }

 private:
  explicit DiskReader(nbd_handle* h) : h_(h) {}
  Status wait(int64_t cookie, Deadline deadline, const char* what);

  nbd_handle* h_;
  uint64_t size_ = 0;
  std::string context_;
  bool broken_ = false;
};

}  // namespace kvmcdp
