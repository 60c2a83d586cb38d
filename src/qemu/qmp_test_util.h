// A fake QMP peer for unit tests: a one-connection unix socket server that
// runs a script on the accepted connection, and the lines it says.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include <doctest/doctest.h>

#include "qemu/qmp_client.h"

namespace kvmcdp::qmp_testing {

// A one-connection server running `script` on the accepted socket.
class FakePeer {
 public:
  explicit FakePeer(std::function<void(int)> script) {
    char tmpl[] = "/tmp/kvmcdp-fakeqmp-XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/qmp.sock";
    listen_fd_ = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path_.c_str());
    REQUIRE(bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(listen(listen_fd_, 1) == 0);
    thread_ = std::thread([this, script] {
      int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) return;
      script(fd);
      close(fd);
    });
  }
  ~FakePeer() {
    shutdown(listen_fd_, SHUT_RDWR);
    thread_.join();
    close(listen_fd_);
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  std::string dir_, path_;
  int listen_fd_ = -1;
  std::thread thread_;
};

inline void say(int fd, const std::string& text) {
  REQUIRE(write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
}

inline std::string hear_line(int fd) {
  std::string line;
  char c;
  while (read(fd, &c, 1) == 1 && c != '\n') line += c;
  return line;
}

inline const char* kGreeting = R"({"QMP":{"version":{},"capabilities":[]}})" "\n";

// Greets and accepts capabilities, answering with the id it was given.
inline void handshake(int fd) {
  say(fd, kGreeting);
  json cap = json::parse(hear_line(fd));
  say(fd, json({{"return", json::object()}, {"id", cap["id"]}}).dump() + "\n");
}

}  // namespace kvmcdp::qmp_testing
