// kvmcdp points: what a store can restore, and (--changes) when a disk
// area was written.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/cli.h"
#include "cli/store_report.h"
#include "store/journal_changes.h"
#include "store/point.h"
#include "store/protect_state.h"
#include "remote/serve_state.h"
#include "store/time_parse.h"
#include "base/wall_clock.h"

namespace kvmcdp {
namespace {

using nlohmann::json;

Status run_points(const std::string& store, bool as_json) {
  auto view = open_store_view(store);
  if (!view) return view.status();
  auto marks = journal::list_marks(*view->reader);
  if (!marks) return marks.status();
  json j = {{"store", store},
            {"base_complete", view->manifest.base_complete},
            {"recoverable", ranges_json(*view)},
            {"gaps", gaps_json(*view)},
            {"marks", json::array()}};
  if (view->manifest.base_complete)
    j["base_copy"] = {{"seq", view->manifest.base_complete_seq},
                      {"time", format_time_ns(view->manifest.base_complete_time_ns)},
                      {"folded", view->manifest.folded_seq != 0}};
  for (const auto& m : *marks)
    j["marks"].push_back({{"name", m.name}, {"seq", m.seq}, {"time", format_time_ns(m.time_ns)}});
  if (view->reader->damage())
    j["damage"] = view->reader->damage()->to_string();
  j["verified"] = verified_json(*view);
  if (as_json) {
    std::printf("%s\n", j.dump(2).c_str());
    return Status::ok();
  }
  if (view->manifest.base_complete)
    std::printf("base copy: seq %llu at %s%s\n",
                static_cast<unsigned long long>(view->manifest.base_complete_seq),
                format_time_human(view->manifest.base_complete_time_ns).c_str(),
                view->manifest.folded_seq ? " (kvmcdp prune merged the journal before it into it)"
                                          : "");
  else
    std::printf("base copy: not complete, nothing recoverable yet\n");
  for (const auto& r : view->ranges)
    std::printf("recoverable: seq %llu..%llu  %s .. %s\n",
                static_cast<unsigned long long>(r.first_seq),
                static_cast<unsigned long long>(r.last_seq),
                format_time_human(r.first_time_ns).c_str(),
                format_time_human(r.last_time_ns).c_str());
  for (const auto& g : j["gaps"])
    std::printf("gap: after seq %llu, resumes at seq %llu\n",
                static_cast<unsigned long long>(g["after_seq"].get<uint64_t>()),
                static_cast<unsigned long long>(g["resumes_seq"].get<uint64_t>()));
  for (const auto& m : *marks)
    std::printf("mark: %s  seq %llu  %s\n", m.name.c_str(), static_cast<unsigned long long>(m.seq),
                format_time_human(m.time_ns).c_str());
  if (view->reader->damage())
    std::printf("damage: %s\n", view->reader->damage()->to_string().c_str());
  std::printf("verified: %s\n", verified_line(*view).c_str());
  return Status::ok();
}

// A byte count: digits with an optional K, M, G or T (powers of 1024).
Result<uint64_t> parse_bytes(const std::string& text) {
  size_t used = 0;
  uint64_t v = 0;
  try {
    v = std::stoull(text, &used, 0);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || text[0] == '-')
    return Status(ErrorKind::kUsage, fmt::format("'{}' is not a byte count", text));
  std::string unit = text.substr(used);
  int shift = unit.empty() ? 0 : unit == "K" ? 10 : unit == "M" ? 20 : unit == "G" ? 30
                                 : unit == "T" ? 40 : -1;
  if (shift < 0 || (shift && v > (UINT64_MAX >> shift)))
    return Status(ErrorKind::kUsage,
                  fmt::format("'{}' is not a byte count (digits, then K, M, G or T)", text));
  return v << shift;
}

struct ChangesOptions {
  std::vector<std::string> between;  // T1 T2
  std::string range;                  // OFFSET:LEN
  size_t intervals = 20;
};

// Bytes of the area written per interval between two times: a table, with
// a bar per interval on a terminal.
Status run_changes(const std::string& store, const ChangesOptions& o, bool as_json) {
  if (o.between.size() != 2)
    return Status(ErrorKind::kUsage, "--changes needs --between T1 T2");
  uint64_t now = now_ns();
  auto t1 = parse_time(o.between[0], now);
  if (!t1) return t1.status();
  auto t2 = parse_time(o.between[1], now);
  if (!t2) return t2.status();
  if (*t2 < *t1) return Status(ErrorKind::kUsage, "--between: the second time is before the first");
  auto view = open_store_view(store);
  if (!view) return view.status();
  uint64_t off = 0, len = view->manifest.disk_size;
  if (!o.range.empty()) {
    auto colon = o.range.find(':');
    if (colon == std::string::npos)
      return Status(ErrorKind::kUsage, "--range takes OFFSET:LEN (bytes, or with K, M, G, T)");
    auto a = parse_bytes(o.range.substr(0, colon));
    if (!a) return a.status();
    auto b = parse_bytes(o.range.substr(colon + 1));
    if (!b) return b.status();
    off = *a;
    len = *b;
    if (len == 0 || off >= view->manifest.disk_size)
      return Status(ErrorKind::kUsage,
                    fmt::format("--range {} is not inside the disk ({} bytes)", o.range,
                                view->manifest.disk_size));
  }
  auto h = journal::changes_between(*view->reader, *t1, *t2, off, len, o.intervals);
  if (!h) return h.status();
  if (as_json) {
    json j = {{"store", store}, {"from", format_time_ns(*t1)}, {"to", format_time_ns(*t2)},
              {"offset", off}, {"length", len}, {"bytes", h->bytes}, {"writes", h->records},
              {"gaps", h->gaps}, {"intervals", json::array()}};
    if (h->records) {
      j["first_write"] = format_time_ns(h->first_ns);
      j["last_write"] = format_time_ns(h->last_ns);
    }
    for (const auto& b : h->buckets)
      j["intervals"].push_back({{"from", format_time_ns(b.start_ns)}, {"bytes", b.bytes},
                                {"writes", b.records}});
    std::printf("%s\n", j.dump(2).c_str());
    return Status::ok();
  }
  const double mib = 1048576.0;
  std::printf("bytes %llu..%llu written from %s to %s: %.2f MiB in %llu writes\n",
              static_cast<unsigned long long>(off),
              static_cast<unsigned long long>(std::min(off + len, view->manifest.disk_size)),
              format_time_human(*t1).c_str(), format_time_human(*t2).c_str(), h->bytes / mib,
              static_cast<unsigned long long>(h->records));
  if (h->records)
    std::printf("first write %s, last %s\n", format_time_human(h->first_ns).c_str(),
                format_time_human(h->last_ns).c_str());
  if (h->gaps)
    std::printf("%llu gap(s) in between: writes in them are not in the journal\n",
                static_cast<unsigned long long>(h->gaps));
  uint64_t most = 0;
  for (const auto& b : h->buckets) most = std::max(most, b.bytes);
  const bool bars = isatty(1);
  for (const auto& b : h->buckets) {
    std::string bar;
    if (bars && most) bar = std::string(size_t((b.bytes * 40 + most - 1) / most), '#');
    std::printf("%s  %10.2f MiB %6llu writes  %s\n", format_time_human(b.start_ns).c_str(),
                b.bytes / mib, static_cast<unsigned long long>(b.records), bar.c_str());
  }
  return Status::ok();
}

}  // namespace

CommandRunner setup_points_command(CLI::App* app) {
  auto store = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  auto changes = std::make_shared<bool>(false);
  auto co = std::make_shared<ChangesOptions>();
  app->add_option("--store", *store, "the store")->required();
  app->add_flag("--json", *as_json, "print JSON");
  auto* ch = app->add_flag("--changes", *changes,
                           "instead: how many bytes the guest wrote per interval (to find when "
                           "a disk area changed)");
  app->add_option("--between", co->between, "with --changes: the two times T1 T2")
      ->expected(2)
      ->needs(ch);
  app->add_option("--range", co->range,
                  "with --changes: only the disk area OFFSET:LEN (bytes, or with K, M, G, T)")
      ->needs(ch);
  app->add_option("--intervals", co->intervals, "with --changes: how many intervals")
      ->check(CLI::Range(1, 10000))
      ->needs(ch)
      ->capture_default_str();
  return [store, as_json, changes, co]() {
    return *changes ? run_changes(*store, *co, *as_json) : run_points(*store, *as_json);
  };
}

}  // namespace kvmcdp
