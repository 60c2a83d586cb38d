#include "remote/serve_state.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "store/run_state_file.h"

namespace kvmcdp {

std::string serve_state_path(const std::string& store_dir) { return store_dir + "/serve.json"; }

Status write_serve_state(const std::string& store_dir, const ServeState& s) {
  nlohmann::json j = {{"pid", s.pid},
                      {"peer", s.peer},
                      {"connected", s.connected},
                      {"since_ns", s.since_ns},
                      {"updated_ns", s.updated_ns},
                      {"durable_seq", s.durable_seq},
                      {"durable_time_ns", s.durable_time_ns},
                      {"bytes", s.bytes},
                      {"ended", s.ended}};
  return write_run_state(serve_state_path(store_dir), j);
}

Result<ServeState> read_serve_state(const std::string& store_dir) {
  auto file = read_run_state(serve_state_path(store_dir),
                             fmt::format("no client ever shipped to {}", store_dir));
  if (!file) return file.status();
  const nlohmann::json& j = *file;
  ServeState s;
  try {
    s.pid = j.at("pid");
    s.peer = j.at("peer");
    s.connected = j.at("connected");
    s.since_ns = j.value("since_ns", uint64_t{0});
    s.updated_ns = j.value("updated_ns", uint64_t{0});
    s.durable_seq = j.value("durable_seq", uint64_t{0});
    s.durable_time_ns = j.value("durable_time_ns", uint64_t{0});
    s.bytes = j.value("bytes", uint64_t{0});
    s.ended = j.value("ended", "");
  } catch (const nlohmann::json::exception& e) {
    return Status(ErrorKind::kDamaged, fmt::format("{}: {}", serve_state_path(store_dir), e.what()));
  }
  return s;
}

bool serve_receiving(const ServeState& s) { return s.connected && pid_alive(s.pid); }

}  // namespace kvmcdp
