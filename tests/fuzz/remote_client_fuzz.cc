// The client's side of the remote protocol (remote_link.cc, remote_io.cc):
// the input is everything a server answers, from CHALLENGE on.  A server
// thread accepts the client's TCP connection, sends the input and reads
// whatever the client says until it hangs up.  After a login the client
// reads the server's later messages (ACK, BASE_ACK, ERROR) as the shipper
// does: header first, and an ERROR's reason made printable.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include <fmt/format.h>

#include "fuzz_util.h"
#include "remote/remote_link.h"
#include "remote/remote_url.h"

namespace {

int listener(int* port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 4) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    std::abort();
  *port = ntohs(a.sin_port);
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmcdp;
  static int port = 0;
  static int lfd = listener(&port);
  if (size > (1u << 20)) return 0;
  std::thread server([&] {
    int c = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) return;
    fuzz::send_all_and_shut(c, data, size);
    fuzz::drain(c);
    close(c);
  });
  auto url = parse_remote_url(fmt::format("tcp://127.0.0.1:{}/{}", port, fuzz::kStoreName));
  if (!url) std::abort();
  RemoteOptions o;
  o.url = *url;
  o.secret = fuzz::kSecret;
  Manifest m;
  m.stream_id = 0x1234;
  m.disk_size = 1 << 20;
  bool refused = false;
  auto link = RemoteLink::open(o, &m, 5000, &refused);
  if (link) {
    remote::Message msg;
    for (;;) {
      auto got = (*link)->conn().receive(&msg, 5000);
      if (!got || !*got) break;
      if (msg.h.type == static_cast<uint16_t>(remote::MsgType::kError)) (void)msg.reason();
    }
  }
  link = Status(ErrorKind::kFailure, "done");  // closes the connection
  server.join();
  return 0;
}
