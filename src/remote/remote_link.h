// Opening a connection to a remote store and saying hello: over ssh (the
// system's client runs `kvmcdp serve --stdio PATH` on the far side) or
// tls / tcp (a `kvmcdp serve --listen` server, per-store secret).
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>

#include "store/manifest.h"
#include "remote/remote_io.h"
#include "remote/remote_url.h"
#include "base/status.h"

namespace kvmcdp {

struct RemoteOptions {
  RemoteUrl url;
  std::string secret;       // tcp, tls: the store's secret
  std::string server_fingerprint;  // tls: the certificate's, parse_fingerprint's form
  std::string rsh = "ssh";  // ssh command and options ($KVMCDP_RSH)
  std::string remote_path = "kvmcdp";  // kvmcdp on the far side
};

// Where the server's copy of the store ends (remote_format.h, WELCOME).
struct ServerState {
  uint64_t segment = 0;
  uint64_t size = 0;
  bool sealed = false;
  uint64_t last_seq = 0;
  uint64_t last_ns = 0;
  std::string stream_id;  // "" for a store that has no manifest yet
  bool base_complete = false;
};

class RemoteLink {
 public:
  // Connects and authenticates.  With `manifest`, also sends it (the
  // server adopts or checks it); without, it is a probe that only checks
  // that the server is there and takes us.  `refused` (if given) tells a
  // refusal (wrong secret, unknown store, not a kvmcdp server) from a
  // server that could not be reached.
  static Result<std::unique_ptr<RemoteLink>> open(const RemoteOptions& o,
                                                  const Manifest* manifest,
                                                  int timeout_ms = 20000,
                                                  bool* refused = nullptr);
  ~RemoteLink();
  remote::Conn& conn() { return *conn_; }
  const ServerState& state() const { return state_; }

 private:
  RemoteLink() = default;
  std::unique_ptr<remote::Conn> conn_;
  pid_t ssh_pid_ = -1;
  ServerState state_;
};

}  // namespace kvmcdp
