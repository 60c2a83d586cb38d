#include "serve_state.h"

#include <signal.h>

#include <cerrno>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "fsutil.h"

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
  return fsutil::replace_file_atomic(serve_state_path(store_dir), j.dump(2) + "\n");
}

Result<ServeState> read_serve_state(const std::string& store_dir) {
  auto bytes = fsutil::read_file(serve_state_path(store_dir));
  if (!bytes)
    return Status(ErrorKind::kNotFound, fmt::format("no client ever shipped to {}", store_dir));
  auto j = nlohmann::json::parse(bytes->begin(), bytes->end(), nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return Status(ErrorKind::kDamaged, fmt::format("{} does not parse", serve_state_path(store_dir)));
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

bool serve_receiving(const ServeState& s) {
  return s.connected && s.pid > 0 && (kill(s.pid, 0) == 0 || errno == EPERM);
}

}  // namespace kvmcdp
