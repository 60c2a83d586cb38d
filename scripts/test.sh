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
# Each phase says how long it took: CI's time budget is the sum.
phase() { printf 'test: %s took %d s\n' "$1" $((SECONDS - $2)); }
start=$SECONDS
bash "$here/scripts/setup.sh"
phase setup "$start"
# shellcheck source=/dev/null
source "${KVMCDP_BUILD_DIR:-$here/build}/env.sh"
cd "${KVMCDP_BUILD_DIR:-$here/build}"
start=$SECONDS
ctest --output-on-failure --timeout 900 -j"${KVMCDP_TEST_JOBS:-2}" "$@"
phase ctest "$start"
instrumented=${KVMCDP_INSTRUMENTED:-$([ $# -eq 0 ] && echo 1 || echo 0)}
[ "$instrumented" = 1 ] || exit 0
start=$SECONDS
bash "$here/tests/fuzz/run.sh" "${KVMCDP_FUZZ_SECONDS:-15}"
phase "instrumented build, unit tests and fuzzing" "$start"
