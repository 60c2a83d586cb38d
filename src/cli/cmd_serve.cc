// kvmcdp serve: the backup server.  `--listen` accepts many clients at
// once, one thread each (a connection is mostly waiting on its disk's
// fdatasync, so threads are the simple and sufficient design); each writes
// its own store under --store-root, guarded by that store's lock.
// `--stdio` serves one connection on stdin/stdout for ssh.
//
// With --tls-cert/--tls-key every connection on the port is TLS: the
// handshake runs in the connection's thread under the same deadline as
// the login, and the connection counts as not logged in until the login
// after it, so the limits below hold for handshakes too.  Without TLS, a
// port reachable from other machines needs --insecure-cleartext.
//
// Anyone who can reach the port can connect, so what a connection costs
// before it has logged in is bounded: few such connections per address
// and in all (the excess is closed at accept), small messages only (see
// remote_server.cc), and a receive buffer that grows with the bytes that
// actually arrive, so an idle connection costs its thread and little
// more.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "cli/cli.h"
#include "cli/config_file.h"
#include "base/fsutil.h"
#include "remote/remote_auth.h"
#include "remote/remote_server.h"
#include "remote/remote_tls.h"
#include "remote/remote_url.h"
#include "base/stop_signals.h"

namespace kvmcdp {
namespace {

struct ServeOptions {
  std::string listen;
  std::string store_root;
  std::string stdio_store;
  bool stdio = false;
  std::string new_store;
  std::string secret_out;
  std::string tls_cert, tls_key;
  std::string init_tls;
  bool insecure_cleartext = false;
};

// As long as the login may take (remote_server.cc): a handshake is part
// of logging in.
constexpr int kTlsHandshakeMs = 30000;

// Connections that have not logged in yet, from one address and in all;
// and connections of any kind.  A backup server has one connection per
// protected disk, and a client logs in within a round trip or two.
constexpr int kMaxStrangersPerAddress = 8;
constexpr int kMaxStrangers = 64;
constexpr size_t kMaxConnections = 1024;

void log_line(const std::string& s) { std::fprintf(stderr, "kvmcdp: %s\n", s.c_str()); }

// "host:port", "[v6]:port" or ":port" (every address).
Result<int> listen_on(const std::string& addr, std::string* bound, bool* loopback) {
  size_t colon = addr.rfind(':');
  if (colon == std::string::npos)
    return Status(ErrorKind::kUsage, "--listen wants HOST:PORT, e.g. 0.0.0.0:7419");
  std::string host = addr.substr(0, colon), port = addr.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  if (int e = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res))
    return Status(ErrorKind::kUsage, fmt::format("--listen {}: {}", addr, gai_strerror(e)));
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> hold(res, freeaddrinfo);
  fsutil::Fd fd(socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (!fd.valid() || bind(fd.get(), res->ai_addr, res->ai_addrlen) != 0 ||
      listen(fd.get(), 16) != 0)
    return Status(ErrorKind::kFailure, fsutil::errno_message("listen", addr));
  sockaddr_storage sa{};
  socklen_t len = sizeof sa;
  getsockname(fd.get(), reinterpret_cast<sockaddr*>(&sa), &len);
  char h[NI_MAXHOST], p[NI_MAXSERV];
  getnameinfo(reinterpret_cast<sockaddr*>(&sa), len, h, sizeof h, p, sizeof p,
              NI_NUMERICHOST | NI_NUMERICSERV);
  *loopback = remote::is_loopback(reinterpret_cast<sockaddr*>(&sa));
  *bound = sa.ss_family == AF_INET6 ? fmt::format("[{}]:{}", h, p) : fmt::format("{}:{}", h, p);
  return fd.release();
}

// The client's address without its port: what one machine shares.
std::string peer_host(int fd) {
  sockaddr_storage sa{};
  socklen_t len = sizeof sa;
  char h[NI_MAXHOST] = "?";
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0)
    getnameinfo(reinterpret_cast<sockaddr*>(&sa), len, h, sizeof h, nullptr, 0, NI_NUMERICHOST);
  return h;
}

// A message that breaks the code reading it (it should not: every field
// is checked) ends that connection, never the server.
Status serve_guarded(remote::Conn& conn, const ServeConfig& cfg) {
  try {
    return serve_connection(conn, cfg);
  } catch (const std::exception& e) {
    return {ErrorKind::kFailure, fmt::format("the connection failed: {}", e.what())};
  }
}

std::string peer_name(int fd) {
  sockaddr_storage sa{};
  socklen_t len = sizeof sa;
  char h[NI_MAXHOST] = "?", p[NI_MAXSERV] = "?";
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0)
    getnameinfo(reinterpret_cast<sockaddr*>(&sa), len, h, sizeof h, p, sizeof p,
                NI_NUMERICHOST | NI_NUMERICSERV);
  return fmt::format("{}:{}", h, p);
}

// A dead client (cable pulled, host gone) must not hold its store's lock
// for hours: keepalive notices it within about a minute.
void keep_alive(int fd) {
  int on = 1, idle = 30, intvl = 10, cnt = 3;
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

Status run_listen(const ServeOptions& o) {
  std::shared_ptr<remote::TlsServerCredentials> tls;
  if (!o.tls_cert.empty()) {
    auto c = remote::TlsServerCredentials::load(o.tls_cert, o.tls_key);
    if (!c) return c.status();
    tls = *c;
  }
  std::string bound;
  bool loopback = false;
  auto listener = listen_on(o.listen, &bound, &loopback);
  if (!listener) return listener.status();
  fsutil::Fd lfd(*listener);
  if (!tls && !loopback && !o.insecure_cleartext)
    return {ErrorKind::kUsage,
            fmt::format("--listen {} without TLS would send the disks' data over the network "
                        "unencrypted: give --tls-cert and --tls-key (serve --init-tls DIR makes "
                        "them), or --insecure-cleartext if that is really meant",
                        o.listen)};
  if (tls)
    log_line(fmt::format("TLS certificate fingerprint {} (clients: --server-fingerprint)",
                         tls->fingerprint()));
  else if (!loopback)
    log_line("warning: serving without TLS (--insecure-cleartext): disk data crosses the "
             "network unencrypted");
  log_line(fmt::format("serving stores under {} on {}{}", o.store_root, bound,
                       tls ? " (TLS)" : ""));

  struct Client {
    std::thread thread;
    int fd;
    std::string host;
    std::atomic<bool> authenticated{false};
    std::atomic<bool> done{false};
  };
  std::list<Client> clients;
  // Which connection serves which store, to end a stale one.
  std::mutex owners_mu;
  std::map<std::string, Client*> owners;
  sigset_t sigs = stop_signals();
  timespec zero{0, 0};
  for (;;) {
    if (sigtimedwait(&sigs, nullptr, &zero) > 0) break;
    for (auto it = clients.begin(); it != clients.end();) {
      if (it->done) {
        it->thread.join();
        it = clients.erase(it);
      } else {
        ++it;
      }
    }
    pollfd p{lfd.get(), POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    int fd = accept4(lfd.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    std::string host = peer_host(fd);
    int strangers = 0, from_host = 0;
    for (const auto& c : clients) {
      if (c.done || c.authenticated) continue;
      ++strangers;
      if (c.host == host) ++from_host;
    }
    const char* full = nullptr;
    if (clients.size() >= kMaxConnections)
      full = "too many connections";
    else if (from_host >= kMaxStrangersPerAddress)
      full = "too many connections from this address that have not logged in";
    else if (strangers >= kMaxStrangers)
      full = "too many connections that have not logged in";
    if (full) {
      log_line(fmt::format("{}: closed at once: {}", peer_name(fd), full));
      close(fd);
      continue;
    }
    keep_alive(fd);
    Client& c = clients.emplace_back();
    c.fd = fd;
    c.host = host;
    c.thread = std::thread([&c, &o, &owners, &owners_mu, tls] {
      ServeConfig cfg;
      cfg.store_root = o.store_root;
      cfg.peer = peer_name(c.fd);
      std::string mine;
      cfg.evict = [&](const std::string& store) {
        std::lock_guard l(owners_mu);
        auto it = owners.find(store);
        if (it != owners.end() && it->second != &c) {
          log_line(fmt::format("{}: takes over {} from a stale connection", cfg.peer, store));
          shutdown(it->second->fd, SHUT_RDWR);
        }
      };
      cfg.authenticated = [&c] { c.authenticated = true; };
      cfg.warn = [&cfg](const std::string& what) {
        log_line(fmt::format("{}: warning: {}", cfg.peer, what));
      };
      cfg.claimed = [&](const std::string& store) {
        std::lock_guard l(owners_mu);
        owners[store] = &c;
        mine = store;
      };
      std::unique_ptr<remote::Transport> transport;
      if (tls) {
        auto t = remote::tls_accept(c.fd, *tls, kTlsHandshakeMs);
        if (!t) {
          log_line(fmt::format("{}: {}", cfg.peer, t.status().message()));
          c.done = true;
          return;
        }
        transport = std::move(*t);
      } else {
        auto start = remote::check_plain_start(c.fd, kTlsHandshakeMs);
        if (start != remote::PlainStart::kGoOn) {
          log_line(fmt::format("{}: {}", cfg.peer,
                               start == remote::PlainStart::kSilent
                                   ? "sent nothing in time"
                                   : "a TLS client was refused: this server has no --tls-cert"));
          close(c.fd);
          c.done = true;
          return;
        }
        transport = remote::plain_transport(c.fd, c.fd);
      }
      {
        remote::Conn conn(std::move(transport));
        Status st = serve_guarded(conn, cfg);
        log_line(fmt::format("{}: {}", cfg.peer, st ? "connection ended" : st.message()));
        std::lock_guard l(owners_mu);
        if (!mine.empty() && owners[mine] == &c) owners.erase(mine);
      }
      c.done = true;
    });
  }
  // Stopping: wake every connection; each makes what it has durable.
  for (auto& c : clients)
    if (!c.done) shutdown(c.fd, SHUT_RDWR);
  for (auto& c : clients) c.thread.join();
  log_line("stopped");
  return Status::ok();
}

Status run_stdio(const ServeOptions& o) {
  ServeConfig cfg;
  cfg.peer = "stdio";
  cfg.warn = [](const std::string& what) { log_line("warning: " + what); };
  // Run by sshd: SSH_CLIENT is "ADDRESS PORT SERVER_PORT".
  if (const char* ssh = getenv("SSH_CLIENT")) {
    std::string c = ssh;
    size_t a = c.find(' '), b = a == std::string::npos ? a : c.find(' ', a + 1);
    if (a != std::string::npos)
      cfg.peer = "ssh " + c.substr(0, a) + ":" + c.substr(a + 1, b == std::string::npos ? b : b - a - 1);
  }
  std::string store = o.stdio_store;
  if (!o.store_root.empty()) {
    // Confined to the root, as an authorized_keys command= line can force.
    if (!valid_store_name(store))
      return {ErrorKind::kUsage, fmt::format("store {} is not a plain name under --store-root",
                                             store)};
    store = o.store_root + "/" + store;
  }
  cfg.fixed_store = store;
  // stdout carries the protocol: nothing else may print there.
  int in = dup(0), out = dup(1);
  int devnull = ::open("/dev/null", O_RDWR);
  dup2(devnull, 0);
  dup2(devnull, 1);
  close(devnull);
  remote::Conn conn(in, out);
  return serve_guarded(conn, cfg);
}

// Creates `path` mode 0600 whatever the umask, refusing one that exists:
// the secret must never land in a file others can read, nor replace a
// file the sysadmin still needs.
Result<int> create_secret_out(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return Status(errno == EEXIST ? ErrorKind::kExists : ErrorKind::kFailure,
                  errno == EEXIST ? fmt::format("{} exists already; the secret was not written "
                                                "(remove it or choose another file)",
                                                path)
                                  : fsutil::errno_message("create", path));
  if (fchmod(fd, 0600) != 0) {  // the umask may have taken owner bits too
    Status s(ErrorKind::kFailure, fsutil::errno_message("chmod", path));
    close(fd);
    unlink(path.c_str());
    return s;
  }
  return fd;
}

Status run_new_store(const ServeOptions& o) {
  if (!valid_store_name(o.new_store))
    return {ErrorKind::kUsage, fmt::format("store name {} is not one path component of letters, "
                                           "digits, '.', '_' and '-'",
                                           o.new_store)};
  // The secret's file comes first, so that a refused --secret-out leaves
  // no store behind whose secret nobody has.
  fsutil::Fd out;
  if (!o.secret_out.empty()) {
    auto fd = create_secret_out(o.secret_out);
    if (!fd) return fd.status();
    out = fsutil::Fd(*fd);
  }
  auto drop_out = [&](Status s) {
    if (out.valid()) unlink(o.secret_out.c_str());
    return s;
  };
  std::string dir = o.store_root + "/" + o.new_store;
  if (mkdir(dir.c_str(), 0700) != 0)
    return drop_out({errno == EEXIST ? ErrorKind::kBusy : ErrorKind::kFailure,
                     errno == EEXIST ? fmt::format("store {} exists already", dir)
                                     : fsutil::errno_message("mkdir", dir)});
  std::string secret = remote::random_hex(32);
  std::string path = dir + "/secret";
  fsutil::Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) return drop_out({ErrorKind::kFailure, fsutil::errno_message("create", path)});
  std::string line = secret + "\n";
  if (Status s = fsutil::write_all(fd.get(), line.data(), line.size(), path); !s)
    return drop_out(s);
  if (fsync(fd.get()) != 0)
    return drop_out({ErrorKind::kFailure, fsutil::errno_message("fsync", path)});
  if (out.valid()) {
    if (Status s = fsutil::write_all(out.get(), line.data(), line.size(), o.secret_out); !s)
      return drop_out(s);
    if (fsync(out.get()) != 0)
      return drop_out({ErrorKind::kFailure, fsutil::errno_message("fsync", o.secret_out)});
    return fsutil::fsync_dir(fsutil::dirname_of(o.secret_out));
  }
  // Without --secret-out the secret goes to stdout, for a pipe into the
  // client's secret file, not a terminal's scrollback.
  std::printf("%s", line.c_str());
  return Status::ok();
}

}  // namespace

Status run_init_tls(const ServeOptions& o) {
  char host[256] = "kvmcdp";
  gethostname(host, sizeof host - 1);
  auto fp = remote::make_self_signed(o.init_tls, host);
  if (!fp) return fp.status();
  std::fprintf(stderr,
               "kvmcdp: made the certificate %s/server.crt and its key %s/server.key "
               "(mode 600)\n",
               o.init_tls.c_str(), o.init_tls.c_str());
  // stdout: the fingerprint alone, for a script to pass on to clients.
  std::printf("%s\n", fp->c_str());
  return Status::ok();
}

CommandRunner setup_serve_command(CLI::App* app) {
  auto o = std::make_shared<ServeOptions>();
  auto* listen = app->add_option("--listen", o->listen,
                                 "HOST:PORT to accept tls:// clients on (with --tls-cert; else "
                                 "tcp://) (PORT 0: any free port, printed)");
  auto* stdio = app->add_option("--stdio", o->stdio_store,
                                "serve one client on stdin/stdout into store PATH (run by ssh)");
  auto* root = app->add_option("--store-root", o->store_root,
                               "directory holding one store per client name");
  auto* create = app->add_option("--new-store", o->new_store,
                                 "create store NAME under --store-root with a fresh secret, "
                                 "print the secret and exit");
  app->add_option("--secret-out", o->secret_out,
                  "with --new-store: write the secret to FILE (created mode 600; refused if it "
                  "exists) instead of printing it")
      ->type_name("FILE")
      ->needs(create);
  auto* cert = app->add_option("--tls-cert", o->tls_cert,
                               "with --listen: TLS certificate (PEM); clients connect with "
                               "tls:// and pin its fingerprint")
                   ->type_name("FILE")
                   ->needs(listen);
  auto* key = app->add_option("--tls-key", o->tls_key, "with --tls-cert: its private key (PEM)")
                  ->type_name("FILE")
                  ->needs(cert);
  cert->needs(key);
  auto* cleartext =
      app->add_flag("--insecure-cleartext", o->insecure_cleartext,
                    "with --listen on a non-loopback address: serve without TLS (disk data "
                    "crosses the network unencrypted)")
          ->needs(listen)
          ->excludes(cert);
  (void)cleartext;
  auto* init = app->add_option("--init-tls", o->init_tls,
                               "make a self-signed certificate DIR/server.crt and key "
                               "DIR/server.key (refused if either exists), print its "
                               "fingerprint and exit")
                   ->type_name("DIR");
  init->excludes(listen)->excludes(stdio)->excludes(create);
  listen->excludes(stdio)->excludes(create)->needs(root);
  stdio->excludes(create);
  create->needs(root);
  add_config_option(app);  // last: it knows the options above
  return [o, listen, stdio, create, init]() -> Status {
    if (*init) return run_init_tls(*o);
    if (!*create && !*listen && !*stdio)
      return {ErrorKind::kUsage, "serve needs --listen, --stdio, --new-store or --init-tls"};
    if (*create) return run_new_store(*o);
    if (*stdio) {
      signal(SIGPIPE, SIG_IGN);  // ssh gone: an error on a write
      return run_stdio(*o);
    }
    take_stop_signals_synchronously();
    return run_listen(*o);
  };
}

}  // namespace kvmcdp
