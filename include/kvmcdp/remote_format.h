// The protocol between `kvmcdp protect --remote` (the client) and
// `kvmcdp serve` (the backup server).  Prose specification with a worked
// example: man/kvmcdp-remote.5.
//
// The client mirrors its local journal onto the server, file by file and
// byte for byte: segment bytes are shipped as whole frames exactly as
// they are on the client's disk, so the server never recompresses, and a
// server store is an ordinary store (restore, points, verify, build and
// prune work on it unchanged).  The base copy is shipped once, sparse.
//
// Transport: a byte stream (a TCP connection, or the stdin/stdout of
// `kvmcdp serve --stdio` run by ssh).  Every message is one 32-byte
// header, little-endian, then payload_len bytes:
//
//   offset size field
//        0    4 magic        0x5244434b ("KCDR" as bytes)
//        4    2 type         MsgType below
//        6    2 flags        0
//        8    4 payload_len  bytes that follow this header
//       12    4 reserved     0
//       16    8 a            per type, below
//       24    8 b            per type, below
//
// Conversation:
//   client: HELLO            a: version; payload JSON {"store", "nonce"}
//   server: CHALLENGE        payload JSON {"auth": "secret"|"none", "nonce"}
//   client: AUTH             payload JSON {"proof"}   (HMAC, see below)
//   server: WELCOME          payload JSON {"proof", "state": {...}}
//        or ERROR            payload: a one-line reason; then it closes
//   client: MANIFEST         payload: the client's manifest.json
//   then, in any interleaving:
//   client: SEGMENT_DATA     a: segment number, b: offset in the segment;
//                            payload: bytes starting exactly at the end of
//                            the server's copy: the segment header (at 0)
//                            and/or whole frames
//   client: SEGMENT_SEAL     a: segment, b: its final size; payload: the
//                            segment's .idx file
//   client: BASE_DATA        a: offset in the disk; payload: data
//   client: BASE_DONE        a: disk size, b: base_complete_seq;
//                            payload JSON {"time_ns"}
//   server: ACK              a: last seq durable in the server's journal,
//                            b: time_ns of that record
//   server: BASE_ACK         the base copy is durable and in the manifest
//   server: ERROR            as above
//
// Authentication ("secret"): both sides prove they hold the store's
// secret without sending it, each over both nonces, so neither a client
// nor a server without it gets past WELCOME:
//   client proof = HMAC-SHA256(secret, "kvmcdp-client\0" store \0
//                                       client nonce \0 server nonce)
//   server proof = the same with "kvmcdp-server\0".
// Over ssh the server runs as the ssh user with a path fixed on its
// command line; ssh has authenticated both ends, so "auth" is "none".
#pragma once

#include <cstdint>

namespace kvmcdp::remote {

inline constexpr uint32_t kMagic = 0x5244434b;
inline constexpr uint32_t kVersion = 1;
inline constexpr uint32_t kHeaderSize = 32;
// A message never carries more: the largest frame (a 64 MiB raw limit,
// compressed) or a control payload.  Bounds what a peer can make us
// allocate before anything is checked.
inline constexpr uint32_t kMaxPayload = 80u << 20;

enum class MsgType : uint16_t {
  kHello = 1,
  kAuth = 2,
  kManifest = 3,
  kSegmentData = 4,
  kSegmentSeal = 5,
  kBaseData = 6,
  kBaseDone = 7,
  kChallenge = 64,
  kWelcome = 65,
  kAck = 66,
  kBaseAck = 67,
  kError = 68,
};

struct MsgHeader {
  uint16_t type = 0;
  uint32_t payload_len = 0;
  uint64_t a = 0;
  uint64_t b = 0;
};

}  // namespace kvmcdp::remote
