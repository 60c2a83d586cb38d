// The one way every command that reads one point of a store (restore,
// export, mount, recover) takes it: --at, --seq, --mark or --latest, one
// of them, with the same words in --help.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include "base/status.h"
#include "store/point.h"
#include "store/store_view.h"

namespace kvmcdp {

// Adds the four options; returns them for excludes() with other options.
struct PointOptions {
  CLI::Option* at;
  CLI::Option* seq;
  CLI::Option* mark;
  CLI::Option* latest;
};
PointOptions add_point_options(CLI::App* app, PointSpec* point);

// The store opened and the point resolved, refused unless recoverable;
// with --at, the line saying which instant it means goes to stderr.
struct OpenPoint {
  StoreView view;
  uint64_t seq = 0;
  uint64_t time_ns = 0;  // of the point's record
};
Result<OpenPoint> open_point(const std::string& store, const PointSpec& point);

// kUsage "<command> needs one of --at, --seq, --mark, --latest" if none.
Status require_point(const PointSpec& point, const std::string& command);

}  // namespace kvmcdp
