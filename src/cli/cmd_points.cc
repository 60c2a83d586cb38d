// kvmcdp points: what a store can restore.
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/cli.h"
#include "cli/store_report.h"
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

}  // namespace

CommandRunner setup_points_command(CLI::App* app) {
  auto store = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  app->add_option("--store", *store, "the store")->required();
  app->add_flag("--json", *as_json, "print JSON");
  return [store, as_json]() { return run_points(*store, *as_json); };
}

}  // namespace kvmcdp
