// <store>/serve.json: what `kvmcdp serve` tells `kvmcdp status` on the
// backup server about a store it receives: which client ships into it,
// since when, and how far the journal is durable here.  Written when a
// client's connection is accepted, about once a second while it ships,
// and when it ends; a file whose pid is gone means "not connected".
#pragma once

#include <cstdint>
#include <string>

#include "base/status.h"

namespace kvmcdp {

struct ServeState {
  int pid = 0;
  std::string peer;           // "127.0.0.1:40312", "stdio"
  bool connected = false;     // false once the connection ended
  uint64_t since_ns = 0;      // the connection's start
  uint64_t updated_ns = 0;
  uint64_t durable_seq = 0;   // what the server has made durable (and acked)
  uint64_t durable_time_ns = 0;
  uint64_t bytes = 0;         // journal bytes received on this connection
  std::string ended;          // why the last connection ended ("" while connected)
};

std::string serve_state_path(const std::string& store_dir);
Status write_serve_state(const std::string& store_dir, const ServeState& s);
// kNotFound if no client ever shipped here.
Result<ServeState> read_serve_state(const std::string& store_dir);
// Connected, and the serving process is alive.
bool serve_receiving(const ServeState& s);

}  // namespace kvmcdp
