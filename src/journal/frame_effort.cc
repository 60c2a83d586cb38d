#include "journal/frame_effort.h"

namespace kvmcdp::journal {
namespace {

// Bytes a `probe`-byte piece of the frame's middle shrinks by, at the
// cctx's level.
size_t probe_saving(ZSTD_CCtx* cctx, const ByteBuf& raw, size_t probe, ByteBuf* probe_out) {
  const uint8_t* at = raw.data() + (raw.size() - probe) / 2;
  probe_out->resize(ZSTD_compressBound(probe));
  size_t n = ZSTD_compress2(cctx, probe_out->data(), probe_out->size(), at, probe);
  if (ZSTD_isError(n)) return probe;  // let the real compression say what is wrong
  return n < probe ? probe - n : 0;
}

}  // namespace

Effort effort_for(ZSTD_CCtx* cctx, int level, const ByteBuf& raw, bool backlog,
                  ByteBuf* probe_out) {
  if (raw.size() < 2 * kProbe) return Effort::kFull;  // small: the probe would be the frame
  // With a backlog the only question is whether the frame saves 1/4, and
  // a quarter of the probe answers it at a quarter of the cost (level 1
  // runs at ~190 MB/s on data it barely shrinks: a 64 KiB probe per 1 MiB
  // frame was a fifth of protect's CPU under fio's sequential writes).
  // A small probe sees less history, so it errs towards storing.
  if (backlog) {
    constexpr size_t kSmall = kProbe / 4;
    return probe_saving(cctx, raw, kSmall, probe_out) >= kSmall / 4 ? Effort::kFull
                                                                     : Effort::kStore;
  }
  size_t saved = probe_saving(cctx, raw, kProbe, probe_out);
  if (saved >= kProbe / 4) return Effort::kFull;
  if (saved < kProbe / 16) return Effort::kStore;
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, kFastLevel);
  size_t fast = probe_saving(cctx, raw, kProbe, probe_out);
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
  return fast >= kProbe / 16 ? Effort::kFast : Effort::kFull;
}

}  // namespace kvmcdp::journal
