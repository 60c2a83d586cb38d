// TLS for tls:// remotes (GnuTLS), as Proxmox Backup Server does it: the
// server has a self-signed certificate, the client pins it by the SHA-256
// fingerprint of its DER encoding.  No certificate authority is involved
// and nothing is trusted on first use.  The store's secret still
// authenticates the client, inside the session.
#pragma once

#include <sys/socket.h>

#include <memory>
#include <string>

#include "remote/remote_io.h"
#include "base/status.h"

namespace kvmcdp::remote {

// "SHA256:" and 32 lowercase hex bytes joined by ':'.  Also takes what
// `openssl x509 -fingerprint -sha256` prints ("sha256 Fingerprint=AB:..."),
// any case, with or without the colons.  kUsage otherwise.
Result<std::string> parse_fingerprint(const std::string& text);

// The server's certificate and key, loaded once and shared by every
// connection's session.
class TlsServerCredentials {
 public:
  static Result<std::shared_ptr<TlsServerCredentials>> load(const std::string& cert_file,
                                                           const std::string& key_file);
  ~TlsServerCredentials();
  const std::string& fingerprint() const { return fingerprint_; }
  void* native() const { return cred_; }

 private:
  TlsServerCredentials() = default;
  void* cred_ = nullptr;
  std::string fingerprint_;
};

// Creates DIR/server.key (mode 0600) and DIR/server.crt, a self-signed
// certificate for `name`; DIR is made if missing.  kExists when either
// file is there: nothing is replaced.  Returns the fingerprint.
Result<std::string> make_self_signed(const std::string& dir, const std::string& name);

// The handshake on the connected socket `fd` (taken over: closed on
// failure), finished within `timeout_ms` all told, so a peer that sends
// a byte now and then cannot hold it open longer.
Result<std::unique_ptr<Transport>> tls_accept(int fd, const TlsServerCredentials& cred,
                                              int timeout_ms);
// As a client: the server's certificate must have `fingerprint`
// (parse_fingerprint's form); a mismatch is Cause::kRefused.
Result<std::unique_ptr<Transport>> tls_connect(int fd, const std::string& fingerprint,
                                               const std::string& server_name, int timeout_ms);

// On a port without TLS, before the protocol: a peer that opens with a
// TLS handshake record is answered with a TLS alert (kTlsRefused; the
// caller closes), so a tls:// client is told no instead of retrying; one
// that sends nothing within `timeout_ms` is kSilent.  Peeks only: a kvmcdp
// client's bytes stay for the protocol (kGoOn).
enum class PlainStart { kGoOn, kTlsRefused, kSilent };
PlainStart check_plain_start(int fd, int timeout_ms);

// A loopback address (127.0.0.0/8, ::1, ::ffff:127.x.y.z): traffic that
// never leaves the machine.
bool is_loopback(const sockaddr* sa);

}  // namespace kvmcdp::remote
