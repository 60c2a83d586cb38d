#!/usr/bin/env bash
# Runs every kvmcdp test: first the setup (packages, patched QEMU, guest kit,
# build; cached, so fast when nothing changed), then ctest.  Extra
# arguments go to ctest, e.g. `scripts/test.sh -L unit` for the fast subset.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
# shellcheck source=/dev/null
source "${KVMCDP_BUILD_DIR:-$here/build}/env.sh"
cd "${KVMCDP_BUILD_DIR:-$here/build}"
ctest --output-on-failure --timeout 900 -j"${KVMCDP_TEST_JOBS:-2}" "$@"
