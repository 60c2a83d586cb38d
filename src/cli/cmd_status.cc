// kvmcdp status: how the protection of a store's drive is doing.
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
#include "store/store_pins.h"
#include "remote/serve_state.h"
#include "store/time_parse.h"
#include "base/wall_clock.h"

namespace kvmcdp {
namespace {

using nlohmann::json;

uint64_t dir_bytes(const std::string& dir, const std::vector<uint64_t>& segments) {
  uint64_t total = 0;
  for (uint64_t n : segments) {
    struct stat st;
    if (stat(fmt::format("{}/journal/{:012}.seg", dir, n).c_str(), &st) == 0) total += st.st_size;
  }
  return total;
}

// `check`: exit kNotProtected unless something protects the drive now.
Status run_status(const std::string& store, bool as_json, bool check) {
  auto view = open_store_view(store);
  if (!view) return view.status();
  auto state = read_protect_state(store);
  bool running = state && protect_running(*state);
  // On a backup server the store is written by `kvmcdp serve`.
  auto served = read_serve_state(store);
  bool receiving = served && serve_receiving(*served);
  uint64_t records = 0;
  for (const auto& f : view->reader->frames()) records += f.count;
  uint64_t compressed = dir_bytes(store, view->reader->segments());
  json j = {{"store", store},
            {"protected", running || receiving},
            {"segments", view->reader->segments().size()},
            {"records", records},
            {"compressed_bytes", compressed},
            {"last_seq", view->reader->last_seq()},
            {"recoverable", ranges_json(*view)},
            {"gaps", gaps_json(*view)}};
  if (view->manifest.folded_seq) j["folded_seq"] = view->manifest.folded_seq;
  bool shut_down = state && !running && state->shutdown_ns;
  if (shut_down) j["vm_shutdown"] = format_time_ns(state->shutdown_ns);
  if (state) {
    uint64_t lag_records = state->received_seq - state->durable_seq;
    double lag_seconds =
        running && lag_records ? (now_ns() - state->durable_time_ns) / 1e9 : 0.0;
    j["drive"] = state->drive;
    j["filter_node"] = state->filter_node;
    j["qmp_socket"] = state->qmp_socket;
    if (!state->domain.empty()) {
      j["domain"] = state->domain;
      if (!state->libvirt_uri.empty()) j["connect"] = state->libvirt_uri;
    }
    j["connected"] = running && state->connected;
    // How QEMU hands the writes over (man kvmcdp, Capture modes).
    j["capture"] = state->mode == "mirror" ? "mirror" : "filter";
    j["lag"] = {{"records", lag_records}, {"seconds", lag_seconds}};
    j["durable_seq"] = state->durable_seq;
    // The filter's stream protocol; 3 carries the records in shared memory.
    if (state->stream_version) j["stream_version"] = state->stream_version;
    // Payload bytes the current (or last) protect run received: the raw
    // side of the compression ratio.
    j["session_raw_bytes"] = state->bytes;
    if (!state->remote_url.empty()) {
      uint64_t behind = state->durable_seq > state->remote_durable_seq
                            ? state->durable_seq - state->remote_durable_seq
                            : 0;
      double seconds = behind && state->durable_time_ns > state->remote_durable_ns
                           ? (state->durable_time_ns - state->remote_durable_ns) / 1e9
                           : 0.0;
      j["remote"] = {{"url", state->remote_url},
                     {"connected", running && state->remote_connected},
                     {"durable_seq", state->remote_durable_seq},
                     {"lag", {{"records", behind}, {"bytes", state->remote_lag_bytes},
                              {"seconds", seconds}}},
                     {"spool_bytes", state->spool_bytes},
                     {"base_copy", state->remote_base},
                     {"error", state->remote_error}};
    }
  }
  if (served)
    j["server"] = {{"receiving", receiving},
                   {"client", served->peer},
                   {"pid", served->pid},
                   {"since", format_time_ns(served->since_ns)},
                   {"updated", format_time_ns(served->updated_ns)},
                   {"durable_seq", served->durable_seq},
                   {"bytes", served->bytes},
                   {"ended", receiving ? "" : served->ended.empty() ? "kvmcdp serve is gone"
                                                                    : served->ended}};
  if (view->reader->damage()) j["damage"] = view->reader->damage()->to_string();
  j["verified"] = verified_json(*view);
  // What reads the store for as long as it runs (store_pins.h).
  const std::vector<Pin> pins = live_pins(store);
  j["in_use"] = json::array();
  for (const Pin& p : pins)
    j["in_use"].push_back({{"kind", p.kind},
                           {"pid", p.pid},
                           {"seq", p.seq},
                           {"time", format_time_ns(p.time_ns)},
                           {"where", p.where},
                           {"since", format_time_ns(p.started_ns)}});
  Status verdict = !check || running || receiving
                       ? Status::ok()
                       : Status(ErrorKind::kNotProtected,
                                shut_down ? fmt::format("{} is not protected: the VM shut down at {}",
                                                        store, format_time_human(state->shutdown_ns))
                                          : fmt::format("{} is not protected", store));
  if (as_json) {
    std::printf("%s\n", j.dump(2).c_str());
    return verdict;
  }
  std::printf("store:       %s\n", store.c_str());
  std::string prot = shut_down ? fmt::format("no (the VM shut down at {})",
                                             format_time_human(state->shutdown_ns))
                               : "no";
  if (running)
    prot = fmt::format("yes (pid {}, drive {}, {}{})", state->pid, state->drive,
                       state->mode == "mirror" ? "mirror capture, " : "",
                       state->connected ? "connected" : "reconnecting");
  else if (receiving)
    prot = fmt::format("yes, shipped here by {} (kvmcdp serve pid {}, since {})", served->peer,
                       served->pid, format_time_human(served->since_ns));
  std::printf("protected:   %s\n", prot.c_str());
  if (served && !receiving)
    std::printf("last client: %s, until %s: %s\n", served->peer.c_str(),
                format_time_human(served->updated_ns).c_str(),
                j["server"]["ended"].get<std::string>().c_str());
  if (state)
    std::printf("lag:         %llu records, %.1f s\n",
                static_cast<unsigned long long>(j["lag"]["records"].get<uint64_t>()),
                j["lag"]["seconds"].get<double>());
  if (j.contains("remote")) {
    const json& r = j["remote"];
    std::printf("remote:      %s, %s, server durable seq %llu\n", r["url"].get<std::string>().c_str(),
                r["connected"].get<bool>() ? "connected" : "not connected",
                static_cast<unsigned long long>(r["durable_seq"].get<uint64_t>()));
    std::printf("remote lag:  %llu records, %llu bytes, %.1f s%s\n",
                static_cast<unsigned long long>(r["lag"]["records"].get<uint64_t>()),
                static_cast<unsigned long long>(r["lag"]["bytes"].get<uint64_t>()),
                r["lag"]["seconds"].get<double>(),
                r["base_copy"].get<bool>() ? "" : " (base copy not on the server yet)");
    if (!r["error"].get<std::string>().empty() && !r["connected"].get<bool>())
      std::printf("remote error: %s\n", r["error"].get<std::string>().c_str());
  }
  std::printf("journal:     %zu segments, %llu records, %llu bytes on disk\n",
              view->reader->segments().size(), static_cast<unsigned long long>(records),
              static_cast<unsigned long long>(compressed));
  if (view->manifest.folded_seq)
    std::printf("base copy:   moved up to seq %llu (kvmcdp prune)\n",
                static_cast<unsigned long long>(view->manifest.folded_seq));
  if (state)
    std::printf("last run:    %llu bytes of writes received\n",
                static_cast<unsigned long long>(state->bytes));
  for (const auto& r : view->ranges)
    std::printf("recoverable: seq %llu..%llu  %s .. %s\n",
                static_cast<unsigned long long>(r.first_seq),
                static_cast<unsigned long long>(r.last_seq),
                format_time_human(r.first_time_ns).c_str(),
                format_time_human(r.last_time_ns).c_str());
  if (view->ranges.empty()) std::printf("recoverable: nothing yet\n");
  std::printf("gaps:        %zu\n", j["gaps"].size());
  if (view->reader->damage())
    std::printf("damage:      %s\n", view->reader->damage()->to_string().c_str());
  std::printf("verified:    %s\n", verified_line(*view).c_str());
  for (const Pin& p : pins)
    std::printf("in use:      %s pid %d: seq %llu (%s) at %s, since %s\n", p.kind.c_str(), p.pid,
                static_cast<unsigned long long>(p.seq), format_time_human(p.time_ns).c_str(),
                p.where.c_str(), format_time_human(p.started_ns).c_str());
  return verdict;
}

}  // namespace

CommandRunner setup_status_command(CLI::App* app) {
  auto store = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  auto check = std::make_shared<bool>(false);
  app->add_option("--store", *store, "the store")->required();
  app->add_flag("--json", *as_json, "print JSON");
  app->add_flag("--check", *check,
                "for monitoring: exit 9 if the drive is not protected right now");
  return [store, as_json, check]() { return run_status(*store, *as_json, *check); };
}

}  // namespace kvmcdp
