#!/usr/bin/env bash
# The main job on a built-in default: set everything up, boot the kit guest
# under the patched QEMU, let it write data to its disk, and show the
# result as seen from the host.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
# shellcheck source=/dev/null
source "$here/build/env.sh"
# shellcheck source=../tests/lib/guest.sh
source "$here/tests/lib/guest.sh"

kit_init
disk=$KIT_TMPDIR/disk.raw
truncate -s 64M "$disk"
cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
dd if=/dev/urandom of=/tmp/data bs=1M count=8 2>/dev/null
dd if=/tmp/data of="$DATA_DEV" bs=1M conv=fsync 2>/dev/null
echo "guest md5 of 8 MiB written: $(md5sum </tmp/data | cut -d' ' -f1)"
GUEST
kit_make_script_disk "$KIT_TMPDIR/guest.sh" "$KIT_TMPDIR/script.img"
echo "demo: booting the kit guest under $KVMCDP_QEMU_PREFIX/bin/qemu-system-x86_64 (TCG)"
kit_run_guest --script "$KIT_TMPDIR/script.img" --data "$disk"
kit_wait_poweroff 180 || kit_fail "guest did not power off"
[ "$(kit_script_rc)" = 0 ] || { kit_dump_console; kit_fail "guest script failed"; }
kit_script_output
echo "host  md5 of the disk's first 8 MiB: $(head -c 8M "$disk" | md5sum | cut -d' ' -f1)"
