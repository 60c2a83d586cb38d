// kvmcdp export's NBD server (export/export_server.cc) as any client on
// its socket or TCP port talks to it: the input is everything the client
// sends, handshake included, against a writable export of a small store
// (base with holes, a journal of writes and zeroes).  Beyond no crash, no
// sanitizer report and no hang: the store is never written, so a fresh
// read-only image of the same point still reads exactly as before.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <thread>
#include <vector>

#include "export/export_server.h"
#include "export/point_image.h"
#include "fuzz_util.h"
#include "journal/journal_writer.h"
#include "store/manifest.h"
#include "store/store_view.h"

namespace {

using namespace kvmcdp;
constexpr uint64_t kDisk = 1u << 20;

// The store, made once: 1 MiB base, half of it holes; three records.
const std::string& store() {
  static const std::string dir = [] {
    std::string d = fuzz::scratch_root() + "/export-store";
    std::filesystem::create_directories(d);
    std::vector<uint8_t> base(kDisk / 2, 0x42);
    fuzz::write_file(d + "/base.raw", base.data(), base.size());
    if (truncate((d + "/base.raw").c_str(), kDisk) != 0) std::abort();
    journal::WriterOptions wo;
    wo.stream_id = 1;
    auto w = journal::JournalWriter::open(d, wo);
    if (!w) std::abort();
    Record r;
    r.seq = 1;
    r.time_ns = 1000;
    r.type = RecordType::kWrite;
    r.offset = 4096;
    r.length = 8192;
    r.data.assign(8192, 0x17);
    if (!(*w)->append(Record(r))) std::abort();
    r.seq = 2;
    r.type = RecordType::kWriteZeroes;
    r.offset = 0;
    r.length = 65536;
    r.data.clear();
    if (!(*w)->append(Record(r))) std::abort();
    r.seq = 3;
    r.type = RecordType::kWrite;
    r.offset = kDisk - 512;
    r.length = 512;
    r.data.assign(512, 0x99);
    if (!(*w)->append(Record(r))) std::abort();
    if (!(*w)->close()) std::abort();
    Manifest m;
    m.stream_id = 1;
    m.disk_size = kDisk;
    m.base_complete = true;
    m.base_complete_seq = 0;
    m.base_complete_time_ns = 1;
    if (!write_manifest(d, m)) std::abort();
    return d;
  }();
  return dir;
}

std::vector<uint8_t> read_all(StoreView& view, const std::string& work) {
  auto img = PointImage::open(view, 3, work, false);
  if (!img) std::abort();
  std::vector<uint8_t> all(kDisk);
  if (!(*img)->read(0, kDisk, all.data())) std::abort();
  return all;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (256u << 10)) return 0;
  static auto view = open_store_view(store());
  if (!view) std::abort();
  static const std::string work = fuzz::scratch_root() + "/export-work";
  std::filesystem::remove_all(work);
  std::filesystem::create_directories(work);
  static const std::vector<uint8_t> before = read_all(*view, work);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  int big = 1 << 20;  // the whole input fits before the server reads
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  // Replies (read data included) are drained on a thread: the server must
  // never wait on a client that does not read.
  std::thread drain([fd = sv[1]] {
    std::vector<uint8_t> sink(1 << 16);
    while (recv(fd, sink.data(), sink.size(), 0) > 0) {
    }
  });
  fuzz::send_all_and_shut(sv[1], data, size);
  {
    auto img = PointImage::open(*view, 3, work, true);
    if (!img) std::abort();
    ExportServerStats stats;
    serve_nbd_connection(sv[0], **img, "", &stats);
  }
  shutdown(sv[0], SHUT_RDWR);
  drain.join();
  close(sv[0]);
  close(sv[1]);
  if (read_all(*view, work) != before) std::abort();
  return 0;
}
