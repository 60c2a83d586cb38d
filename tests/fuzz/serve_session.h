// Runs one `kvmcdp serve` connection in process over a socketpair: the
// input is everything the client sends, then the client stops sending.
// The store is reset after a session that logged in, so each input starts
// from the same state.
#pragma once

#include <sys/socket.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "remote/remote_server.h"

namespace kvmcdp::fuzz {

// Everything the client sends must fit the socket's buffer, since it is
// written before the server runs (one thread, reproducible).
inline constexpr size_t kMaxClientBytes = 160u << 10;

inline void serve_bytes(const std::vector<uint8_t>& in) {
  static std::string root = fresh_store_root();
  if (in.size() > kMaxClientBytes) return;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  int big = 1 << 20;
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  send_all_and_shut(sv[1], in.data(), in.size());
  bool logged_in = false;
  {
    remote::Conn conn(sv[0], sv[0]);
    ServeConfig cfg;
    cfg.store_root = root;
    cfg.peer = "fuzz";
    cfg.authenticated = [&] { logged_in = true; };
    (void)serve_connection(conn, cfg);
  }
  close(sv[1]);
  if (logged_in) fresh_store_root();
}

}  // namespace kvmcdp::fuzz
