// Crash points for tests of multi-step operations (snapshot create,
// build, fold, protect): KVMCDP_CRASH_AT_STEP=<op>:<k> or <k> makes the
// process _exit(9) right after step k of operation <op>, so a test can
// check that every interruption leaves a state the next run repairs.
#pragma once

#include <string>

namespace kvmcdp {

void crash_point(const std::string& op, int step);

}  // namespace kvmcdp
