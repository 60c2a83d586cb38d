// A growable byte buffer that, unlike std::vector<uint8_t>, does not zero
// what it grows into: the writer's hot path grows by a zstd bound per
// frame and overwrites every byte it keeps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>

namespace kvmcdp::journal {

class ByteBuf {
 public:
  ByteBuf() = default;
  // A moved-from buffer is empty with no storage (the defaulted move would
  // leave it claiming the capacity it gave away).  Buffers are moved
  // between the writer and its compression thread to be reused.
  ByteBuf(ByteBuf&& o) noexcept { *this = std::move(o); }
  ByteBuf& operator=(ByteBuf&& o) noexcept {
    p_ = std::move(o.p_);
    size_ = o.size_;
    cap_ = o.cap_;
    o.size_ = o.cap_ = 0;
    return *this;
  }
  uint8_t* data() { return p_.get(); }
  const uint8_t* data() const { return p_.get(); }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  void clear() { size_ = 0; }
  // Grows (contents kept, new bytes uninitialized) or shrinks.
  void resize(size_t n) {
    if (n > cap_) {
      size_t cap = cap_ ? cap_ : 4096;
      while (cap < n) cap *= 2;
      std::unique_ptr<uint8_t[]> q(new uint8_t[cap]);
      if (size_) std::memcpy(q.get(), p_.get(), size_);
      p_ = std::move(q);
      cap_ = cap;
    }
    size_ = n;
  }

 private:
  std::unique_ptr<uint8_t[]> p_;
  size_t size_ = 0, cap_ = 0;
};

}  // namespace kvmcdp::journal
