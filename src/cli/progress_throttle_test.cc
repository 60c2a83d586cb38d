#include "cli/progress_throttle.h"

#include <doctest/doctest.h>

namespace kvmcdp {

TEST_CASE("progress throttle: first, then at most one redraw per interval, final always") {
  using namespace std::chrono_literals;
  ProgressThrottle t(200ms);
  ProgressThrottle::Clock::time_point t0{};
  CHECK(t.due(t0, false));
  // 700 reports within 100 ms (what a small restore sends): none redrawn.
  int drawn = 0;
  for (int i = 1; i <= 700; i++) drawn += t.due(t0 + i * 100ms / 700, false);
  CHECK(drawn == 0);
  CHECK(t.due(t0 + 200ms, false));
  CHECK_FALSE(t.due(t0 + 399ms, false));
  CHECK(t.due(t0 + 400ms, false));
  // The final report is drawn even right after another.
  CHECK(t.due(t0 + 401ms, true));
}

}  // namespace kvmcdp
