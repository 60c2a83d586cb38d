// The server side of the NBD protocol (include/kvmcdp/nbd_format.h) that
// kvmcdp's two NBD servers share: mirror capture's receiver
// (nbd_receiver.h) and kvmcdp export (export/export_server.h).  Big-endian
// field access, whole sends and receives, and the handshake up to the
// transmission phase.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace kvmcdp::nbd {

inline uint16_t get16(const uint8_t* p) { return uint16_t(p[0] << 8 | p[1]); }
inline uint32_t get32(const uint8_t* p) { return uint32_t(get16(p)) << 16 | get16(p + 2); }
inline uint64_t get64(const uint8_t* p) { return uint64_t(get32(p)) << 32 | get32(p + 4); }
void put16(std::vector<uint8_t>* b, uint16_t v);
void put32(std::vector<uint8_t>* b, uint32_t v);
void put64(std::vector<uint8_t>* b, uint64_t v);

// kQemu errors that start with "NBD client: " (the peer of both servers).
Status protocol_error(const std::string& what);
// Sends all of p (waiting on a full non-blocking socket).
Status send_all(int fd, const uint8_t* p, size_t n);
// Receives exactly n bytes by `deadline`.
Status recv_exact(int fd, uint8_t* p, size_t n, std::chrono::steady_clock::time_point deadline);

struct ExportInfo {
  uint64_t size = 0;
  uint16_t transmission_flags = 0;
  std::string name;          // the one export; a client asking for another is refused
  bool any_name = false;     // capture: whatever name QEMU asks for
  uint32_t max_block = 0;    // announced with NBD_INFO_BLOCK_SIZE
  bool structured = false;   // offer structured replies and base:allocation
};

// What the client chose in the handshake.
struct Negotiated {
  bool structured = false;       // structured replies
  bool base_allocation = false;  // metadata context base:allocation (id 1)
};

// The fixed newstyle handshake until the client's NBD_OPT_GO (or
// NBD_OPT_EXPORT_NAME).  Options the server does not implement (TLS,
// extended headers; structured replies and metadata contexts unless
// `e.structured`) are answered NBD_REP_ERR_UNSUP, so the client falls back.
Status server_handshake(int fd, const ExportInfo& e, int timeout_ms,
                        Negotiated* chosen = nullptr);

}  // namespace kvmcdp::nbd
