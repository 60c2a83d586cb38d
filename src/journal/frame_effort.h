// How much zstd a journal frame gets: stored, zstd's fast level, or the
// configured level, judged from 64 KiB probes in its middle.
//
// zstd level 1 costs several times more CPU per byte on data that
// barely compresses (fio's buffers, already compressed files, encrypted
// disks) than on text: 1 MiB frames of fio's buffers, which it shrinks
// by 13%, go through it at ~190 MB/s on the bench machine, text that it
// shrinks by 58% at ~185 MB/s, and compressing fio's writes held the
// guest back.  zstd's fast level -5 shrinks those buffers by 10% at
// ~600 MB/s (but text by only 41%, and data whose only redundancy is in
// its byte frequencies not at all: fast levels leave literals raw).  So:
// a frame whose probe saves less than 1/16 is stored; one that saves less
// than 1/4 is stored while there is a backlog (frames queue for the
// compression threads, or records for the receiver: then kvmcdp is what
// holds the stream back, and so the guest; a 16 KiB probe decides), and
// otherwise compressed at level -5 if a second probe at that level still
// saves 1/16, else at the configured level; the rest at the configured
// level.
#pragma once

#include <zstd.h>

#include "journal/journal_bytebuf.h"

namespace kvmcdp::journal {

enum class Effort { kStore, kFast, kFull };
inline constexpr int kFastLevel = -5;
inline constexpr size_t kProbe = 64 << 10;  // bytes of a frame's middle

// `cctx` is set to `level` and left so; `backlog`: frames wait for the
// compression threads or records for the journal; `probe_out` is scratch
// space, reused.
Effort effort_for(ZSTD_CCtx* cctx, int level, const ByteBuf& raw, bool backlog,
                  ByteBuf* probe_out);

}  // namespace kvmcdp::journal
