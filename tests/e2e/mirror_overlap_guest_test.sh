#!/usr/bin/env bash
# Concurrent overlapping writes in mirror mode replay exactly: the kit
# guest, on two vCPUs, runs four writers at once, each a loop of direct
# (O_DIRECT) writes of its own size (4, 16, 64 and 256 KiB, the last of
# zeros) at random places in the same first MiB of its disk, and a fifth
# that discards 64 KiB pieces of it, so writes to the same blocks are in
# flight together and QEMU completes them in an order of its own (its
# thread pool, aio=threads).  The active mirror must give kvmcdp the
# writes in the order they took effect on the disk; the filter's tests of
# the same are tests/integration/filter_test.cc ("concurrent overlapping
# writes") and multiqueue_guest_test.sh.  At 10+ moments, at random
# intervals while the writers run, the test stops the VM, records the wall
# time and the disk's MD5, and resumes; every moment must restore by --at
# to exactly that MD5.  The guest samples its block layer's count of
# writes in flight and must have seen two or more at once.
#
# On line 7.2 the VM runs Debian's stock QEMU with the default --capture
# auto, on the others the patched QEMU with --capture mirror (see
# kit_mirror_qemu in tests/lib/guest.sh).
#
# Usage: mirror_overlap_guest_test.sh [raw|qcow2]   (both when no argument)
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
    local psock=$KIT_TMPDIR/protect.qmp   # protect's; the test uses $KIT_QMP_SOCK
    "$KVMCDP_QEMU_IMG" create -q -f "$fmt" "$disk" 64M
    # The writers run until the host says STOP; the main loop samples
    # /sys/block/vdX/inflight (reads, writes in flight) meanwhile.
    cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
cat >/tmp/writer.sh <<'WRITER'
# writer.sh KIB COUNT SOURCE: COUNT direct writes of KIB KiB from
# /dev/SOURCE per dd, at a random place in the first MiB, until /tmp/stop.
span=$((1024 / $1 - $2 + 1))
n=0
while [ ! -e /tmp/stop ]; do
    dd if=/dev/$3 of="$DATA_DEV" bs=$1k seek=$((RANDOM % span)) count=$2 oflag=direct conv=notrunc 2>/dev/null || echo "GUEST-WRITE-ERROR bs=$1k"
    n=$((n + 1))
done
echo "GUEST-WRITER bs=$1k dd=$n"
WRITER
cat >/tmp/discarder.sh <<'DISCARDER'
n=0
while [ ! -e /tmp/stop ]; do
    blkdiscard -o $(( (RANDOM % 16) * 65536 )) -l 65536 "$DATA_DEV" || echo "GUEST-DISCARD-ERROR"
    n=$((n + 1))
    sleep 0.2
done
echo "GUEST-DISCARDER discards=$n"
DISCARDER
sh /tmp/writer.sh 4 8 urandom &
sh /tmp/writer.sh 16 4 urandom &
sh /tmp/writer.sh 64 2 urandom &
sh /tmp/writer.sh 256 1 zero &
sh /tmp/discarder.sh &
echo GUEST-WRITING
dev=${DATA_DEV##*/}
max=0
samples=0
while [ ! -e /tmp/stop ]; do
    read -r r w <"/sys/block/$dev/inflight"
    [ "$w" -gt $max ] && max=$w
    samples=$((samples + 1))
    [ $((samples % 20)) -eq 0 ] && dd if="$SCRIPT_DEV" bs=4k skip=256 count=1 iflag=direct 2>/dev/null | grep -q STOP && touch /tmp/stop
    sleep 0.01
done
wait
sync
echo "GUEST-INFLIGHT max_writes=$max samples=$samples"
echo GUEST-DONE
sleep 60
GUEST
    kit_make_stoppable_script_disk "$KIT_TMPDIR/guest.sh" "$KIT_TMPDIR/script.img"
    # The VM starts paused so the mirror and the base copy are in place
    # before the guest's first write.
    kit_run_guest --script "$KIT_TMPDIR/script.img" -- -S -smp 2 \
        -qmp "unix:$psock,server=on,wait=off" \
        -blockdev "driver=file,filename=$disk,node-name=d0-file,aio=threads,discard=unmap" \
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
    # The moments start once the guest has booted and the writers run.
    for _ in $(seq 1200); do grep -q GUEST-WRITING "$KIT_CONSOLE_LOG" && break; sleep 0.1; done
    grep -q GUEST-WRITING "$KIT_CONSOLE_LOG" || { kit_dump_console; kit_fail "$fmt: the guest did not start writing"; }
    while [[ ${#times[@]} -lt $MOMENTS ]]; do
        sleep 0.$((RANDOM % 8 + 2))
        kit_moment "$KIT_QMP_SOCK" "$disk" "$fmt"
    done
    kit_tell_guest_stop "$KIT_TMPDIR/script.img"
    for _ in $(seq 1200); do grep -q GUEST-DONE "$KIT_CONSOLE_LOG" && break; sleep 0.1; done
    grep -q GUEST-DONE "$KIT_CONSOLE_LOG" || { kit_dump_console; kit_fail "$fmt: guest did not finish"; }
    kit_moment "$KIT_QMP_SOCK" "$disk" "$fmt"   # after the writers' end and the guest's sync

    kill -TERM "$KIT_PROTECT_PID"
    kit_protect_end
    grep -qi "error" "$KIT_CONSOLE_LOG" && { kit_dump_console; kit_fail "$fmt: guest saw an error"; }
    [[ $(kit_console | grep -c '^GUEST-WRITER ') -eq 4 ]] || { kit_dump_console; kit_fail "$fmt: not every writer finished"; }
    local writers inflight
    writers=$(kit_console | sed -n 's/^GUEST-WRITER \(.*\)$/\1/p' | paste -sd ' ')
    inflight=$(kit_console | sed -n 's/^GUEST-INFLIGHT max_writes=\([0-9]*\) .*/\1/p')
    [[ -n $inflight ]] || { kit_dump_console; kit_fail "$fmt: the guest did not report its writes in flight"; }
    [[ $inflight -ge 2 ]] ||
        { kit_dump_console; kit_fail "$fmt: the guest never had two writes in flight at once (max $inflight)"; }
    # The moments differ: the writers changed the disk between them.
    [[ $(printf '%s\n' "${md5s[@]}" | sort -u | wc -l) -ge $((${#md5s[@]} / 2)) ]] ||
        kit_fail "$fmt: most moments have the same disk: the writers did not write"

    kit_check_restores_at "$store" "$fmt" --last-is-latest
    summary+="${summary:+; }$fmt: ${#times[@]} moments, up to $inflight writes in flight ($writers)"
    qemu_used=$KIT_MIRROR_QEMU
    kit_cleanup
}

summary='' qemu_used=''
[[ $# -gt 0 ]] || set -- raw qcow2
for f in "$@"; do run_one "$f"; done
echo "mirror overlap: $qemu_used: $summary: every restore by --at matches"
