// The small JSON files a running kvmcdp process keeps in a store for the
// other commands (protect.json, serve.json): rewritten whole and
// atomically, read as one JSON object, trusted only while their pid runs.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace kvmcdp {

// kNotFound (saying `absent`) when there is no file; kDamaged when it is
// not a JSON object.
Result<nlohmann::json> read_run_state(const std::string& path, const std::string& absent);
Status write_run_state(const std::string& path, const nlohmann::json& j);
// Whether `pid` is a live process (EPERM: alive, someone else's).
bool pid_alive(int pid);

}  // namespace kvmcdp
