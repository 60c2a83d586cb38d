// Asks a QMP monitor of a running QEMU for its version every 20 ms, in the
// background, and keeps the longest answer time: a main loop blocked
// (inside the cdp filter, say) shows here.  Give it a monitor of its own:
// a QMP socket serves one client at a time.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include <doctest/doctest.h>

#include "qemu/qmp_client.h"

namespace kvmcdp::test {

class MonitorProbe {
 public:
  explicit MonitorProbe(const std::string& socket) {
    auto c = QmpClient::connect(socket, std::chrono::milliseconds(5000));
    if (!c) FAIL("cannot reach the monitor: " << c.status().message());
    client_ = std::move(*c);
    thread_ = std::thread([this] {
      using Clock = std::chrono::steady_clock;
      while (!stop_) {
        auto t0 = Clock::now();
        QmpReply r =
            client_->execute("query-version", json::object(), std::chrono::milliseconds(60000));
        long took =
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
        if (!r.ok()) break;  // QEMU quit
        worst_ = std::max<long>(worst_, took);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
  }
  ~MonitorProbe() { finish(); }
  MonitorProbe(const MonitorProbe&) = delete;
  MonitorProbe& operator=(const MonitorProbe&) = delete;

  // Stops probing; the longest answer time in milliseconds.
  long finish() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    return worst_;
  }

 private:
  std::unique_ptr<QmpClient> client_;
  std::atomic<bool> stop_{false};
  std::atomic<long> worst_{0};
  std::thread thread_;
};

}  // namespace kvmcdp::test
