// The NBD protocol as kvmcdp's capture server speaks it (mirror capture,
// man kvmcdp(1), CAPTURE MODES): the fixed newstyle handshake and simple
// replies of https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md.
// Everything on the wire is big-endian.
//
// Handshake (server first):
//   u64 kNbdMagic, u64 kIHaveOpt, u16 handshake flags (kFixedNewstyle |
//   kNoZeroes); the client answers u32 flags.  Then option requests
//   (u64 kIHaveOpt, u32 option, u32 length, data), each answered with
//   option replies (u64 kOptReplyMagic, u32 option, u32 type, u32 length,
//   data), until NBD_OPT_GO (or the old NBD_OPT_EXPORT_NAME, answered
//   with u64 size, u16 transmission flags and, without kNoZeroes, 124
//   zero bytes) starts the transmission phase.
//
// Transmission: requests are u32 kRequestMagic, u16 command flags, u16
// type, u64 cookie, u64 offset, u32 length, then `length` bytes for a
// WRITE; replies are u32 kSimpleReplyMagic, u32 error, u64 cookie.
// kvmcdp export also negotiates structured replies and the base:allocation
// metadata context: READ is then answered with data and hole chunks, and
// BLOCK_STATUS says which ranges read as zeroes without being stored.
#pragma once

#include <cstdint>

namespace kvmcdp::nbd {

inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943ull;  // "NBDMAGIC"
inline constexpr uint64_t kIHaveOpt = 0x49484156454f5054ull;  // "IHAVEOPT"
inline constexpr uint64_t kOptReplyMagic = 0x0003e889045565a9ull;
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kRequestHeaderSize = 28;
inline constexpr uint32_t kOptionHeaderSize = 16;

// Handshake flags (server) and client flags.
inline constexpr uint16_t kFixedNewstyle = 1u << 0;
inline constexpr uint16_t kNoZeroes = 1u << 1;

enum Option : uint32_t {
  kOptExportName = 1,
  kOptAbort = 2,
  kOptList = 3,
  kOptInfo = 6,
  kOptGo = 7,
  kOptStructuredReply = 8,
  kOptListMetaContext = 9,
  kOptSetMetaContext = 10,
};

enum OptReply : uint32_t {
  kRepAck = 1,
  kRepServer = 2,
  kRepInfo = 3,
  kRepMetaContext = 4,
  kRepErrUnsup = 0x80000001u,
  kRepErrInvalid = 0x80000003u,
  kRepErrUnknown = 0x80000006u,
};

enum Info : uint16_t {
  kInfoExport = 0,
  kInfoBlockSize = 3,
};

// Transmission flags.
inline constexpr uint16_t kHasFlags = 1u << 0;
inline constexpr uint16_t kReadOnly = 1u << 1;
inline constexpr uint16_t kSendFlush = 1u << 2;
inline constexpr uint16_t kSendFua = 1u << 3;
inline constexpr uint16_t kSendTrim = 1u << 5;
inline constexpr uint16_t kSendWriteZeroes = 1u << 6;

enum Command : uint16_t {
  kCmdRead = 0,
  kCmdWrite = 1,
  kCmdDisc = 2,
  kCmdFlush = 3,
  kCmdTrim = 4,
  kCmdWriteZeroes = 6,
  kCmdBlockStatus = 7,
};

// Command flags.
inline constexpr uint16_t kCmdFlagFua = 1u << 0;
inline constexpr uint16_t kCmdFlagNoHole = 1u << 1;
inline constexpr uint16_t kCmdFlagReqOne = 1u << 3;

// Structured replies (kvmcdp export only): u32 kStructuredReplyMagic, u16
// flags, u16 type, u64 cookie, u32 length, then `length` bytes.
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;
inline constexpr uint16_t kReplyFlagDone = 1u << 0;
enum ReplyType : uint16_t {
  kReplyNone = 0,
  kReplyOffsetData = 1,   // u64 offset, data
  kReplyOffsetHole = 2,   // u64 offset, u32 length: reads as zeroes
  kReplyBlockStatus = 5,  // u32 context id, {u32 length, u32 flags}...
  kReplyError = 0x8001,   // u32 error, u16 message length, message
};
// base:allocation, the one metadata context served (its id is 1).
inline constexpr const char* kBaseAllocation = "base:allocation";
inline constexpr uint32_t kStateHole = 1u << 0;
inline constexpr uint32_t kStateZero = 1u << 1;

// Error values in replies (the protocol's own numbers).
inline constexpr uint32_t kEio = 5;
inline constexpr uint32_t kEperm = 1;
inline constexpr uint32_t kEinval = 22;
inline constexpr uint32_t kEnospc = 28;
inline constexpr uint32_t kEnotsup = 95;

// Sizes kvmcdp's server announces: QEMU's NBD client splits writes and
// write-zeroes at kMaxBlock, so one request is at most one journal record
// (wire::kMaxPayload).
inline constexpr uint32_t kMinBlock = 1;
inline constexpr uint32_t kPreferredBlock = 4096;
inline constexpr uint32_t kMaxBlock = 4u << 20;
// Larger requests are refused (a client that ignored kMaxBlock).
inline constexpr uint32_t kMaxRequest = 32u << 20;

}  // namespace kvmcdp::nbd
