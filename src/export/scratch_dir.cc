#include "export/scratch_dir.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "base/fsutil.h"
#include "store/run_state_file.h"
#include "store/store_pins.h"

namespace kvmcdp {
namespace {

namespace fs = std::filesystem;

std::string tmp_root() {
  const char* tmp = getenv("TMPDIR");
  return tmp && *tmp ? tmp : "/var/tmp";
}

// Whether anything is mounted on an entry of `dir` (its device differs).
bool holds_mount(const fs::path& dir) {
  struct stat d;
  if (::stat(dir.c_str(), &d) != 0) return true;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    struct stat st;
    if (::lstat(e.path().c_str(), &st) == 0 && st.st_dev != d.st_dev) return true;
  }
  return false;
}

void remove_stale(const std::string& root, const std::string& prefix) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename();
    if (name.rfind(prefix, 0) != 0 || !e.is_directory()) continue;
    std::ifstream in(e.path() / "owner");
    int pid = 0;
    unsigned long long ticks = 0;
    if (!(in >> pid >> ticks)) continue;  // not ours, or being made
    if (pid_alive(pid) && process_start_ticks(pid) == ticks) continue;
    if (holds_mount(e.path())) continue;
    fs::remove_all(e.path(), ec);
  }
}

}  // namespace

Result<ScratchDir> ScratchDir::create(const std::string& kind) {
  const std::string root = tmp_root();
  const std::string prefix = fmt::format("kvmcdp-{}-", kind);
  remove_stale(root, prefix);
  std::string tmpl = root + "/" + prefix + "XXXXXX";
  if (!::mkdtemp(tmpl.data()))
    return Status(ErrorKind::kFailure, fsutil::errno_message("create", tmpl));
  ScratchDir dir(tmpl);
  const int pid = ::getpid();
  std::ofstream(tmpl + "/owner") << pid << " " << process_start_ticks(pid) << "\n";
  return dir;
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  if (!path_.empty()) fs::remove_all(path_, ec);
}

}  // namespace kvmcdp
