// Mirror capture's NBD server (nbd_receiver.cc) as QEMU's NBD client
// talks to it: the input is everything the client sends, handshake
// included.  A QEMU that a guest took over is such a client, and kvmcdp
// protect usually runs as root.  Beyond no crash, no sanitizer report and
// no hang: whatever the server journals reads back from the store, and no
// record reaches past the disk.
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>

#include "capture/nbd_receiver.h"
#include "fuzz_util.h"
#include "journal/journal_writer.h"
#include "store/journal_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmcdp;
  constexpr uint64_t kDisk = 1u << 20;
  if (size > (256u << 10)) return 0;
  static const std::string dir = fuzz::scratch_root() + "/nbd";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  // The server's replies (16 bytes for each request of at least 28) fit
  // in its send buffer: nobody reads them.
  int big = 1 << 20;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  fuzz::send_all_and_shut(sv[1], data, size);
  {
    journal::WriterOptions wo;
    wo.stream_id = 1;
    auto w = journal::JournalWriter::open(dir, wo);
    if (!w) std::abort();
    NbdReceiverOptions o;
    o.disk_size = kDisk;
    NbdReceiver rx(sv[0], w->get(), o);
    rx.start_at(0, false, 0);
    std::atomic<bool> stop{false};
    if (rx.handshake(1000)) (void)rx.run(stop);
    if (!(*w)->close()) std::abort();
  }
  auto r = journal::JournalReader::open(dir);
  if (!r) std::abort();
  Status read = (*r)->for_each_record(1, [&](const journal::RecordView& v) {
    bool data = v.type == RecordType::kWrite || v.type == RecordType::kWriteZeroes ||
                v.type == RecordType::kDiscard;
    if (data && (v.offset > kDisk || v.length > kDisk - v.offset)) std::abort();
    return true;
  });
  if (!read) std::abort();
  close(sv[0]);
  close(sv[1]);
  return 0;
}
