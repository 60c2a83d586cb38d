#include "remote/remote_link.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/fsutil.h"
#include "base/json_field.h"
#include "remote/remote_auth.h"
#include "remote/remote_tls.h"

namespace kvmcdp {

using nlohmann::json;
using remote::MsgType;

namespace {

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

Result<int> tcp_connect(const RemoteUrl& u, int timeout_ms) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int e = getaddrinfo(u.host.c_str(), u.port.c_str(), &hints, &res))
    return Status(ErrorKind::kFailure, fmt::format("{}: {}", u.host, gai_strerror(e)));
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> hold(res, freeaddrinfo);
  std::string last = "no address";
  for (addrinfo* a = res; a; a = a->ai_next) {
    fsutil::Fd fd(socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd.valid()) continue;
    if (connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
      last = std::strerror(errno);
      continue;
    }
    pollfd p{fd.get(), POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof err;
    if (poll(&p, 1, timeout_ms) != 1) {
      last = "timed out";
      continue;
    }
    getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
      last = std::strerror(err);
      continue;
    }
    int on = 1;
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    setsockopt(fd.get(), SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    return fd.release();
  }
  return Status(ErrorKind::kFailure,
                fmt::format("cannot connect to {}:{}: {}", u.host, u.port, last));
}

// ssh with its stdin and stdout on one end of a socketpair.  BatchMode:
// a daemon has nobody to type a password; ServerAlive: a dead link is
// noticed in seconds, not at the next TCP timeout.
Result<int> ssh_spawn(const RemoteOptions& o, pid_t* pid) {
  std::vector<std::string> argv;
  std::istringstream words(o.rsh);
  for (std::string w; words >> w;) argv.push_back(w);
  if (argv.empty()) return Status(ErrorKind::kUsage, "the ssh command is empty");
  for (const char* opt : {"BatchMode=yes", "ServerAliveInterval=10", "ServerAliveCountMax=3"}) {
    argv.push_back("-o");
    argv.push_back(opt);
  }
  if (!o.url.port.empty()) {
    argv.push_back("-p");
    argv.push_back(o.url.port);
  }
  argv.push_back(o.url.user.empty() ? o.url.host : o.url.user + "@" + o.url.host);
  argv.push_back(fmt::format("{} serve --stdio {}", shell_quote(o.remote_path),
                             shell_quote(o.url.path)));
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("socketpair", ""));
  pid_t child = fork();
  if (child < 0) return Status(ErrorKind::kFailure, fsutil::errno_message("fork", ""));
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    dup2(sv[1], 0);
    dup2(sv[1], 1);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execvp(args[0], args.data());
    std::fprintf(stderr, "kvmcdp: error: cannot run %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  close(sv[1]);
  *pid = child;
  return sv[0];
}

// Anything but a dropped or silent connection is the server (or whatever
// answered) saying no, and retrying will not change it.
bool says_no(const Status& st) {
  Cause why = st.cause();
  return why != Cause::kPeerClosed && why != Cause::kTimeout && why != Cause::kConnectionLost;
}

// tcp:// beyond this machine sends the disk's data readable by anyone on
// the way: allowed (the server had to be told to listen so), said once.
void warn_cleartext(int fd, const RemoteUrl& u) {
  static std::atomic<bool> said{false};
  sockaddr_storage sa{};
  socklen_t len = sizeof sa;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0 ||
      remote::is_loopback(reinterpret_cast<sockaddr*>(&sa)) || said.exchange(true))
    return;
  std::fprintf(stderr,
               "kvmcdp: warning: %s is not encrypted: the disk's data crosses the network "
               "readable; use tls:// with --server-fingerprint\n",
               u.to_string().c_str());
}

Result<ServerState> hello(remote::Conn& c, const RemoteOptions& o, int timeout_ms) {
  std::string store = o.url.served() ? o.url.path : "";
  std::string nonce = remote::random_hex(16);
  json h = {{"store", store}, {"nonce", nonce}};
  if (Status s = c.send(MsgType::kHello, remote::kVersion, 0, h.dump()); !s) return s;
  auto ch = c.expect(MsgType::kChallenge, timeout_ms);
  if (!ch) return ch.status();
  auto cj = json_field::parse_object(ch->text(), "challenge");
  if (!cj) return Status(ErrorKind::kFailure, "remote: " + cj.status().message());
  auto auth_field = json_field::get_string(*cj, "auth", "challenge");
  if (!auth_field) return Status(ErrorKind::kFailure, "remote: " + auth_field.status().message());
  const std::string& auth = *auth_field;
  // Only a secret challenge needs the server's nonce.
  auto nonce_field = json_field::get_string(*cj, "nonce", "challenge");
  std::string server_nonce = nonce_field ? *nonce_field : "";
  bool secret = auth == "secret";
  if (secret && o.secret.empty())
    return Status(ErrorKind::kUsage, "the server wants the store's secret: --secret-file");
  if (!secret && auth != "none")
    return Status(ErrorKind::kFailure, "remote: the server offers no authentication kvmcdp knows");
  if (!secret && o.url.served())
    return Status(ErrorKind::kFailure, "remote: a tcp server must authenticate the store");
  json a = {{"proof", secret ? remote::auth_proof(o.secret, "kvmcdp-client", store, nonce,
                                                  server_nonce)
                             : ""}};
  if (Status s = c.send(MsgType::kAuth, 0, 0, a.dump()); !s) return s;
  auto w = c.expect(MsgType::kWelcome, timeout_ms);
  if (!w) return w.status();
  auto wj = json_field::parse_object(w->text(), "welcome");
  if (!wj) return Status(ErrorKind::kFailure, "remote: " + wj.status().message());
  // The server proves it holds the secret too: a stolen address cannot
  // collect a VM's disk by posing as its backup server.
  if (secret) {
    auto proof = json_field::get_string(*wj, "proof", "welcome");
    if (!proof || !remote::proofs_equal(*proof, remote::auth_proof(o.secret, "kvmcdp-server",
                                                                   store, nonce, server_nonce)))
      return Status(ErrorKind::kFailure, "remote: the server could not prove it holds the secret");
  }
  auto st = json_field::get_object(*wj, "state", "welcome");
  if (!st) return Status(ErrorKind::kFailure, "remote: " + st.status().message());
  const char* what = "welcome state";
  ServerState s;
  Status bad = Status::ok();
  auto take = [&](auto got, auto* out) {
    if (!bad) return;
    if (got) *out = *got;
    else bad = got.status();
  };
  take(json_field::get_u64(*st, "segment", what), &s.segment);
  take(json_field::get_u64(*st, "size", what), &s.size);
  take(json_field::get_bool(*st, "sealed", what), &s.sealed);
  take(json_field::get_u64(*st, "last_seq", what), &s.last_seq);
  take(json_field::get_u64(*st, "last_ns", what), &s.last_ns);
  take(json_field::get_string(*st, "stream_id", what), &s.stream_id);
  take(json_field::get_bool(*st, "base_complete", what), &s.base_complete);
  if (!bad) return Status(ErrorKind::kFailure, "remote: " + bad.message());
  return s;
}

}  // namespace

Result<std::unique_ptr<RemoteLink>> RemoteLink::open(const RemoteOptions& o,
                                                     const Manifest* manifest, int timeout_ms,
                                                     bool* refused) {
  std::unique_ptr<RemoteLink> link(new RemoteLink());
  Result<int> fd = o.url.served() ? tcp_connect(o.url, timeout_ms)
                                  : ssh_spawn(o, &link->ssh_pid_);
  if (!fd) return fd.status();
  if (o.url.kind == RemoteUrl::Kind::kTls) {
    auto t = remote::tls_connect(*fd, o.server_fingerprint,
                                 fmt::format("{}:{}", o.url.host, o.url.port), timeout_ms);
    if (!t) {
      if (refused) *refused = says_no(t.status());
      return t.status();
    }
    link->conn_ = std::make_unique<remote::Conn>(std::move(*t));
  } else {
    if (o.url.kind == RemoteUrl::Kind::kTcp) warn_cleartext(*fd, o.url);
    link->conn_ = std::make_unique<remote::Conn>(*fd, *fd);
  }
  auto st = hello(*link->conn_, o, timeout_ms);
  if (!st) {
    if (refused) *refused = says_no(st.status());
    return st.status();
  }
  link->state_ = *st;
  if (manifest) {
    if (Status s = link->conn_->send(MsgType::kManifest, 0, 0, manifest_to_json(*manifest)); !s)
      return s;
  }
  return link;
}

RemoteLink::~RemoteLink() {
  conn_.reset();  // closing the socket ends ssh and the remote serve
  if (ssh_pid_ > 0) {
    for (int i = 0; i < 50; ++i) {
      if (waitpid(ssh_pid_, nullptr, WNOHANG) == ssh_pid_) return;
      usleep(20000);
    }
    kill(ssh_pid_, SIGTERM);
    waitpid(ssh_pid_, nullptr, 0);
  }
}

}  // namespace kvmcdp
