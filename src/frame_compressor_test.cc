#include "frame_compressor.h"

#include <doctest/doctest.h>

#include <vector>

namespace kvmcdp::journal {
namespace {

// A frame's raw bytes: a repeating pattern of `n` bytes, told apart by seed.
ByteBuf raw_frame(size_t n, uint8_t seed) {
  ByteBuf b;
  b.resize(n);
  for (size_t i = 0; i < n; i++) b.data()[i] = uint8_t(seed + (i % 251));
  return b;
}

FrameHeader header(uint64_t seq) {
  FrameHeader h;
  h.first_seq = h.last_seq = seq;
  h.first_ns = h.last_ns = seq * 10;
  h.count = 1;
  return h;
}

}  // namespace

TEST_CASE("frame compressor: many frames in flight come out in order and decode") {
  // max_in_flight 2 with 40 frames: submit waits for the thread again and
  // again, and frames are drained both in small and in large batches.
  FrameCompressor c(1, 0, 2);
  uint64_t seq = 0, drained = 0;
  for (size_t batch : {1u, 3u, 40u, 2u}) {
    for (size_t k = 0; k < batch; k++) {
      seq++;
      ByteBuf next = c.submit(raw_frame(1000 + seq * 37, uint8_t(seq)), header(seq));
      CHECK(next.empty());  // a buffer to fill: reused, but emptied
    }
    REQUIRE(c.drain([&](const FrameHeader& h, const uint8_t* frame, size_t n) {
      drained++;
      CHECK(h.first_seq == drained);
      CHECK(n == kFrameHeaderSize + h.payload_len);
      FrameHeader back;
      REQUIRE(!decode_frame_header(frame, &back));
      CHECK(back.first_seq == drained);
      CHECK(back.raw_len == 1000 + drained * 37);
      std::vector<uint8_t> raw;
      REQUIRE(!decode_payload(back, frame + kFrameHeaderSize, &raw));
      ByteBuf want = raw_frame(back.raw_len, uint8_t(drained));
      CHECK(std::vector<uint8_t>(want.data(), want.data() + want.size()) == raw);
    }));
    CHECK(drained == seq);
  }
}

TEST_CASE("frame compressor: drain with nothing submitted returns at once") {
  FrameCompressor c(1, 0, 4);
  int calls = 0;
  REQUIRE(c.drain([&](const FrameHeader&, const uint8_t*, size_t) { calls++; }));
  CHECK(calls == 0);
}

TEST_CASE("frame compressor: destroyed with frames still queued") {
  // Must neither hang nor touch freed jobs (the writer discards a failed
  // batch this way).
  auto c = std::make_unique<FrameCompressor>(1, 0, 8);
  for (uint64_t s = 1; s <= 8; s++) (void)c->submit(raw_frame(200000, uint8_t(s)), header(s));
  c.reset();
  CHECK(!c);
}

}  // namespace kvmcdp::journal
