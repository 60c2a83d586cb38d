// Pins: what a long-running reader of a store (kvmcdp export, mount)
// leaves in DIR/pins/ while it reads, so that the commands that delete
// from a store leave its files alone and `status --store` can list it.
// An export reads the store's base and journal segments for as long as it
// runs (point_image.h), so prune does not fold the journal while a live
// pin exists (journal_fold.h would delete those files).  The format is in
// man kvmcdp-journal(5), PINS:
//
//   DIR/pins/<kind>-<pid>.json
//   {"kind": "export", "pid": 4242, "start_ticks": 123456, "seq": 1234,
//    "time_ns": ..., "where": "nbd+unix:///?socket=/run/x.sock",
//    "started_ns": ...}
//
// A pin counts only while its process lives: pid and its start time
// (/proc/PID/stat field 22) both match, so a reused pid does not pin.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace kvmcdp {

struct Pin {
  std::string kind;  // "export", "mount"
  int pid = 0;
  uint64_t start_ticks = 0;
  uint64_t seq = 0, time_ns = 0;
  std::string where;  // the export's URI, the mount point
  uint64_t started_ns = 0;
};

// Holds a pin of this process; removes it when destroyed.
class PinFile {
 public:
  // kFailure if the store cannot take it (a read-only store: then nobody
  // can prune it either, and the caller goes on without).
  static Result<PinFile> create(const std::string& store_dir, Pin pin);
  PinFile(PinFile&& o) noexcept : path_(std::move(o.path_)) { o.path_.clear(); }
  PinFile& operator=(PinFile&&) = delete;
  ~PinFile();
  const std::string& path() const { return path_; }

 private:
  explicit PinFile(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// This process's start time, as pins record it.
uint64_t process_start_ticks(int pid);
// The pins whose process still runs, oldest first.
std::vector<Pin> live_pins(const std::string& store_dir);
// "export pid 4242 (seq 1234, nbd+unix:///?socket=/run/x.sock)"
std::string describe_pin(const Pin& p);

}  // namespace kvmcdp
