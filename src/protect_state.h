// <store>/protect.json: what a running `kvmcdp protect` tells the other
// commands (status, mark): which QEMU and filter it serves, and how far
// the journal is.  Rewritten atomically about once a second; a stale file
// (its pid gone) means "not protected".
#pragma once

#include <cstdint>
#include <string>

#include "status.h"

namespace kvmcdp {

struct ProtectState {
  int pid = 0;
  std::string qmp_socket;
  std::string drive;
  std::string filter_node;
  std::string mode;
  uint64_t started_ns = 0;
  uint64_t updated_ns = 0;
  bool connected = false;
  uint64_t records = 0;
  uint64_t bytes = 0;
  uint64_t received_seq = 0;
  uint64_t durable_seq = 0;
  uint64_t durable_time_ns = 0;
  // With --remote: how far the backup server is.
  std::string remote_url;  // "" without --remote
  bool remote_connected = false;
  uint64_t remote_durable_seq = 0;
  uint64_t remote_durable_ns = 0;
  uint64_t remote_lag_bytes = 0;  // local journal bytes not on the server
  uint64_t spool_bytes = 0;       // --spool: journal bytes held locally
  bool remote_base = false;       // the server has the base copy
  std::string remote_error;       // why the last connection ended
};

std::string protect_state_path(const std::string& store_dir);
Status write_protect_state(const std::string& store_dir, const ProtectState& s);
// kNotFound if no protect ever ran here.
Result<ProtectState> read_protect_state(const std::string& store_dir);
// True if the state's pid is a live process.
bool protect_running(const ProtectState& s);

}  // namespace kvmcdp
