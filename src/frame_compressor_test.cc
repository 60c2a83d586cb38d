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

// Collects what the sink gets; read only after drain().
struct Sunk {
  std::vector<FrameHeader> headers;
  std::vector<std::vector<uint8_t>> frames;
  FrameCompressor::Sink sink() {
    return [this](const FrameHeader& h, const uint8_t* f, size_t n) {
      headers.push_back(h);
      frames.emplace_back(f, f + n);
      return Status::ok();
    };
  }
};

TEST_CASE("frame compressor: many frames in flight are sunk in order and decode") {
  // max_in_flight 2 with 40 frames: submit waits for the thread again and
  // again, and frames are drained both in small and in large batches.
  for (size_t threads : {1u, 3u}) {
    CAPTURE(threads);
    Sunk out;
    FrameCompressor c(1, 0, threads, 2, out.sink());
    uint64_t seq = 0;
    for (size_t batch : {1u, 3u, 40u, 2u}) {
      for (size_t k = 0; k < batch; k++) {
        seq++;
        ByteBuf next = c.submit(raw_frame(1000 + seq * 37, uint8_t(seq)), header(seq));
        CHECK(next.empty());  // a buffer to fill: reused, but emptied
      }
      REQUIRE(c.drain());
      REQUIRE(out.frames.size() == seq);
    }
    for (uint64_t i = 1; i <= seq; i++) {
      const auto& frame = out.frames[i - 1];
      CHECK(out.headers[i - 1].first_seq == i);
      FrameHeader back;
      REQUIRE(!decode_frame_header(frame.data(), &back));
      CHECK(back.first_seq == i);
      CHECK(back.raw_len == 1000 + i * 37);
      CHECK(frame.size() == kFrameHeaderSize + back.payload_len);
      std::vector<uint8_t> raw;
      REQUIRE(!decode_payload(back, frame.data() + kFrameHeaderSize, &raw));
      ByteBuf want = raw_frame(back.raw_len, uint8_t(i));
      CHECK(std::vector<uint8_t>(want.data(), want.data() + want.size()) == raw);
    }
  }
}

TEST_CASE("frame compressor: a sink error stops the frames after it, for good") {
  std::vector<uint64_t> sunk;
  FrameCompressor c(1, 0, 2, 3, [&](const FrameHeader& h, const uint8_t*, size_t) {
    if (h.first_seq == 4) return Status(ErrorKind::kFailure, "disk says no");
    sunk.push_back(h.first_seq);
    return Status::ok();
  });
  for (uint64_t s = 1; s <= 9; s++) (void)c.submit(raw_frame(5000, uint8_t(s)), header(s));
  Status st = c.drain();
  REQUIRE(!st);
  CHECK(st.message() == "disk says no");
  CHECK(sunk == std::vector<uint64_t>{1, 2, 3});
  (void)c.submit(raw_frame(10, 1), header(10));
  CHECK(!c.drain());
  CHECK(sunk.size() == 3);
}

TEST_CASE("frame compressor: drain with nothing submitted returns at once") {
  Sunk out;
  FrameCompressor c(1, 0, 2, 4, out.sink());
  REQUIRE(c.drain());
  CHECK(out.frames.empty());
}

TEST_CASE("frame compressor: destroyed with frames still queued") {
  // Must neither hang nor touch freed jobs.
  Sunk out;
  auto c = std::make_unique<FrameCompressor>(1, 0, 2, 8, out.sink());
  for (uint64_t s = 1; s <= 8; s++) (void)c->submit(raw_frame(200000, uint8_t(s)), header(s));
  c.reset();
  // What got through before the stop is a prefix, in order.
  for (size_t i = 0; i < out.headers.size(); i++) CHECK(out.headers[i].first_seq == i + 1);
}

}  // namespace kvmcdp::journal
