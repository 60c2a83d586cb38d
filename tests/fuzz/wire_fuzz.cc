// The filter's stream as `kvmcdp protect` reads it (wire_io.cc, the
// receiver's loop in receiver.cc): the input is everything the cdp filter
// sends.  Messages are cut out of the socket by the receiver's
// MessageReader and turned into journal records with the same
// journal::view_of the receiver hands to the journal writer; every record
// accepted from the wire must then parse back out of its journal bytes
// unchanged, or restore would read something else than what was written.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "fuzz_util.h"
#include "journal/journal_codec.h"
#include "capture/wire_io.h"

namespace {

void check_round_trip(const kvmcdp::journal::RecordView& v) {
  using namespace kvmcdp::journal;
  std::vector<uint8_t> raw(kRecordHeaderSize + v.data_len);
  encode_record_header(v, raw.data());
  if (v.data_len) std::memcpy(raw.data() + kRecordHeaderSize, v.data, v.data_len);
  std::vector<RecordView> back;
  auto err = parse_records(raw.data(), raw.size(), &back);
  if (err) return;  // refused when read back: damage, reported, never misread
  if (back.size() != 1 || back[0].seq != v.seq || back[0].time_ns != v.time_ns ||
      back[0].type != v.type || back[0].flags != v.flags || back[0].offset != v.offset ||
      back[0].length != v.length || back[0].data_len != v.data_len ||
      (v.data_len && std::memcmp(back[0].data, v.data, v.data_len) != 0))
    std::abort();
  (void)back[0].to_record();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmcdp;
  if (size > (256u << 10)) return 0;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  int big = 1 << 20;
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  fuzz::send_all_and_shut(sv[1], data, size);
  {
    // Larger than the input, so it never fills (see MessageReader), and
    // no larger: allocating the receiver's 8 MiB for every input would
    // be most of the fuzzer's time.
    wire::MessageReader reader(sv[0], size + wire::kHeaderSize);
    uint64_t last_seq = 0;
    bool hello = false;
    for (bool closed = false; !closed;) {
      wire::MsgHeader h{};
      const uint8_t* payload = nullptr;
      for (;;) {
        auto got = reader.next(&h, &payload);
        if (!got) goto out;  // refused: the receiver ends the stream
        if (!*got) break;
        if (!hello) {
          // The receiver's handshake: the first message must be HELLO.
          if (h.type != static_cast<uint16_t>(wire::MsgType::kHello) || h.aux != wire::kVersion)
            goto out;
          hello = true;
          std::string node(reinterpret_cast<const char*>(payload), h.payload_len);
          continue;
        }
        if (h.type == static_cast<uint16_t>(wire::MsgType::kHello) || h.seq <= last_seq) continue;
        last_seq = h.seq;
        check_round_trip(journal::view_of(h, payload));
        (void)wire::to_record(h, payload);
      }
      auto r = reader.fill();
      if (!r) break;
      closed = *r == wire::MessageReader::Next::kClosed;
    }
  out:
    (void)reader.buffered_message();
  }
  close(sv[0]);
  close(sv[1]);
  return 0;
}
