#!/bin/bash
# End-to-end check of the test guest kit itself: the guest boots, runs the
# script it is handed, writes where it is told on the data disk, reports
# its exit code, and powers off also when the script fails. Every other
# guest test builds on this, so it checks on the host what the guest claims.
#
# Needs KVMCDP_QEMU_PREFIX and KVMCDP_KIT (see tests/lib/guest.sh).
set -euo pipefail

# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"

readonly TIMEOUT=180
# 1 MiB at an offset that is 4 KiB aligned but not MiB aligned, so a write
# landing at a rounded offset shows.
readonly PATTERN_OFFSET=$((3 * 1024 * 1024 + 12 * 1024))
readonly PATTERN_SIZE=$((1024 * 1024))
readonly DISK_SIZE=$((16 * 1024 * 1024))

# 16-byte records, each holding its own absolute disk offset in hex: every
# record differs, so a shifted, repeated or truncated write changes the md5.
# The guest runs the same awk program under busybox.
readonly PATTERN_AWK='BEGIN { for (o = off; o < off + size; o += 16) printf "%015x\n", o }'

make_pattern() {
    awk -v off="$PATTERN_OFFSET" -v size="$PATTERN_SIZE" "$PATTERN_AWK"
}

region_md5() {
    local img=$1 offset=$2 size=$3
    dd if="$img" bs=4096 skip=$((offset / 4096)) count=$((size / 4096)) status=none | md5sum | cut -d' ' -f1
}

expect_zero() {
    local img=$1 offset=$2 what=$3
    cmp -s <(dd if="$img" bs=4096 skip=$((offset / 4096)) count=1 status=none) \
        <(head -c 4096 /dev/zero) || {
        kit_dump_console
        kit_fail "$what is not zero: the guest wrote outside the pattern region"
    }
}

kit_init

# 1. The script writes the pattern and reports its md5.
data=$KIT_TMPDIR/data.img
truncate -s "$DISK_SIZE" "$data"
cat >"$KIT_TMPDIR/write.sh" <<EOF
set -e
[ -b "\$DATA_DEV" ] || { echo "no data disk (DATA_DEV='\$DATA_DEV')"; exit 10; }
[ "\$(readlink /dev/disk/by-id/virtio-kvmcdp-data)" = "\$DATA_DEV" ]
awk -v off=$PATTERN_OFFSET -v size=$PATTERN_SIZE '$PATTERN_AWK' >/tmp/pattern
[ "\$(stat -c %s /tmp/pattern)" = $PATTERN_SIZE ]
dd if=/tmp/pattern of="\$DATA_DEV" bs=4096 seek=$((PATTERN_OFFSET / 4096)) conv=notrunc,fsync 2>/dev/null
echo "PATTERN-MD5 \$(md5sum </tmp/pattern | cut -d' ' -f1)"
EOF
start=$SECONDS
kit_boot_script "$KIT_TMPDIR/write.sh" "$TIMEOUT" --data "$data"
echo "guest booted, ran the script and powered off in $((SECONDS - start))s"
[[ $KIT_SCRIPT_RC == 0 ]] || { kit_dump_console; kit_fail "write script exited $KIT_SCRIPT_RC"; }

expected=$(make_pattern | md5sum | cut -d' ' -f1)
guest_md5=$(kit_script_output | sed -n 's/^PATTERN-MD5 //p')
[[ $guest_md5 == "$expected" ]] ||
    { kit_dump_console; kit_fail "guest made pattern md5 '$guest_md5', host expects $expected"; }
actual=$(region_md5 "$data" "$PATTERN_OFFSET" "$PATTERN_SIZE")
[[ $actual == "$expected" ]] ||
    { kit_dump_console; kit_fail "data disk at $PATTERN_OFFSET has md5 $actual, expected $expected"; }
expect_zero "$data" $((PATTERN_OFFSET - 4096)) "the block before the pattern"
expect_zero "$data" $((PATTERN_OFFSET + PATTERN_SIZE)) "the block after the pattern"
echo "ok: pattern at offset $PATTERN_OFFSET, md5 $expected"

# 2. A failing script still ends with its rc reported and a power-off.
printf 'set -e\necho about to fail\nfalse\necho not reached\n' >"$KIT_TMPDIR/fail.sh"
kit_boot_script "$KIT_TMPDIR/fail.sh" "$TIMEOUT"
[[ $KIT_SCRIPT_RC == 1 ]] || { kit_dump_console; kit_fail "failing script reported rc=$KIT_SCRIPT_RC, expected 1"; }
if kit_script_output | grep -q 'not reached'; then
    kit_dump_console
    kit_fail "set -e in the script was not honoured"
fi
echo "ok: failing script reported rc=1 and the guest powered off"

echo "1 passed, 0 failed"
