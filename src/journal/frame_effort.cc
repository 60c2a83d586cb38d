#include "journal/frame_effort.h"

namespace kvmcdp::journal {
namespace {

// Bytes a 64 KiB piece of the frame's middle shrinks by, at the cctx's level.
size_t probe_saving(ZSTD_CCtx* cctx, const ByteBuf& raw, ByteBuf* probe_out) {
  constexpr size_t kProbe = 64 << 10;
  const uint8_t* at = raw.data() + (raw.size() - kProbe) / 2;
  probe_out->resize(ZSTD_compressBound(kProbe));
  size_t n = ZSTD_compress2(cctx, probe_out->data(), probe_out->size(), at, kProbe);
  if (ZSTD_isError(n)) return kProbe;  // let the real compression say what is wrong
  return n < kProbe ? kProbe - n : 0;
}

}  // namespace

Effort effort_for(ZSTD_CCtx* cctx, int level, const ByteBuf& raw, bool backlog,
                  ByteBuf* probe_out) {
  constexpr size_t kProbe = 64 << 10;
  if (raw.size() < 2 * kProbe) return Effort::kFull;  // small: the probe would be the frame
  size_t saved = probe_saving(cctx, raw, probe_out);
  if (saved >= kProbe / 4) return Effort::kFull;
  if (saved < kProbe / 16 || backlog) return Effort::kStore;
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, kFastLevel);
  size_t fast = probe_saving(cctx, raw, probe_out);
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
  return fast >= kProbe / 16 ? Effort::kFast : Effort::kFull;
}

}  // namespace kvmcdp::journal
