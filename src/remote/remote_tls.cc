// TLS under the remote protocol's framing.  The session runs on a
// non-blocking socket and reports "would block" as 0 bytes, like the plain
// transport, so Conn's poll loop, timeouts and payload limits work alike
// on both.  Handshakes are driven by the same kind of poll loop with one
// deadline for the whole handshake: a peer that opens the port and then
// sends nothing (or a byte now and then) is closed when it runs out, as
// slowly as a client that never logs in.
#include "remote/remote_tls.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

#include <fmt/format.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "base/fsutil.h"

namespace kvmcdp::remote {
namespace {

// TLS 1.3 (1.2 for old peers); GnuTLS puts AES-GCM first where the CPU has
// AES instructions.
constexpr const char* kPriority = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2";

Status tls_error(const std::string& what, int r) {
  Cause cause = Cause::kNone;
  if (r == GNUTLS_E_PREMATURE_TERMINATION) cause = Cause::kPeerClosed;
  if (r == GNUTLS_E_PULL_ERROR || r == GNUTLS_E_PUSH_ERROR) cause = Cause::kConnectionLost;
  return {ErrorKind::kFailure, fmt::format("remote: {}: {}", what, gnutls_strerror(r)), cause};
}

std::string hex_fingerprint(const unsigned char* d, size_t n) {
  std::string s = "SHA256:";
  for (size_t i = 0; i < n; ++i) s += fmt::format("{}{:02x}", i ? ":" : "", d[i]);
  return s;
}

Result<std::string> der_fingerprint(const gnutls_datum_t& der) {
  unsigned char d[32];
  if (int r = gnutls_hash_fast(GNUTLS_DIG_SHA256, der.data, der.size, d); r < 0)
    return tls_error("sha256", r);
  return hex_fingerprint(d, sizeof d);
}

class TlsTransport : public Transport {
 public:
  TlsTransport(int fd, gnutls_session_t s, gnutls_certificate_credentials_t own)
      : fd_(fd), s_(s), own_(own) {
    gnutls_transport_set_ptr2(s_, reinterpret_cast<void*>(static_cast<intptr_t>(fd)), this);
    gnutls_transport_set_push_function(s_, &TlsTransport::push_cb);
  }
  ~TlsTransport() override {
    // Best effort, never waiting: the peer learns the end was meant.
    gnutls_bye(s_, GNUTLS_SHUT_WR);
    gnutls_deinit(s_);
    if (own_) gnutls_certificate_free_credentials(own_);
    close(fd_);
  }
  Result<size_t> read(uint8_t* p, size_t n) override {
    ssize_t r = gnutls_record_recv(s_, p, n);
    read_dir_ = gnutls_record_get_direction(s_);
    if (r > 0) return static_cast<size_t>(r);
    // A peer that drops the TCP connection without TLS's close_notify has
    // closed it as far as the protocol is concerned: every message is
    // authenticated whole, and the acks say what arrived.
    if (r == 0 || r == GNUTLS_E_PREMATURE_TERMINATION)
      return Status(ErrorKind::kFailure, "remote: the peer closed the connection",
                    Cause::kPeerClosed);
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED || !gnutls_error_is_fatal(r))
      return size_t{0};
    return tls_error("TLS read", static_cast<int>(r));
  }
  Result<size_t> write(const uint8_t* p, size_t n) override {
    ssize_t r = gnutls_record_send(s_, p, n);
    write_dir_ = gnutls_record_get_direction(s_);
    if (r > 0) return static_cast<size_t>(r);
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) return size_t{0};
    return tls_error("TLS send", r == 0 ? GNUTLS_E_PUSH_ERROR : static_cast<int>(r));
  }
  bool pending() const override { return gnutls_record_check_pending(s_) > 0; }
  int fd(bool) const override { return fd_; }
  short events(bool reading) const override {
    return (reading ? read_dir_ : write_dir_) ? POLLOUT : POLLIN;
  }
  void begin_message(size_t size) override {
    // Header and payload in one record where they fit; a large payload
    // is not worth copying into the cork's buffer for that.
    corked_ = size <= 16384;
    if (corked_) gnutls_record_cork(s_);
    gathering_ = true;
  }
  Status end_message(int timeout_ms) override {
    gathering_ = false;
    while (corked_) {
      int r = gnutls_record_uncork(s_, 0);
      if (r >= 0) {
        corked_ = false;
        break;
      }
      if (r != GNUTLS_E_AGAIN && r != GNUTLS_E_INTERRUPTED) return tls_error("TLS send", r);
      short ev = static_cast<short>(gnutls_record_get_direction(s_) ? POLLOUT : POLLIN);
      if (Status st = wait(ev, timeout_ms); !st) return st;
    }
    while (!flush()) {
      if (errno != EAGAIN) return tls_error("TLS send", GNUTLS_E_PUSH_ERROR);
      if (Status st = wait(POLLOUT, timeout_ms); !st) return st;
    }
    return Status::ok();
  }

 private:
  // GnuTLS pushes each sealed record (16 KiB at most) on its own, and a
  // socket write per record was most of what TLS cost the shipper (12k
  // sendmsg per 190 MiB shipped, against ~900 writes over tcp).  Inside a
  // message the records gather in out_ and leave kGather bytes at a time.
  static constexpr size_t kGather = 256 * 1024;

  static ssize_t push_cb(gnutls_transport_ptr_t self, const void* p, size_t n) {
    return static_cast<TlsTransport*>(self)->push(static_cast<const uint8_t*>(p), n);
  }
  ssize_t push(const uint8_t* p, size_t n) {
    if (!gathering_ && out_.size() == out_done_) {
      ssize_t r = ::send(fd_, p, n, MSG_NOSIGNAL);
      if (r < 0) gnutls_transport_set_errno(s_, errno);
      return r;
    }
    if (out_.size() - out_done_ + n > kGather && !flush()) {
      gnutls_transport_set_errno(s_, errno);
      return -1;
    }
    out_.insert(out_.end(), p, p + n);
    return static_cast<ssize_t>(n);
  }
  // Sends what gathered without waiting: true once all of it left,
  // false with errno (EAGAIN: the socket is full) otherwise.
  bool flush() {
    while (out_done_ < out_.size()) {
      ssize_t r = ::send(fd_, out_.data() + out_done_, out_.size() - out_done_, MSG_NOSIGNAL);
      if (r < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      out_done_ += static_cast<size_t>(r);
    }
    out_.clear();
    out_done_ = 0;
    return true;
  }
  Status wait(short events, int timeout_ms) {
    pollfd p{fd_, events, 0};
    int pr = poll(&p, 1, timeout_ms);
    if (pr == 0) return {ErrorKind::kFailure, "remote: the peer stopped reading", Cause::kTimeout};
    if (pr < 0 && errno != EINTR)
      return {ErrorKind::kFailure, fsutil::errno_message("poll", "")};
    return Status::ok();
  }

  int fd_;
  gnutls_session_t s_;
  gnutls_certificate_credentials_t own_;
  int read_dir_ = 0, write_dir_ = 1;
  bool corked_ = false, gathering_ = false;
  std::vector<uint8_t> out_;
  size_t out_done_ = 0;
};

using Clock = std::chrono::steady_clock;

int ms_left(Clock::time_point deadline) {
  auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::max<long>(left, 0));
}

Status handshake(gnutls_session_t s, int fd, Clock::time_point deadline) {
  for (;;) {
    int r = gnutls_handshake(s);
    if (r == 0) return Status::ok();
    if (r == GNUTLS_E_FATAL_ALERT_RECEIVED)
      return {ErrorKind::kFailure,
              fmt::format("remote: the peer refused the TLS handshake ({}); a server without "
                          "--tls-cert takes only tcp://",
                          gnutls_alert_get_name(gnutls_alert_get(s))),
              Cause::kRefused};
    if (r != GNUTLS_E_AGAIN && r != GNUTLS_E_INTERRUPTED && gnutls_error_is_fatal(r))
      return tls_error("TLS handshake", r);
    pollfd p{fd, static_cast<short>(gnutls_record_get_direction(s) ? POLLOUT : POLLIN), 0};
    int pr = poll(&p, 1, ms_left(deadline));
    if (pr == 0)
      return {ErrorKind::kFailure, "remote: the TLS handshake did not finish in time",
              Cause::kTimeout};
    if (pr < 0 && errno != EINTR) return {ErrorKind::kFailure, fsutil::errno_message("poll", "")};
  }
}

Result<gnutls_session_t> new_session(unsigned flags, int fd, gnutls_certificate_credentials_t c) {
  gnutls_session_t s;
  if (int r = gnutls_init(&s, flags | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL); r < 0)
    return tls_error("TLS", r);
  int r = gnutls_priority_set_direct(s, kPriority, nullptr);
  if (r >= 0) r = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, c);
  if (r < 0) {
    gnutls_deinit(s);
    return tls_error("TLS", r);
  }
  gnutls_transport_set_int(s, fd);
  return s;
}

void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

// Reads what the peer sent so far: closing on unread bytes would reset
// the connection, and the peer might lose our last words with it.
void drain(int fd) {
  char sink[4096];
  while (recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0) {
  }
}

// A kvmcdp client that speaks in the clear: it sends the protocol's
// header first, where a TLS client sends a handshake record (0x16).  It
// gets a refusal it can print instead of a connection that just ends.
bool refuse_cleartext(int fd, Clock::time_point deadline) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, ms_left(deadline)) != 1) return false;
  uint8_t first = 0;
  if (recv(fd, &first, 1, MSG_PEEK) != 1) return false;
  MsgHeader h;
  uint8_t head[kHeaderSize];
  encode_header(h, head);
  if (first != head[0]) return false;
  std::string why = "this server takes TLS only: connect with tls://HOST:PORT/STORE and "
                    "--server-fingerprint";
  h.type = static_cast<uint16_t>(MsgType::kError);
  h.payload_len = static_cast<uint32_t>(why.size());
  encode_header(h, head);
  std::string msg(reinterpret_cast<const char*>(head), kHeaderSize);
  msg += why;
  drain(fd);
  // One small write into an empty socket buffer: it fits.
  (void)!::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  return true;
}

}  // namespace

PlainStart check_plain_start(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  int r;
  do r = poll(&p, 1, timeout_ms);
  while (r < 0 && errno == EINTR);
  if (r == 0) return PlainStart::kSilent;
  uint8_t first = 0;
  if (r < 0 || recv(fd, &first, 1, MSG_PEEK) != 1 || first != 0x16) return PlainStart::kGoOn;
  drain(fd);
  // A TLS 1.2 record holding a fatal handshake_failure alert: any TLS
  // client reports it instead of a connection that just closed.
  static const uint8_t alert[] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28};
  (void)!::send(fd, alert, sizeof alert, MSG_NOSIGNAL | MSG_DONTWAIT);
  return PlainStart::kTlsRefused;
}

Result<std::string> parse_fingerprint(const std::string& text) {
  std::string t = text;
  auto bad = [&] {
    return Status(ErrorKind::kUsage,
                  fmt::format("--server-fingerprint {}: expected SHA256: and 32 hex bytes "
                              "(the server prints its fingerprint when it starts)",
                              text));
  };
  std::string lower;
  for (char c : t) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const char* prefix : {"sha256 fingerprint=", "sha256:"})
    if (lower.rfind(prefix, 0) == 0) lower = lower.substr(std::strlen(prefix));
  std::string hex;
  for (char c : lower) {
    if (c == ':') continue;
    if (!std::isxdigit(static_cast<unsigned char>(c))) return bad();
    hex += c;
  }
  if (hex.size() != 64) return bad();
  std::string out = "SHA256:";
  for (size_t i = 0; i < 64; i += 2) out += (i ? ":" : "") + hex.substr(i, 2);
  return out;
}

Result<std::shared_ptr<TlsServerCredentials>> TlsServerCredentials::load(
    const std::string& cert_file, const std::string& key_file) {
  std::shared_ptr<TlsServerCredentials> c(new TlsServerCredentials());
  gnutls_certificate_credentials_t cred;
  if (int r = gnutls_certificate_allocate_credentials(&cred); r < 0) return tls_error("TLS", r);
  c->cred_ = cred;
  if (int r = gnutls_certificate_set_x509_key_file(cred, cert_file.c_str(), key_file.c_str(),
                                                   GNUTLS_X509_FMT_PEM);
      r < 0)
    return Status(ErrorKind::kFailure,
                  fmt::format("cannot load the TLS certificate {} with key {}: {}", cert_file,
                              key_file, gnutls_strerror(r)));
  gnutls_datum_t der;
  if (int r = gnutls_certificate_get_crt_raw(cred, 0, 0, &der); r < 0)
    return tls_error("TLS certificate", r);
  auto fp = der_fingerprint(der);
  if (!fp) return fp.status();
  c->fingerprint_ = *fp;
  return c;
}

TlsServerCredentials::~TlsServerCredentials() {
  if (cred_)
    gnutls_certificate_free_credentials(static_cast<gnutls_certificate_credentials_t>(cred_));
}

Result<std::unique_ptr<Transport>> tls_accept(int fd, const TlsServerCredentials& cred,
                                              int timeout_ms) {
  fsutil::Fd hold(fd);
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  set_nonblocking(fd);
  if (refuse_cleartext(fd, deadline))
    return Status(ErrorKind::kFailure, "a client without TLS (tcp://) was refused",
                  Cause::kRefused);
  auto s = new_session(GNUTLS_SERVER, fd,
                       static_cast<gnutls_certificate_credentials_t>(cred.native()));
  if (!s) return s.status();
  if (Status st = handshake(*s, fd, deadline); !st) {
    gnutls_deinit(*s);
    return st;
  }
  return std::unique_ptr<Transport>(new TlsTransport(hold.release(), *s, nullptr));
}

Result<std::unique_ptr<Transport>> tls_connect(int fd, const std::string& fingerprint,
                                               const std::string& server_name, int timeout_ms) {
  fsutil::Fd hold(fd);
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  set_nonblocking(fd);
  gnutls_certificate_credentials_t cred;
  if (int r = gnutls_certificate_allocate_credentials(&cred); r < 0) return tls_error("TLS", r);
  auto s = new_session(GNUTLS_CLIENT, fd, cred);
  if (!s) {
    gnutls_certificate_free_credentials(cred);
    return s.status();
  }
  // The transport owns session and credentials from here, and closes fd.
  std::unique_ptr<Transport> t(new TlsTransport(hold.release(), *s, cred));
  if (Status st = handshake(*s, fd, deadline); !st) return st;
  // Nothing has been sent in the session yet: the pin is checked before
  // the store's name or anything else leaves this machine.
  unsigned n = 0;
  const gnutls_datum_t* certs = gnutls_certificate_get_peers(*s, &n);
  if (!certs || n == 0)
    return Status(ErrorKind::kFailure,
                  fmt::format("{}: the server sent no TLS certificate", server_name),
                  Cause::kRefused);
  auto got = der_fingerprint(certs[0]);
  if (!got) return got.status();
  if (*got != fingerprint)
    return Status(ErrorKind::kFailure,
                  fmt::format("{} has TLS certificate fingerprint {}, not {} as "
                              "--server-fingerprint says: another server, or its certificate "
                              "was replaced; nothing was sent",
                              server_name, *got, fingerprint),
                  Cause::kRefused);
  return t;
}

Result<std::string> make_self_signed(const std::string& dir, const std::string& name) {
  std::string key_path = dir + "/server.key", crt_path = dir + "/server.crt";
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return Status(ErrorKind::kFailure, fsutil::errno_message("mkdir", dir));
  for (const auto& p : {key_path, crt_path}) {
    struct stat st;
    if (lstat(p.c_str(), &st) == 0)
      return Status(ErrorKind::kExists,
                    fmt::format("{} exists already; nothing was written (clients pin the "
                                "certificate: a new one needs their --server-fingerprint "
                                "changed too)",
                                p));
  }
  gnutls_x509_privkey_t key = nullptr;
  gnutls_x509_crt_t crt = nullptr;
  gnutls_datum_t key_pem{}, crt_pem{};
  auto cleanup = [&] {
    if (key) gnutls_x509_privkey_deinit(key);
    if (crt) gnutls_x509_crt_deinit(crt);
    gnutls_free(key_pem.data);
    gnutls_free(crt_pem.data);
  };
  int r = gnutls_x509_privkey_init(&key);
  if (r >= 0)
    r = gnutls_x509_privkey_generate(key, GNUTLS_PK_ECDSA,
                                     GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0);
  if (r >= 0) r = gnutls_x509_crt_init(&crt);
  unsigned char serial[16];
  if (r >= 0) r = gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof serial);
  serial[0] &= 0x7f;  // a positive number
  time_t now = time(nullptr);
  if (r >= 0) r = gnutls_x509_crt_set_version(crt, 3);
  if (r >= 0) r = gnutls_x509_crt_set_serial(crt, serial, sizeof serial);
  if (r >= 0) r = gnutls_x509_crt_set_activation_time(crt, now - 3600);
  // The pin is the trust, not the dates: long enough never to matter.
  if (r >= 0) r = gnutls_x509_crt_set_expiration_time(crt, now + 50ll * 365 * 86400);
  if (r >= 0)
    r = gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, name.data(),
                                      static_cast<unsigned>(name.size()));
  if (r >= 0)
    r = gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, name.data(),
                                             static_cast<unsigned>(name.size()),
                                             GNUTLS_FSAN_SET);
  if (r >= 0) r = gnutls_x509_crt_set_key(crt, key);
  if (r >= 0) r = gnutls_x509_crt_set_basic_constraints(crt, 0, -1);
  if (r >= 0) r = gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE);
  if (r >= 0) r = gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_SERVER, 0);
  if (r >= 0) r = gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0);
  if (r >= 0) r = gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &crt_pem);
  if (r >= 0)
    r = gnutls_x509_privkey_export2_pkcs8(key, GNUTLS_X509_FMT_PEM, nullptr, GNUTLS_PKCS_PLAIN,
                                          &key_pem);
  unsigned char d[32];
  size_t dn = sizeof d;
  if (r >= 0) r = gnutls_x509_crt_get_fingerprint(crt, GNUTLS_DIG_SHA256, d, &dn);
  if (r < 0) {
    cleanup();
    return tls_error("making the certificate", r);
  }
  std::string fp = hex_fingerprint(d, dn);
  // The key first, mode 0600 whatever the umask, never over a file.
  auto write_new = [](const std::string& path, const gnutls_datum_t& data, mode_t mode) {
    fsutil::Fd fd(
        ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
    if (!fd.valid())
      return Status(errno == EEXIST ? ErrorKind::kExists : ErrorKind::kFailure,
                    fsutil::errno_message("create", path));
    if (fchmod(fd.get(), mode) != 0)
      return Status(ErrorKind::kFailure, fsutil::errno_message("chmod", path));
    if (Status s = fsutil::write_all(fd.get(), data.data, data.size, path); !s) return s;
    if (fsync(fd.get()) != 0)
      return Status(ErrorKind::kFailure, fsutil::errno_message("fsync", path));
    return Status::ok();
  };
  Status s = write_new(key_path, key_pem, 0600);
  if (s) {
    s = write_new(crt_path, crt_pem, 0644);
    if (!s) unlink(key_path.c_str());
  } else if (s.kind() != ErrorKind::kExists) {
    unlink(key_path.c_str());
  }
  cleanup();
  if (!s) return s;
  if (Status d2 = fsutil::fsync_dir(dir); !d2) return d2;
  return fp;
}

bool is_loopback(const sockaddr* sa) {
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) return true;
    return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127;
  }
  return false;
}

}  // namespace kvmcdp::remote
