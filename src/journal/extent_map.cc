#include "journal/extent_map.h"

#include <algorithm>
#include <cassert>

namespace kvmcdp {

void ExtentMap::uncovered(uint64_t begin, uint64_t end,
                          const std::function<void(uint64_t, uint64_t)>& gap) const {
  if (begin >= end) return;
  auto it = m_.upper_bound(begin);
  if (it != m_.begin()) {
    auto p = std::prev(it);
    if (p->second > begin) begin = p->second;
  }
  for (; begin < end; ++it) {
    uint64_t next = (it == m_.end()) ? end : std::min(end, it->first);
    if (next > begin) gap(begin, next);
    if (it == m_.end()) break;
    begin = std::max(begin, it->second);
  }
}

void ExtentMap::cover(uint64_t begin, uint64_t end,
                      const std::function<void(uint64_t, uint64_t)>& gap) {
  if (begin >= end) return;
  uncovered(begin, end, [&](uint64_t b, uint64_t e) {
    covered_ += e - b;
    if (gap) gap(b, e);
  });
  // Merge [begin, end) with every extent it touches or abuts.
  auto it = m_.upper_bound(begin);
  if (it != m_.begin() && std::prev(it)->second >= begin) --it;
  uint64_t nb = begin, ne = end;
  while (it != m_.end() && it->first <= ne) {
    nb = std::min(nb, it->first);
    ne = std::max(ne, it->second);
    it = m_.erase(it);
  }
  auto placed = m_.emplace(nb, ne).first;
  // Disjoint and not abutting: uncovered() and covers() read the map so.
  assert(placed == m_.begin() || std::prev(placed)->second < nb);
  assert(std::next(placed) == m_.end() || std::next(placed)->first > ne);
  (void)placed;
}

}  // namespace kvmcdp
