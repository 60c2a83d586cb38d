#include "store/protect_state.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/fsutil.h"
#include "store/run_state_file.h"

namespace kvmcdp {

std::string protect_state_path(const std::string& store_dir) {
  return store_dir + "/protect.json";
}

Status write_protect_state(const std::string& store_dir, const ProtectState& s) {
  nlohmann::json j = {
      {"pid", s.pid},           {"qmp_socket", s.qmp_socket},
      {"drive", s.drive},       {"filter_node", s.filter_node},
      {"mode", s.mode},         {"started_ns", s.started_ns},
      {"updated_ns", s.updated_ns}, {"connected", s.connected},
      {"records", s.records},   {"bytes", s.bytes},
      {"received_seq", s.received_seq}, {"durable_seq", s.durable_seq},
      {"durable_time_ns", s.durable_time_ns},
      {"stream_version", s.stream_version},
      {"store", s.store},       {"stream_id", fmt::format("{:016x}", s.stream_id)}};
  if (s.shutdown_ns) j["vm_shutdown_ns"] = s.shutdown_ns;
  if (!s.domain.empty()) j["domain"] = s.domain;
  if (!s.libvirt_uri.empty()) j["connect"] = s.libvirt_uri;
  if (!s.remote_url.empty())
    j["remote"] = {{"url", s.remote_url},
                   {"connected", s.remote_connected},
                   {"durable_seq", s.remote_durable_seq},
                   {"durable_time_ns", s.remote_durable_ns},
                   {"lag_bytes", s.remote_lag_bytes},
                   {"spool_bytes", s.spool_bytes},
                   {"base_copy", s.remote_base},
                   {"error", s.remote_error}};
  return write_run_state(protect_state_path(store_dir), j);
}

Result<ProtectState> read_protect_state(const std::string& store_dir) {
  auto file = read_run_state(protect_state_path(store_dir),
                             fmt::format("{} is not protected", store_dir));
  if (!file) return file.status();
  const nlohmann::json& j = *file;
  ProtectState s;
  try {
    s.pid = j.at("pid");
    s.qmp_socket = j.at("qmp_socket");
    s.domain = j.value("domain", "");
    s.libvirt_uri = j.value("connect", "");
    s.drive = j.at("drive");
    s.filter_node = j.at("filter_node");
    s.mode = j.value("mode", "async");
    s.started_ns = j.value("started_ns", uint64_t{0});
    s.updated_ns = j.value("updated_ns", uint64_t{0});
    s.connected = j.value("connected", false);
    s.records = j.value("records", uint64_t{0});
    s.bytes = j.value("bytes", uint64_t{0});
    s.received_seq = j.value("received_seq", uint64_t{0});
    s.durable_seq = j.value("durable_seq", uint64_t{0});
    s.durable_time_ns = j.value("durable_time_ns", uint64_t{0});
    s.stream_version = j.value("stream_version", uint32_t{0});
    s.store = j.value("store", "");
    s.stream_id = std::strtoull(j.value("stream_id", "0").c_str(), nullptr, 16);
    s.shutdown_ns = j.value("vm_shutdown_ns", uint64_t{0});
    if (j.contains("remote") && j["remote"].is_object()) {
      const auto& r = j["remote"];
      s.remote_url = r.value("url", "");
      s.remote_connected = r.value("connected", false);
      s.remote_durable_seq = r.value("durable_seq", uint64_t{0});
      s.remote_durable_ns = r.value("durable_time_ns", uint64_t{0});
      s.remote_lag_bytes = r.value("lag_bytes", uint64_t{0});
      s.spool_bytes = r.value("spool_bytes", uint64_t{0});
      s.remote_base = r.value("base_copy", false);
      s.remote_error = r.value("error", "");
    }
  } catch (const nlohmann::json::exception& e) {
    return Status(ErrorKind::kDamaged,
                  fmt::format("{}: {}", protect_state_path(store_dir), e.what()));
  }
  return s;
}

bool protect_running(const ProtectState& s) { return pid_alive(s.pid); }

std::string protect_registry_dir() {
  if (const char* d = getenv("KVMCDP_RUN_DIR"); d && *d) return d;
  if (geteuid() == 0) return "/run/kvmcdp";
  if (const char* x = getenv("XDG_RUNTIME_DIR"); x && *x) return std::string(x) + "/kvmcdp";
  return fmt::format("/tmp/kvmcdp-{}", geteuid());
}

namespace {

std::string stream_entry(uint64_t stream_id) {
  return fmt::format("{}/streams/{:016x}.json", protect_registry_dir(), stream_id);
}

}  // namespace

Status register_stream(uint64_t stream_id, const std::string& store) {
  std::string dir = protect_registry_dir();
  for (const std::string& d : {dir, dir + "/streams"})
    if (mkdir(d.c_str(), 0755) != 0 && errno != EEXIST)
      return {ErrorKind::kFailure, fsutil::errno_message("mkdir", d)};
  return write_run_state(stream_entry(stream_id), {{"store", store}, {"pid", getpid()}});
}

void unregister_stream(uint64_t stream_id) {
  auto owner = stream_owner(stream_id);
  if (owner && owner->pid == getpid()) unlink(stream_entry(stream_id).c_str());
}

Result<StreamOwner> stream_owner(uint64_t stream_id) {
  auto j = read_run_state(stream_entry(stream_id),
                          fmt::format("stream {:016x} is not registered", stream_id));
  if (!j) return j.status();
  StreamOwner o;
  o.store = j->value("store", "");
  o.pid = j->value("pid", 0);
  o.running = pid_alive(o.pid);
  return o;
}

}  // namespace kvmcdp
