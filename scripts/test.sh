#!/usr/bin/env bash
# Runs every kvmcdp test: first the setup (packages, patched QEMU, guest kit,
# build; cached, so fast when nothing changed), then ctest.  Extra
# arguments go to ctest, e.g. `scripts/test.sh -L unit` for the fast subset.
# The full run (no arguments, as CI runs it) then also runs the
# instrumented build (build-fuzz/, tests/fuzz/run.sh): the unit tests
# under ASan+UBSan with assertions on, and the fuzz targets.
# KVMCDP_INSTRUMENTED=0 skips that, =1 forces it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
# shellcheck source=/dev/null
source "${KVMCDP_BUILD_DIR:-$here/build}/env.sh"
cd "${KVMCDP_BUILD_DIR:-$here/build}"
ctest --output-on-failure --timeout 900 -j"${KVMCDP_TEST_JOBS:-2}" "$@"
instrumented=${KVMCDP_INSTRUMENTED:-$([ $# -eq 0 ] && echo 1 || echo 0)}
[ "$instrumented" = 1 ] || exit 0
bash "$here/tests/fuzz/run.sh" "${KVMCDP_FUZZ_SECONDS:-15}"
