// One connection of `kvmcdp serve`: authenticate the client, open its
// store, and mirror what it ships until it goes away.
#pragma once

#include <functional>
#include <string>

#include "remote/remote_io.h"
#include "base/status.h"

namespace kvmcdp {

struct ServeConfig {
  // tcp: stores are <store_root>/<name>, each with its own `secret` file.
  std::string store_root;
  // stdio (run by ssh): the one store this process serves; no secret.
  std::string fixed_store;
  std::string peer;  // for log lines: "127.0.0.1:40312", "stdio"
  // When the store is busy: ends this server's other connection to it.
  // A client whose network dropped without a FIN reconnects at once and
  // must not wait for TCP keepalive to free its own store.
  std::function<void(const std::string& store)> evict;
  // Called once the client has proven it holds the store's secret (or,
  // over stdio, at once): it no longer counts as a stranger.
  std::function<void()> authenticated;
  // Tells which store this connection got (for evict's bookkeeping).
  std::function<void(const std::string& store)> claimed;
  // A problem that does not end the connection (the run-state file could
  // not be written): the command decides where it goes.
  std::function<void(const std::string& what)> warn;
};

// Serves `conn` to its end.  Returns why it ended (a client that
// disconnects is ok); every refusal was also sent to the client as ERROR.
Status serve_connection(remote::Conn& conn, const ServeConfig& cfg);

}  // namespace kvmcdp
