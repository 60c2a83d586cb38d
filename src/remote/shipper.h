// The client's half of remote shipping: a thread that mirrors the local
// journal (a full store, or a spool) and the base copy onto the server,
// reconnecting with back-off for as long as protect runs.
//
// It reads what the local journal holds durably, never the receiver's
// memory, so the local journal is the one queue for every case: a slow
// link, a server restart, a network outage.  On every (re)connect the
// server says where its copy ends, and shipping resumes exactly there:
// nothing is sent twice into the store and nothing is skipped.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "capture/ack_gate.h"
#include "remote/remote_link.h"
#include "base/status.h"

namespace kvmcdp {

struct Manifest;
struct ShipCursor;

struct ShipperConfig {
  RemoteOptions remote;
  std::string store;         // the local store or spool directory
  bool spool = false;        // delete what the server holds durably
  uint64_t spool_limit = 0;  // bytes of unshipped journal before pausing
};

struct RemoteStatus {
  bool connected = false;
  uint64_t durable_seq = 0;  // the server's
  uint64_t durable_ns = 0;
  uint64_t lag_bytes = 0;    // local journal bytes the server lacks
  uint64_t spool_bytes = 0;  // journal bytes in the spool
  bool base_on_server = false;
  std::string error;         // why the last connection ended
};

class Shipper {
 public:
  // `local_durable` says how far the local journal is durable.
  Shipper(ShipperConfig cfg, AckGate* gate, std::function<uint64_t()> local_durable);
  ~Shipper();
  void start();
  // Ships what is left until the server holds everything or `wait_ms`
  // passes, then stops.  Returns false if something was left behind.
  bool finish(int wait_ms);
  RemoteStatus status();

 private:
  void run();
  Status session(RemoteLink& link);
  Status resume(const ServerState& srv, const Manifest& m, ShipCursor& c);
  Status read_replies(remote::Conn& conn, const Manifest& m, ShipCursor& c);
  bool trim_spool(const ShipCursor& c);
  Result<bool> ship_journal(remote::Conn& conn, ShipCursor& c);
  Result<bool> ship_base(remote::Conn& conn, ShipCursor& c);
  void account(ShipCursor& c, bool trimmed);
  bool all_shipped(const ShipCursor& c);
  void set_error(const std::string& e);

  ShipperConfig cfg_;
  AckGate* gate_;
  std::function<uint64_t()> local_durable_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> finishing_{false};
  std::atomic<bool> caught_up_{false};
  std::mutex mu_;
  RemoteStatus status_;
};

}  // namespace kvmcdp
