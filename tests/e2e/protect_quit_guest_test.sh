#!/usr/bin/env bash
# QEMU quits at once even when protect is stopped (SIGSTOP) with the
# filter's queue full, the guest's writes waiting for room and a resync of
# the whole disk running (the filter of a continued stream resends the
# disk).  Before, `quit` waited for the filter's timeout, or hung when the
# resync waited for room.  Afterwards protect, continued, sees QEMU gone
# and its journal stays readable.
#
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT (see tests/lib/guest.sh).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
export KVMCDP_QEMU_IMG=$KVMCDP_QEMU_PREFIX/bin/qemu-img
readonly MAX_QUIT_MS=1000

kit_init
disk=$KIT_TMPDIR/disk.raw
store=$KIT_TMPDIR/store
tool_sock=$KIT_TMPDIR/tool.qmp
"$KVMCDP_QEMU_IMG" create -q -f raw "$disk" 128M
dd if=/dev/urandom of="$disk" bs=1M count=96 conv=notrunc status=none

cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
dd if=/dev/urandom of=/tmp/blk bs=64k count=1 2>/dev/null
i=0
while [ $i -lt 100000 ]; do
    dd if=/tmp/blk of="$DATA_DEV" bs=64k seek=$((i % 2000)) count=1 oflag=direct conv=notrunc 2>/dev/null
    i=$((i + 1))
    [ $((i % 50)) -eq 0 ] && echo "GUEST-PROGRESS $i"
done
GUEST
kit_make_script_disk "$KIT_TMPDIR/guest.sh" "$KIT_TMPDIR/script.img"
kit_run_guest --script "$KIT_TMPDIR/script.img" -- -S \
    -qmp "unix:$tool_sock,server=on,wait=off" \
    -blockdev "driver=file,filename=$disk,node-name=d0-file" \
    -blockdev "driver=raw,file=d0-file,node-name=d0" \
    -device "virtio-blk-pci,drive=d0,id=vd0,serial=kvmcdp-data"
for _ in $(seq 100); do [[ -S $tool_sock ]] && break; sleep 0.1; done

qmp() { "$KVMCDP" qmp --qmp "$tool_sock" "$1"; }
start_protect() {
    kit_protect_start --qmp "$tool_sock" --drive vd0 --store "$store" --queue-size 1 \
        --filter-timeout 30000
}

start_protect
kit_protect_wait "base copy complete"
qmp '{"execute":"cont"}' >/dev/null
for _ in $(seq 600); do kit_console | grep -q GUEST-PROGRESS && break; sleep 0.1; done
# A stop detaches the filter; the next protect continues the stream with a
# new filter that resends the whole disk.
kill -TERM "$KIT_PROTECT_PID"
kit_protect_end
start_protect
kit_protect_wait "protecting vd0" 2
kill -STOP "$KIT_PROTECT_PID"
sleep 1
filter=$(qmp '{"execute":"query-cdp"}')
grep -q '"gap": *true' <<<"$filter" || kit_fail "no resync running when protect stopped: $filter"

t0=$(date +%s%N)
qmp '{"execute":"quit"}' >/dev/null || true
kit_wait_poweroff 60 || kit_fail "QEMU did not exit within 60 s of quit"
took=$((($(date +%s%N) - t0) / 1000000))
echo "protect quit: QEMU exited ${took} ms after quit (protect stopped, resync running)"
[[ $took -le $MAX_QUIT_MS ]] || kit_fail "QEMU took ${took} ms to quit (at most ${MAX_QUIT_MS} ms)"

kill -CONT "$KIT_PROTECT_PID"
kit_protect_end
grep -q "the VM shut down" "$KIT_TMPDIR/protect.log" || { cat "$KIT_TMPDIR/protect.log"; kit_fail "protect did not say the VM shut down"; }
"$KVMCDP" journal verify --store "$store" >/dev/null || kit_fail "journal verify failed"
echo "protect quit: ok"
