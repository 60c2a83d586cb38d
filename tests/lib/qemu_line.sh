#!/usr/bin/env bash
# Runs one e2e test against the patched QEMU of one line:
#   tests/lib/qemu_line.sh 10.0 tests/e2e/protect_guest_test.sh
# scripts/setup.sh exports KVMCDP_QEMU_PREFIX_<line> (dots as underscores)
# for every line in qemu-patch/; the test sees that one as
# KVMCDP_QEMU_PREFIX.
set -euo pipefail
line=$1 script=$2
var=KVMCDP_QEMU_PREFIX_${line//./_}
if [ -z "${!var:-}" ]; then
  echo "qemu_line: $var is not set: run the tests through scripts/test.sh (it runs setup)" >&2
  exit 1
fi
export KVMCDP_QEMU_PREFIX=${!var} KVMCDP_QEMU_LINE=$line
export KVMCDP_QEMU_IMG=$KVMCDP_QEMU_PREFIX/bin/qemu-img
exec bash "$script"
