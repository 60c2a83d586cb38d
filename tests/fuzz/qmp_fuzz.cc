// The QMP client's reader (qmp_client.cc): the input is everything QEMU
// says, from the greeting on.  A thread plays QEMU on a unix socket; the
// client connects (greeting, qmp_capabilities), runs a command and looks
// for events, as kvmcdp does.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <thread>

#include "fuzz_util.h"
#include "qemu/qmp_client.h"

namespace {

int listener(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 4) != 0)
    std::abort();
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvmcdp;
  static const std::string path = fuzz::scratch_root() + "/qmp.sock";
  static int lfd = listener(path);
  if (size > (1u << 20)) return 0;
  std::thread qemu([&] {
    int c = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) return;
    fuzz::send_all_and_shut(c, data, size);
    fuzz::drain(c);
    close(c);
  });
  {
    auto client = QmpClient::connect(path, Millis(5000));
    if (client) {
      QmpReply r = (*client)->execute("query-cdp", {{"id", "drive0"}}, Millis(5000));
      (void)r.status();
      (void)(*client)->next_event(Millis(0));
      (void)(*client)->wait_event("BLOCK_JOB_COMPLETED", Millis(0));
    }
  }
  qemu.join();
  return 0;
}
