// The stream protocol between QEMU's cdp filter (qemu-patch/) and kvmcdp.
// Prose specification with a worked example: man/kvmcdp-wire.5.
//
// Transport: a stream socket (unix, or an fd passed to QEMU with getfd).
// kvmcdp listens, the filter connects.  Every message in both directions is
// one 48-byte header, little-endian, followed by payload_len bytes:
//
//   offset size field
//        0    4 magic        0x5044434b ("KCDP" read as bytes K C D P)
//        4    2 type         MsgType below
//        6    2 flags        MsgFlag bits below
//        8    8 seq          sequence number (per filter instance, from 1)
//       16    8 time_ns      CLOCK_REALTIME in ns when seq was assigned
//       24    8 offset       byte offset on the disk
//       32    8 length       bytes of the disk affected
//       40    4 payload_len  bytes that follow this header
//       44    4 aux          HELLO: the highest protocol version the filter
//                             speaks; HELLO_REPLY: the version both use
//                             (the lower of the two); otherwise 0
//
// Filter -> kvmcdp, after connect: HELLO, then records in strictly
// increasing seq order (WRITE, WRITE_ZEROES, DISCARD, FLUSH, MARK, GAP,
// RESYNC_DONE); seqs are consecutive except where a GAP says which are
// missing.  kvmcdp -> filter: HELLO_REPLY once, then ACKs (and, in
// version 2, RECEIVED acks).
// There is no checksum: the socket is local, and the journal checksums
// what it stores.
//
// Version 3 moves the records (not HELLO) off the socket into a ring in
// shared memory that kvmcdp creates and passes with HELLO_REPLY
// (SCM_RIGHTS): the same bytes, header and payload, that version 2 sends,
// with no system call per batch on either side.  The socket stays for
// HELLO, HELLO_REPLY, ACK and RECEIVED, and carries wake-ups: one byte
// from the filter when kvmcdp said it sleeps, a RECEIVED from kvmcdp when
// the filter said it waits for ring space.  Layout below (RingHeader).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kvmcdp::wire {

inline constexpr uint32_t kMagic = 0x5044434b;
// Version 1: ACK only.  Version 2 adds RECEIVED: the filter frees a
// record's payload once kvmcdp has it, and only flushes (and sync-mode
// writes) wait for ACK.
// Version 3 adds the shared-memory ring.
inline constexpr uint32_t kVersion = 3;
inline constexpr uint32_t kMinVersion = 1;
inline constexpr uint32_t kVersionReceived = 2;
inline constexpr uint32_t kVersionRing = 3;
inline constexpr uint32_t kHeaderSize = 48;
// A WRITE never carries more than this; the filter splits larger requests.
inline constexpr uint32_t kMaxPayload = 4u << 20;

enum class MsgType : uint16_t {
  // filter -> kvmcdp
  kHello = 1,        // seq: last seq assigned so far; length: disk size;
                     // offset: stream id (random, fixed per filter
                     // instance); payload: node name; flags: kFlagGap if a
                     // dirty bitmap is pending resync.
  kWrite = 2,        // payload: the data written (payload_len == length)
  kWriteZeroes = 3,  // flags may hold kFlagUnmap
  kDiscard = 4,      // restore writes zeroes for it: raw files and qcow2
                     // images without a backing file read zeroes after it.
                     // The filter guarantees it: it sends kDiscard only if
                     // the range reads back as zeroes after the discard;
                     // otherwise it sends the data read back as a kWrite
                     // (a discard is at most kMaxPayload), and nothing if
                     // the disk ignores discards (discard=ignore).
  kFlush = 5,        // the guest asked for durability of all seq < this
  kMark = 6,         // payload: the mark's name (UTF-8, no NUL)
  kGap = 7,          // records after the last one kvmcdp acked were dropped;
                     // offset: first seq that is missing; the dirty ranges
                     // follow as kWrite records with kFlagResync
  kResyncDone = 8,   // every dirty range was resent: the disk equals the
                     // replay of all records up to this seq again
  // kvmcdp -> filter
  kHelloReply = 64,  // seq: last seq kvmcdp holds durably for this stream
                     // id (0 if none); the filter resends what follows
  kAck = 65,         // every record with seq <= this is durable
  kReceived = 66,    // version 2: every record with seq <= this is in
                     // kvmcdp's hands (its memory or the journal file),
                     // not yet durable.  The filter may free their
                     // payloads; if the stream ends before their ACK, it
                     // resends their ranges as a GAP and a resync.
};

enum MsgFlag : uint16_t {
  kFlagUnmap = 1u << 0,   // kWriteZeroes: the guest allowed unmapping
  kFlagFua = 1u << 1,     // kWrite: forced unit access
  kFlagResync = 1u << 2,  // kWrite: re-read from disk to close a gap
  kFlagGap = 1u << 3,     // kHello: a resync is pending
};

struct MsgHeader {
  uint32_t magic;
  uint16_t type;
  uint16_t flags;
  uint64_t seq;
  uint64_t time_ns;
  uint64_t offset;
  uint64_t length;
  uint32_t payload_len;
  uint32_t aux;
};
static_assert(sizeof(MsgHeader) == kHeaderSize);

std::string_view type_name(MsgType t);

// The ring of version 3: a sealed memfd (F_SEAL_SHRINK | F_SEAL_GROW |
// F_SEAL_SEAL, so neither side can make the other's mapping fault) of
// kRingHeaderSize + data_size bytes.  The header page holds, each on a
// cache line of its own, little-endian:
//
//   offset size field
//        0    4 magic            kRingMagic
//        4    4 version          kRingVersion
//        8    8 data_size        a power of two, >= kRingMinData
//       64    8 head             bytes the filter has published (ever)
//      128    8 tail             bytes kvmcdp has taken (ever)
//      192    4 consumer_sleeps  kvmcdp: 1 before it waits on the socket
//      256    4 producer_waits   the filter: 1 when a record does not fit
//
// The data area follows at kRingHeaderSize; stream byte N is at
// N mod data_size, and a message may wrap around its end.  The filter
// copies whole messages in at head, then publishes head (release); kvmcdp
// reads up to head (acquire) and publishes tail once it has copied a
// message out.  head - tail never exceeds data_size.  A side that finds
// the other's flag set swaps it to 0 and wakes it through the socket.
inline constexpr uint32_t kRingMagic = 0x52444b43;  // "CKDR" as bytes
inline constexpr uint32_t kRingVersion = 1;
inline constexpr uint64_t kRingHeaderSize = 4096;
inline constexpr uint64_t kRingMinData = 8u << 20;   // the largest message fits
inline constexpr uint64_t kRingMaxData = 1u << 30;
inline constexpr size_t kRingHeadOffset = 64;
inline constexpr size_t kRingTailOffset = 128;
inline constexpr size_t kRingConsumerSleepsOffset = 192;
inline constexpr size_t kRingProducerWaitsOffset = 256;

}  // namespace kvmcdp::wire
