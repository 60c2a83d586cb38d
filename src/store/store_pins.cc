#include "store/store_pins.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/fsutil.h"
#include "store/run_state_file.h"

namespace kvmcdp {
namespace {

std::string pins_dir(const std::string& store_dir) { return store_dir + "/pins"; }

}  // namespace

uint64_t process_start_ticks(int pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The command name (field 2) may hold spaces and parentheses: count
  // fields from the last ')'.
  auto close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  for (int i = 3; i <= 22 && rest >> field; i++)
    if (i == 22) return std::strtoull(field.c_str(), nullptr, 10);
  return 0;
}

Result<PinFile> PinFile::create(const std::string& store_dir, Pin pin) {
  std::string dir = pins_dir(store_dir);
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    return Status(ErrorKind::kFailure, fsutil::errno_message("create", dir));
  std::string path = fmt::format("{}/{}-{}.json", dir, pin.kind, pin.pid);
  nlohmann::json j = {{"kind", pin.kind},         {"pid", pin.pid},
                      {"start_ticks", pin.start_ticks}, {"seq", pin.seq},
                      {"time_ns", pin.time_ns},   {"where", pin.where},
                      {"started_ns", pin.started_ns}};
  if (auto s = write_run_state(path, j); !s) return s;
  return PinFile(path);
}

PinFile::~PinFile() {
  if (!path_.empty()) ::unlink(path_.c_str());
}

std::vector<Pin> live_pins(const std::string& store_dir) {
  std::vector<Pin> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(pins_dir(store_dir), ec)) {
    if (e.path().extension() != ".json") continue;
    auto j = read_run_state(e.path(), "no pin");
    if (!j) continue;  // half-written or damaged: not a pin
    Pin p;
    try {
      p.kind = j->value("kind", "");
      p.pid = j->value("pid", 0);
      p.start_ticks = j->value("start_ticks", uint64_t(0));
      p.seq = j->value("seq", uint64_t(0));
      p.time_ns = j->value("time_ns", uint64_t(0));
      p.where = j->value("where", "");
      p.started_ns = j->value("started_ns", uint64_t(0));
    } catch (const nlohmann::json::exception&) {
      continue;
    }
    if (!pid_alive(p.pid) || process_start_ticks(p.pid) != p.start_ticks) continue;
    out.push_back(std::move(p));
  }
  std::sort(out.begin(), out.end(),
            [](const Pin& a, const Pin& b) { return a.started_ns < b.started_ns; });
  return out;
}

std::string describe_pin(const Pin& p) {
  return fmt::format("{} pid {} (seq {}, {})", p.kind, p.pid, p.seq, p.where);
}

}  // namespace kvmcdp
