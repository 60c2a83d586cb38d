// <store>/protect.json: what a running `kvmcdp protect` tells the other
// commands (status, mark): which QEMU and filter it serves, and how far
// the journal is.  Rewritten atomically about once a second; a stale file
// (its pid gone) means "not protected".
//
// A running protect also registers its stream in a host-wide directory
// (one small file per stream id, see protect_registry_dir), because QEMU
// only knows a filter's stream id: a second protect of the same drive
// finds there which store and pid it would be stealing the filter from.
#pragma once

#include <cstdint>
#include <string>

#include "base/status.h"

namespace kvmcdp {

struct ProtectState {
  int pid = 0;
  std::string qmp_socket;  // "" with a libvirt domain (below)
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
  uint32_t stream_version = 0;  // the filter's protocol (3: the shared-memory ring)
  // With --remote: how far the backup server is.
  std::string remote_url;  // "" without --remote
  bool remote_connected = false;
  uint64_t remote_durable_seq = 0;
  uint64_t remote_durable_ns = 0;
  uint64_t remote_lag_bytes = 0;  // local journal bytes not on the server
  uint64_t spool_bytes = 0;       // --spool: journal bytes held locally
  bool remote_base = false;       // the server has the base copy
  std::string remote_error;       // why the last connection ended
  std::string store;              // absolute
  uint64_t stream_id = 0;
  uint64_t shutdown_ns = 0;       // set when protect ended because QEMU went away
  // --domain/--connect: the QEMU is reached through libvirt.
  std::string domain;
  std::string libvirt_uri;
};

std::string protect_state_path(const std::string& store_dir);
Status write_protect_state(const std::string& store_dir, const ProtectState& s);
// kNotFound if no protect ever ran here.
Result<ProtectState> read_protect_state(const std::string& store_dir);
// True if the state's pid is a live process.
bool protect_running(const ProtectState& s);

// Where running protects register their streams: $KVMCDP_RUN_DIR, else
// /run/kvmcdp for root, else $XDG_RUNTIME_DIR/kvmcdp, else /tmp/kvmcdp-UID.
std::string protect_registry_dir();
struct StreamOwner {
  std::string store;  // absolute
  int pid = 0;
  bool running = false;  // that pid is alive
};
// Says that `store` (absolute), written by this process, holds `stream_id`.
Status register_stream(uint64_t stream_id, const std::string& store);
// Forgets the entry if it is still this process's.
void unregister_stream(uint64_t stream_id);
// The store registered for `stream_id`; kNotFound if none.
Result<StreamOwner> stream_owner(uint64_t stream_id);

}  // namespace kvmcdp
