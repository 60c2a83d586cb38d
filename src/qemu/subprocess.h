// Running the QEMU tools kvmcdp builds on (qemu-img) as child processes.
#pragma once

#include <string>
#include <vector>

#include "base/status.h"

namespace kvmcdp {

// The qemu-img to use: $KVMCDP_QEMU_IMG, else the one on PATH.
std::string qemu_img_binary();
// The qemu-nbd beside that qemu-img (or on PATH).
std::string qemu_nbd_binary();

// Runs argv and returns what it printed on stdout; on a non-zero exit,
// kFailure with the last line it wrote to stderr.
Result<std::string> run_capture(const std::vector<std::string>& argv);

// Runs argv; ok on exit status 0, else kFailure with the last lines the
// child wrote to stderr.  With `show_output`, stdout/stderr go to ours
// (progress bars on a TTY) and are not captured.
Status run_process(const std::vector<std::string>& argv, bool show_output = false);

}  // namespace kvmcdp
