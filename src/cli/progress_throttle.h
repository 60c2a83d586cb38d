// How often a progress line is redrawn.  A restore reports progress for
// every journal frame and base extent, hundreds of times in a fraction of
// a second; redrawing each time floods a slow terminal (or an ssh
// session) for nothing.  A redraw is due when the last one is `every`
// old, and always for the first report and for the final one (100%), so
// the line never stops short of the end.
#pragma once

#include <chrono>
#include <optional>

namespace kvmcdp {

class ProgressThrottle {
 public:
  using Clock = std::chrono::steady_clock;
  explicit ProgressThrottle(Clock::duration every = std::chrono::milliseconds(200))
      : every_(every) {}
  // Whether to redraw now; `final`: the report that completes the work.
  bool due(Clock::time_point now, bool final) {
    if (!final && last_ && now - *last_ < every_) return false;
    last_ = now;
    return true;
  }

 private:
  Clock::duration every_;
  std::optional<Clock::time_point> last_;
};

}  // namespace kvmcdp
