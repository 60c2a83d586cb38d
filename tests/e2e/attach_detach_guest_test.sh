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

kit_checking_writer_script >"$KIT_TMPDIR/guest.sh"
kit_make_stoppable_script_disk "$KIT_TMPDIR/guest.sh" "$KIT_TMPDIR/script.img"
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

kit_tell_guest_stop "$KIT_TMPDIR/script.img"
kit_wait_poweroff 600 || { kit_dump_console; kit_fail "guest did not finish"; }
kit_script_output | grep GUEST-CHECK
[[ $(kit_script_rc) == 0 ]] || { kit_dump_console; kit_fail "the guest's own check failed"; }
if grep -qiE 'I/O error|blk_update_request|Buffer I/O' "$KIT_CONSOLE_LOG"; then
    kit_dump_console
    kit_fail "the guest saw I/O errors"
fi
echo "attach/detach on a running guest: ok"
