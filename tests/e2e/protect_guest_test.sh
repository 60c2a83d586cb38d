#!/usr/bin/env bash
# The paper's test with a real guest, agentless: the kit guest writes
# random data in rounds (raw blocks with and without sync, overwrites,
# discards) to its virtio-blk disk under the patched QEMU while
# `kvmcdp protect` captures.  At 10+ moments the test stops the VM, records
# the disk's MD5, the filter's seq and the wall time, and resumes.  Every
# moment must restore, by --seq and by --at, to exactly that MD5.
#
# Usage: protect_guest_test.sh [raw|qcow2]   (both when no argument)
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT (see tests/lib/guest.sh).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"

readonly MOMENTS=12
export KVMCDP_QEMU_IMG=$KVMCDP_QEMU_PREFIX/bin/qemu-img

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

qmp() { "$KVMCDP" qmp --qmp "$tool_sock" "$1"; }

disk_md5() {
    if [[ $fmt == raw ]]; then
        md5sum "$disk" | cut -d' ' -f1
    else
        # QEMU flushed its qcow2 metadata at `stop`; -U reads it while open.
        "$KVMCDP_QEMU_IMG" convert -U -f qcow2 -O raw "$disk" "$KIT_TMPDIR/flat.raw"
        md5sum "$KIT_TMPDIR/flat.raw" | cut -d' ' -f1
    fi
}

protect_pid=
stop_all() {
    [[ -n $protect_pid ]] && kill -KILL "$protect_pid" 2>/dev/null && wait "$protect_pid" 2>/dev/null
    protect_pid=
    kit_cleanup
}

run_one() {
    fmt=$1
    kit_init
    trap stop_all EXIT
    disk=$KIT_TMPDIR/disk.$fmt
    tool_sock=$KIT_TMPDIR/tool.qmp
    local store=$KIT_TMPDIR/store
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
    # The VM starts paused so the filter and base copy are in place before
    # the guest's first write.
    kit_run_guest --script "$KIT_TMPDIR/script.img" -- -S \
        -qmp "unix:$tool_sock,server=on,wait=off" \
        -blockdev "driver=file,filename=$disk,node-name=d0-file,discard=unmap" \
        -blockdev "driver=$fmt,file=d0-file,node-name=d0,discard=unmap" \
        -device "virtio-blk-pci,drive=d0,id=vd0,serial=kvmcdp-data"
    for _ in $(seq 100); do [[ -S $tool_sock ]] && break; sleep 0.1; done

    "$KVMCDP" protect --qmp "$tool_sock" --drive vd0 --store "$store" >"$KIT_TMPDIR/protect.log" 2>&1 &
    protect_pid=$!
    for _ in $(seq 600); do
        grep -q "base copy complete" "$KIT_TMPDIR/protect.log" && break
        kill -0 "$protect_pid" 2>/dev/null || { cat "$KIT_TMPDIR/protect.log"; kit_fail "protect exited"; }
        sleep 0.1
    done
    qmp '{"execute":"cont"}' >/dev/null

    local -a seqs=() times=() md5s=()
    local n=0
    while [[ $n -lt $MOMENTS ]]; do
        sleep 0.$((RANDOM % 5 + 1))
        grep -q GUEST-DONE "$KIT_CONSOLE_LOG" && break
        qmp '{"execute":"stop"}' >/dev/null
        seqs+=("$(qmp '{"execute":"query-cdp"}' | json_field '[0]["seq"]')")
        times+=("$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)")
        md5s+=("$(disk_md5)")
        qmp '{"execute":"cont"}' >/dev/null
        n=$((n + 1))
    done
    for _ in $(seq 1200); do grep -q GUEST-DONE "$KIT_CONSOLE_LOG" && break; sleep 0.1; done
    grep -q GUEST-DONE "$KIT_CONSOLE_LOG" || { kit_dump_console; kit_fail "guest did not finish"; }
    # One more moment after the guest's last sync.
    qmp '{"execute":"stop"}' >/dev/null
    seqs+=("$(qmp '{"execute":"query-cdp"}' | json_field '[0]["seq"]')")
    times+=("$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)")
    md5s+=("$(disk_md5)")
    qmp '{"execute":"cont"}' >/dev/null

    kill -TERM "$protect_pid"
    wait "$protect_pid" || { cat "$KIT_TMPDIR/protect.log"; kit_fail "protect exited non-zero"; }
    protect_pid=
    [[ ${#seqs[@]} -ge 10 ]] || kit_fail "only ${#seqs[@]} moments recorded (guest too fast?)"
    grep -qi "error" "$KIT_CONSOLE_LOG" && { kit_dump_console; kit_fail "guest saw an error"; }

    "$KVMCDP" journal verify --store "$store" >/dev/null || kit_fail "journal verify failed"
    local i out=$KIT_TMPDIR/restored.raw
    for i in "${!seqs[@]}"; do
        "$KVMCDP" restore --quiet --force --store "$store" --seq "${seqs[$i]}" -o "$out" >/dev/null ||
            kit_fail "restore --seq ${seqs[$i]} failed"
        [[ $(md5sum "$out" | cut -d' ' -f1) == "${md5s[$i]}" ]] ||
            kit_fail "$fmt: seq ${seqs[$i]}: restored MD5 differs from the disk's"
        "$KVMCDP" restore --quiet --force --store "$store" --at "${times[$i]}" -o "$out" >/dev/null ||
            kit_fail "restore --at ${times[$i]} failed"
        [[ $(md5sum "$out" | cut -d' ' -f1) == "${md5s[$i]}" ]] ||
            kit_fail "$fmt: time ${times[$i]}: restored MD5 differs from the disk's"
    done
    echo "$fmt: ${#seqs[@]} moments, last seq ${seqs[-1]}: every restore matches"
    stop_all
}

formats=("${@:-raw qcow2}")
for f in ${formats[*]}; do run_one "$f"; done
