#include "capture/disk_reader.h"

#include <libnbd.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace kvmcdp {
namespace {

struct ExtentSink {
  std::string context;
  std::vector<DiskExtent>* out;
  uint64_t flag;
};

int on_extents(void* user, const char* metacontext, uint64_t offset, uint32_t* entries,
               size_t n, int* /*error*/) {
  auto* sink = static_cast<ExtentSink*>(user);
  if (sink->context != metacontext) return 0;
  for (size_t i = 0; i + 1 < n; i += 2) {
    bool set = entries[i + 1] & sink->flag;
    if (!sink->out->empty() && sink->out->back().set == set &&
        sink->out->back().offset + sink->out->back().length == offset)
      sink->out->back().length += entries[i];
    else
      sink->out->push_back({offset, entries[i], set});
    offset += entries[i];
  }
  return 0;
}

}  // namespace

Result<std::unique_ptr<DiskReader>> DiskReader::connect(const std::string& socket,
                                                        const std::string& export_name,
                                                        const std::string& context) {
  nbd_handle* h = nbd_create();
  if (!h) return Status(ErrorKind::kFailure, fmt::format("libnbd: {}", nbd_get_error()));
  std::unique_ptr<DiskReader> r(new DiskReader(h));
  r->context_ = context;
  if (nbd_set_export_name(h, export_name.c_str()) == -1 ||
      nbd_add_meta_context(h, context.c_str()) == -1 || nbd_connect_unix(h, socket.c_str()) == -1)
    return Status(ErrorKind::kQemu,
                  fmt::format("reading the disk through QEMU's NBD export: {}", nbd_get_error()));
  if (nbd_can_meta_context(h, context.c_str()) != 1)
    return Status(ErrorKind::kQemu,
                  fmt::format("QEMU's NBD export does not offer the context {}", context));
  int64_t size = nbd_get_size(h);
  if (size < 0) return Status(ErrorKind::kQemu, fmt::format("NBD export size: {}", nbd_get_error()));
  r->size_ = static_cast<uint64_t>(size);
  return r;
}

Result<std::unique_ptr<DiskReader>> DiskReader::spawn(const std::vector<std::string>& argv,
                                                      const std::string& context) {
  nbd_handle* h = nbd_create();
  if (!h) return Status(ErrorKind::kFailure, fmt::format("libnbd: {}", nbd_get_error()));
  std::unique_ptr<DiskReader> r(new DiskReader(h));
  r->context_ = context;
  std::vector<std::string> args = argv;
  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  if (nbd_add_meta_context(h, context.c_str()) == -1 ||
      nbd_connect_systemd_socket_activation(h, cargs.data()) == -1)
    return Status(ErrorKind::kQemu, fmt::format("{}: {}", argv[0], nbd_get_error()));
  if (nbd_can_meta_context(h, context.c_str()) != 1)
    return Status(ErrorKind::kQemu, fmt::format("{} does not offer the context {}", argv[0], context));
  int64_t size = nbd_get_size(h);
  if (size < 0) return Status(ErrorKind::kQemu, fmt::format("NBD export size: {}", nbd_get_error()));
  r->size_ = static_cast<uint64_t>(size);
  return r;
}

DiskReader::~DiskReader() {
  // A timed-out command may still be in flight: close without waiting.
  if (!broken_) nbd_shutdown(h_, 0);
  nbd_close(h_);
}

Status DiskReader::wait(int64_t cookie, Deadline deadline, const char* what) {
  if (cookie == -1) {
    broken_ = true;
    return Status(ErrorKind::kQemu, fmt::format("NBD {}: {}", what, nbd_get_error()));
  }
  for (;;) {
    int done = nbd_aio_command_completed(h_, cookie);
    if (done == 1) return Status::ok();
    if (done == -1)
      return Status(ErrorKind::kQemu, fmt::format("NBD {}: {}", what, nbd_get_error()));
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 || nbd_poll(h_, static_cast<int>(std::max<int64_t>(1, left.count()))) == 0) {
      if (nbd_aio_command_completed(h_, cookie) == 1) return Status::ok();
      broken_ = true;
      return Status(ErrorKind::kQemu, fmt::format("NBD {}: QEMU did not answer in time", what),
                    Cause::kTimeout);
    }
  }
}

Result<std::vector<DiskExtent>> DiskReader::extents(uint64_t offset, uint64_t length,
                                                    Deadline deadline) {
  std::vector<DiskExtent> out;
  const uint64_t flag = context_ == "base:allocation" ? LIBNBD_STATE_ZERO : 1;
  uint64_t end = std::min(offset + length, size_);
  while (offset < end) {
    if (broken_) return Status(ErrorKind::kQemu, "the NBD reader failed before");
    ExtentSink sink{context_, &out, flag};
    size_t before = out.size();
    // A server answers for a prefix of the range: ask again from its end.
    uint64_t count = std::min<uint64_t>(end - offset, 1u << 30);
    int64_t cookie = nbd_aio_block_status(h_, count, offset,
                                          nbd_extent_callback{on_extents, &sink, nullptr},
                                          NBD_NULL_COMPLETION, 0);
    if (Status s = wait(cookie, deadline, "block status"); !s) return s;
    if (out.size() == before && (out.empty() || out.back().offset + out.back().length <= offset))
      return Status(ErrorKind::kQemu, "NBD block status answered nothing");
    offset = out.back().offset + out.back().length;
  }
  if (!out.empty() && out.back().offset + out.back().length > end)
    out.back().length = end - out.back().offset;
  return out;
}

Status DiskReader::read(uint8_t* buf, uint64_t length, uint64_t offset, Deadline deadline) {
  if (broken_) return Status(ErrorKind::kQemu, "the NBD reader failed before");
  int64_t cookie = nbd_aio_pread(h_, buf, length, offset, NBD_NULL_COMPLETION, 0);
  return wait(cookie, deadline, "read");
}

}  // namespace kvmcdp
