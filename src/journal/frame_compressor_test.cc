#include "journal/frame_compressor.h"

#include <doctest/doctest.h>

#include <zstd.h>

#include <condition_variable>
#include <mutex>
#include <cstring>
#include <iterator>
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

std::vector<uint8_t> gather(const iovec* iov, size_t iovcnt) {
  std::vector<uint8_t> v;
  for (size_t i = 0; i < iovcnt; i++) {
    auto p = static_cast<const uint8_t*>(iov[i].iov_base);
    v.insert(v.end(), p, p + iov[i].iov_len);
  }
  return v;
}

// Collects what the sink gets; read only after drain().
struct Sunk {
  std::vector<FrameHeader> headers;
  std::vector<std::vector<uint8_t>> frames;
  FrameCompressor::Sink sink() {
    return [this](const FrameHeader& h, const iovec* iov, size_t iovcnt) {
      headers.push_back(h);
      frames.push_back(gather(iov, iovcnt));
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

// Noise (kind 0), noise with every 32nd byte zero (kind 1: about 1/64
// could be saved), noise with every 4th byte zero (kind 3: about 1/7)
// and text-like bytes (kind 2).
static ByteBuf sample_bytes(size_t n, int kind) {
  ByteBuf b;
  b.resize(n);
  uint64_t x = 88172645463325252ull;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    uint8_t v = uint8_t(x);
    if (kind == 1 && i % 32 == 0) v = 0;
    if (kind == 3 && i % 4 == 0) v = 0;
    if (kind == 2) v = uint8_t("the quick brown fox "[i % 20] + (x % 97 == 0));
    b.data()[i] = v;
  }
  return b;
}

static bool stored_frame(const std::vector<uint8_t>& frame, size_t raw) {
  size_t blocks = (raw + (128 << 10) - 1) / (128 << 10);
  return frame.size() == kFrameHeaderSize + 9 + 3 * blocks + raw;
}

TEST_CASE("frame compressor: frames zstd cannot shrink by 1/16 are stored, and still decode") {
  // The stored ones are zstd frames of raw blocks: any zstd reads them back.
  Sunk out;
  FrameCompressor c(1, 0, 2, 4, out.sink());
  const size_t sizes[] = {1 << 20, (1 << 20) + 4096 + 40, 300000, 128 << 10, 4096};
  std::vector<ByteBuf> want;
  uint64_t seq = 0;
  for (int kind : {0, 1, 2}) {
    for (size_t n : sizes) {
      want.push_back(sample_bytes(n, kind));
      ByteBuf copy;
      copy.resize(n);
      std::memcpy(copy.data(), want.back().data(), n);
      c.submit(std::move(copy), header(++seq));
    }
  }
  REQUIRE(c.drain());
  REQUIRE(out.frames.size() == want.size());
  for (size_t i = 0; i < want.size(); i++) {
    CAPTURE(i);
    const auto& frame = out.frames[i];
    FrameHeader back;
    REQUIRE(!decode_frame_header(frame.data(), &back));
    size_t n = want[i].size();
    const uint8_t* payload = frame.data() + kFrameHeaderSize;
    bool text = i >= 2 * std::size(sizes);
    if (n >= (128 << 10) && !text) {
      // Stored: 9 bytes of frame header, 3 per 128 KiB block, the bytes.
      CHECK(stored_frame(frame, n));
      CHECK(std::memcmp(payload + 9 + 3, want[i].data(), 1000) == 0);
    } else if (text) {
      CHECK(back.payload_len < n / 4);
    }
    CHECK(ZSTD_getFrameContentSize(payload, back.payload_len) == n);
    std::vector<uint8_t> raw;
    REQUIRE(!decode_payload(back, payload, &raw));
    CHECK(std::vector<uint8_t>(want[i].data(), want[i].data() + n) == raw);
  }
}

TEST_CASE("frame compressor: data that compresses a little is stored only while frames queue") {
  // Kind 3 saves about 1/7: compressed when the thread keeps up, stored
  // while other frames wait for it.  One thread; the sink holds the first
  // frame until all are submitted, so frames 2 and 3 are taken with frames
  // queued behind them, and the last one with none.
  const size_t n = 1 << 20;
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::vector<std::vector<uint8_t>> frames;
  auto sink = [&](const FrameHeader&, const iovec* iov, size_t iovcnt) {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return release; });
    frames.push_back(gather(iov, iovcnt));
    return Status::ok();
  };
  {
    FrameCompressor c(1, 0, 1, 8, sink);
    for (uint64_t i = 1; i <= 4; i++) c.submit(sample_bytes(n, 3), header(i));
    {
      std::lock_guard<std::mutex> l(mu);
      release = true;
    }
    cv.notify_all();
    REQUIRE(c.drain());
    // Then one at a time: nothing waits, so each is compressed.
    for (uint64_t i = 5; i <= 6; i++) {
      c.submit(sample_bytes(n, 3), header(i));
      REQUIRE(c.drain());
    }
  }
  REQUIRE(frames.size() == 6);
  CHECK(stored_frame(frames[1], n));
  CHECK(stored_frame(frames[2], n));
  CHECK(!stored_frame(frames[3], n));
  CHECK(frames[3].size() < n - n / 16);
  CHECK(!stored_frame(frames[4], n));
  CHECK(!stored_frame(frames[5], n));
}

TEST_CASE("frame compressor: data that compresses a little is stored while the source is ahead") {
  // Nothing queues (one frame at a time), but the caller says its own
  // source waits for it: kind 3 (saves ~1/7) is stored, text still
  // compressed; once the source is no longer ahead, kind 3 is compressed.
  const size_t n = 1 << 20;
  Sunk out;
  FrameCompressor c(1, 0, 1, 8, out.sink());
  c.set_source_ahead(true);
  c.submit(sample_bytes(n, 3), header(1));
  REQUIRE(c.drain());
  c.submit(sample_bytes(n, 2), header(2));
  REQUIRE(c.drain());
  c.set_source_ahead(false);
  c.submit(sample_bytes(n, 3), header(3));
  REQUIRE(c.drain());
  REQUIRE(out.frames.size() == 3);
  CHECK(stored_frame(out.frames[0], n));
  CHECK(out.frames[1].size() < n / 4);
  CHECK(!stored_frame(out.frames[2], n));
  CHECK(out.frames[2].size() < n - n / 16);
}

TEST_CASE("frame compressor: a sink error stops the frames after it, for good") {
  std::vector<uint64_t> sunk;
  FrameCompressor c(1, 0, 2, 3, [&](const FrameHeader& h, const iovec*, size_t) {
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
