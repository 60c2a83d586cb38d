// A set of disjoint byte ranges [begin, end), merged on insert.  The
// restore engine uses it to remember which bytes of the output already
// have their newest version, so every output byte is written once.
#pragma once

#include <cstdint>
#include <functional>
#include <map>

namespace kvmcdp {

class ExtentMap {
 public:
  // Calls gap(b, e) for each part of [begin, end) not yet covered, in
  // ascending order, then marks all of [begin, end) covered.
  void cover(uint64_t begin, uint64_t end,
             const std::function<void(uint64_t, uint64_t)>& gap);
  // Calls gap(b, e) for each uncovered part of [begin, end) (no change).
  void uncovered(uint64_t begin, uint64_t end,
                 const std::function<void(uint64_t, uint64_t)>& gap) const;
  uint64_t covered_bytes() const { return covered_; }
  size_t extent_count() const { return m_.size(); }
  // Covers everything in [0, size): nothing more can change.
  bool covers(uint64_t size) const {
    return m_.size() == 1 && m_.begin()->first == 0 && m_.begin()->second >= size;
  }

 private:
  std::map<uint64_t, uint64_t> m_;  // begin -> end
  uint64_t covered_ = 0;
};

}  // namespace kvmcdp
