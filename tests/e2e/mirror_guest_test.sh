#!/usr/bin/env bash
# The paper's test in mirror mode: no cdp filter, QEMU's active mirror
# (blockdev-mirror sync=none copy-mode=write-blocking) sends every guest
# write to kvmcdp's NBD server.  The kit guest writes random data in rounds
# (raw blocks with and without sync, overwrites, discards, zero writes) to
# its virtio-blk disk while `kvmcdp protect` captures.  At 10+ moments, at
# random intervals, the test stops the VM (which drains every write in
# flight), records the wall time and the disk's MD5, and resumes; QEMU has
# no seq to give, so every moment must restore by --at to exactly that MD5.
#
# On line 7.2 the VM runs Debian's stock QEMU (no filter) and protect its
# default --capture auto; on the other lines the patched QEMU with an
# explicit --capture mirror (tests/lib/guest.sh, kit_mirror_qemu).  Either
# way protect must say `capture: active mirror`.
#
# Usage: mirror_guest_test.sh [raw|qcow2]   (both when no argument)
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT (see tests/lib/guest.sh).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"

readonly MOMENTS=12

run_one() {
    local fmt=$1
    kit_mirror_qemu
    kit_init
    local disk=$KIT_TMPDIR/disk.$fmt store=$KIT_TMPDIR/store
    # protect has a QMP socket of its own; the test's commands go to the
    # kit's ($KIT_QMP_SOCK), so they never wait for protect's connection.
    local psock=$KIT_TMPDIR/protect.qmp
    "$KVMCDP_QEMU_IMG" create -q -f "$fmt" "$disk" 64M
    cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
i=0
while [ $i -lt 150 ]; do
    dd if=/dev/urandom of="$DATA_DEV" bs=4k seek=$((RANDOM % 16000)) count=$((RANDOM % 64 + 1)) conv=notrunc 2>/dev/null
    [ $((i % 3)) -eq 0 ] && sync
    [ $((i % 7)) -eq 0 ] && blkdiscard -o $(( (RANDOM % 60) * 1048576 )) -l 524288 "$DATA_DEV"
    [ $((i % 5)) -eq 0 ] && dd if=/dev/zero of="$DATA_DEV" bs=64k seek=$((RANDOM % 1000)) count=4 conv=notrunc,fsync 2>/dev/null
    i=$((i + 1))
    sleep 0.1
done
sync
echo GUEST-DONE
sleep 60
GUEST
    kit_make_script_disk "$KIT_TMPDIR/guest.sh" "$KIT_TMPDIR/script.img"
    # The VM starts paused so the mirror and the base copy are in place
    # before the guest's first write.
    kit_run_guest --script "$KIT_TMPDIR/script.img" -- -S \
        -qmp "unix:$psock,server=on,wait=off" \
        -blockdev "driver=file,filename=$disk,node-name=d0-file,discard=unmap" \
        -blockdev "driver=$fmt,file=d0-file,node-name=d0,discard=unmap" \
        -device "virtio-blk-pci,drive=d0,id=vd0,serial=kvmcdp-data"
    for _ in $(seq 100); do [[ -S $psock && -S $KIT_QMP_SOCK ]] && break; sleep 0.1; done
    [[ -S $psock ]] || { kit_dump_console; kit_fail "QEMU did not start"; }
    kit_mirror_check_qemu "$KIT_QMP_SOCK"

    kit_protect_start "${KIT_CAPTURE_ARGS[@]}" --qmp "$psock" --drive vd0 --store "$store"
    kit_protect_wait "base copy complete"
    kit_protect_says_mirror 1
    "$KVMCDP" qmp --qmp "$KIT_QMP_SOCK" '{"execute":"cont"}' >/dev/null

    local -a times=() md5s=()
    while [[ ${#times[@]} -lt $MOMENTS ]]; do
        sleep 0.$((RANDOM % 5 + 1))
        grep -q GUEST-DONE "$KIT_CONSOLE_LOG" && break
        kit_moment "$KIT_QMP_SOCK" "$disk" "$fmt"
    done
    for _ in $(seq 1200); do grep -q GUEST-DONE "$KIT_CONSOLE_LOG" && break; sleep 0.1; done
    grep -q GUEST-DONE "$KIT_CONSOLE_LOG" || { kit_dump_console; kit_fail "guest did not finish"; }
    kit_moment "$KIT_QMP_SOCK" "$disk" "$fmt"   # after the guest's last sync

    kill -TERM "$KIT_PROTECT_PID"
    kit_protect_end
    [[ ${#times[@]} -ge 10 ]] || kit_fail "$fmt: only ${#times[@]} moments recorded (guest too fast?)"
    grep -qi "error" "$KIT_CONSOLE_LOG" && { kit_dump_console; kit_fail "$fmt: guest saw an error"; }

    kit_check_restores_at "$store" "$fmt" --last-is-latest
    summary+="${summary:+, }$fmt ${#times[@]} moments"
    qemu_used=$KIT_MIRROR_QEMU
    kit_cleanup
}

summary='' qemu_used=''
[[ $# -gt 0 ]] || set -- raw qcow2
for f in "$@"; do run_one "$f"; done
echo "mirror: $qemu_used: $summary: every restore by --at matches"
