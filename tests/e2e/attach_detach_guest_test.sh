#!/usr/bin/env bash
# Attach and detach the cdp filter three times on a running guest that
# never stops writing and reading back its own data: no guest I/O error,
# the guest's own check passes, every journal verifies.
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT (see tests/lib/guest.sh).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
export KVMCDP_QEMU_IMG=$KVMCDP_QEMU_PREFIX/bin/qemu-img

kit_init
protect_pid=
trap '[[ -n $protect_pid ]] && kill -KILL "$protect_pid" 2>/dev/null; kit_cleanup' EXIT
disk=$KIT_TMPDIR/disk.qcow2
tool=$KIT_TMPDIR/tool.qmp
"$KVMCDP_QEMU_IMG" create -q -f qcow2 "$disk" 64M

cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
# Write a block, read it back (direct I/O, past the page cache), compare.
bad=0
i=0
# The host writes STOP into block 256 of the script disk once its cycles
# are done; direct reads see it.
while [ $i -lt 20000 ]; do
    [ $((i % 10)) -eq 0 ] && dd if="$SCRIPT_DEV" bs=4k skip=256 count=1 iflag=direct 2>/dev/null | grep -q STOP && break
    dd if=/dev/urandom of=/tmp/blk bs=64k count=1 2>/dev/null
    off=$((RANDOM % 1000))
    dd if=/tmp/blk of="$DATA_DEV" bs=64k seek=$off count=1 oflag=direct conv=notrunc 2>/dev/null || bad=$((bad + 1))
    dd if="$DATA_DEV" of=/tmp/back bs=64k skip=$off count=1 iflag=direct 2>/dev/null || bad=$((bad + 1))
    cmp -s /tmp/blk /tmp/back || bad=$((bad + 1))
    i=$((i + 1))
    [ $((i % 50)) -eq 0 ] && echo "GUEST-PROGRESS $i"
done
echo "GUEST-CHECK iterations=$i bad=$bad"
[ $bad -eq 0 ]
GUEST
kit_make_script_disk "$KIT_TMPDIR/guest.sh" "$KIT_TMPDIR/script.img"
truncate -s 2M "$KIT_TMPDIR/script.img"
kit_run_guest --script "$KIT_TMPDIR/script.img" -- \
    -qmp "unix:$tool,server=on,wait=off" \
    -blockdev "driver=file,filename=$disk,node-name=d0-file" \
    -blockdev "driver=qcow2,file=d0-file,node-name=d0" \
    -device "virtio-blk-pci,drive=d0,id=vd0,serial=kvmcdp-data"
for _ in $(seq 1200); do grep -q GUEST-PROGRESS "$KIT_CONSOLE_LOG" && break; sleep 0.1; done
grep -q GUEST-PROGRESS "$KIT_CONSOLE_LOG" || { kit_dump_console; kit_fail "guest did not start writing"; }

for cycle in 1 2 3; do
    store=$KIT_TMPDIR/store$cycle
    "$KVMCDP" protect --qmp "$tool" --drive vd0 --store "$store" >"$KIT_TMPDIR/protect$cycle.log" 2>&1 &
    protect_pid=$!
    for _ in $(seq 600); do
        grep -q "base copy complete" "$KIT_TMPDIR/protect$cycle.log" && break
        kill -0 "$protect_pid" 2>/dev/null || { cat "$KIT_TMPDIR/protect$cycle.log"; kit_fail "protect exited"; }
        sleep 0.1
    done
    sleep 2
    kill -TERM "$protect_pid"
    wait "$protect_pid" || { cat "$KIT_TMPDIR/protect$cycle.log"; kit_fail "cycle $cycle: protect failed"; }
    protect_pid=
    [[ $("$KVMCDP" qmp --qmp "$tool" '{"execute":"query-cdp"}') == "[]" ]] ||
        kit_fail "cycle $cycle: filter still attached after protect stopped"
    "$KVMCDP" journal verify --store "$store" >/dev/null || kit_fail "cycle $cycle: journal damaged"
    records=$("$KVMCDP" journal dump --store "$store" | wc -l)
    [[ $records -gt 0 ]] || kit_fail "cycle $cycle: nothing captured while the guest wrote"
    echo "cycle $cycle: attached, $records records captured, detached"
done

printf STOP | dd of="$KIT_TMPDIR/script.img" bs=4k seek=256 conv=notrunc status=none
kit_wait_poweroff 600 || { kit_dump_console; kit_fail "guest did not finish"; }
kit_script_output | grep GUEST-CHECK
[[ $(kit_script_rc) == 0 ]] || { kit_dump_console; kit_fail "the guest's own check failed"; }
if grep -qiE 'I/O error|blk_update_request|Buffer I/O' "$KIT_CONSOLE_LOG"; then
    kit_dump_console
    kit_fail "the guest saw I/O errors"
fi
echo "attach/detach on a running guest: ok"
