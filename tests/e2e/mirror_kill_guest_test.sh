#!/usr/bin/env bash
# A protect in mirror mode that dies does not hold the guest back, and a
# new one closes the gap from QEMU's dirty bitmap.  The kit guest writes
# fresh random 64 KiB blocks with a flush after each, some zero writes and
# discards, and measures with its own clock the longest time one of them
# took.  The test takes moments (stop the VM, wall time, disk MD5, cont)
# while protect captures, kill -9s protect mid-stream, takes a moment
# while it is away, starts protect again on the same store and takes more
# moments once it says the resync is done.  Then:
#   - no guest write stalled more than 1 s, through the kill, the restart
#     and protect's final stop;
#   - the restart said `continuing the stream after seq` and `resync done`;
#   - `kvmcdp points` shows two recoverable ranges and one gap between;
#   - every moment before the kill and after the resync restores by --at
#     to exactly its MD5, and the moment while protect was away is refused
#     as not recoverable (exit 6); the journal verifies.
#
# On line 7.2 the VM runs Debian's stock QEMU with the default --capture
# auto, on the others the patched QEMU with --capture mirror (see
# kit_mirror_qemu in tests/lib/guest.sh).
#
# Usage: mirror_kill_guest_test.sh [raw|qcow2]   (raw when no argument)
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT (see tests/lib/guest.sh).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
readonly MAX_STALL_CS=100   # 1 s, in the guest's /proc/uptime centiseconds
readonly BEFORE=3 AFTER=3   # moments before the kill and after the resync

fmt=${1:-raw}
kit_mirror_qemu
kit_init
disk=$KIT_TMPDIR/disk.$fmt
store=$KIT_TMPDIR/store
psock=$KIT_TMPDIR/protect.qmp   # protect's; the test uses $KIT_QMP_SOCK
"$KVMCDP_QEMU_IMG" create -q -f "$fmt" "$disk" 64M

# Each iteration writes a new random block (made before the clock starts),
# so every moment has a disk of its own; every 10th also writes zeros,
# every 25th discards 128 KiB.  Each op is timed, flush included.
cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
cs() { t=$(cut -d' ' -f1 /proc/uptime); echo "${t%%.*}${t#*.}"; }
worst=0
i=0
while [ $i -lt 100000 ]; do
    [ $((i % 10)) -eq 0 ] && dd if="$SCRIPT_DEV" bs=4k skip=256 count=1 iflag=direct 2>/dev/null | grep -q STOP && break
    dd if=/dev/urandom of=/tmp/blk bs=64k count=1 2>/dev/null
    t0=$(cs)
    dd if=/tmp/blk of="$DATA_DEV" bs=64k seek=$((RANDOM % 900)) count=1 oflag=direct conv=notrunc,fsync 2>/dev/null || echo "GUEST-WRITE-ERROR $i"
    [ $((i % 10)) -eq 5 ] && { dd if=/dev/zero of="$DATA_DEV" bs=64k seek=$((RANDOM % 900)) count=2 oflag=direct conv=notrunc,fsync 2>/dev/null || echo "GUEST-ZERO-ERROR $i"; }
    [ $((i % 25)) -eq 12 ] && { blkdiscard -o $(( (RANDOM % 450) * 131072 )) -l 131072 "$DATA_DEV" || echo "GUEST-DISCARD-ERROR $i"; }
    t1=$(cs)
    [ $((t1 - t0)) -gt $worst ] && worst=$((t1 - t0))
    i=$((i + 1))
    [ $((i % 10)) -eq 0 ] && echo "GUEST-PROGRESS $i"
done
sync
echo "GUEST-STALL worst_cs=$worst iterations=$i"
GUEST
kit_make_stoppable_script_disk "$KIT_TMPDIR/guest.sh" "$KIT_TMPDIR/script.img"
kit_run_guest --script "$KIT_TMPDIR/script.img" -- -S \
    -qmp "unix:$psock,server=on,wait=off" \
    -blockdev "driver=file,filename=$disk,node-name=d0-file,discard=unmap" \
    -blockdev "driver=$fmt,file=d0-file,node-name=d0,discard=unmap" \
    -device "virtio-blk-pci,drive=d0,id=vd0,serial=kvmcdp-data"
for _ in $(seq 100); do [[ -S $psock && -S $KIT_QMP_SOCK ]] && break; sleep 0.1; done
[[ -S $psock ]] || { kit_dump_console; kit_fail "QEMU did not start"; }
kit_mirror_check_qemu "$KIT_QMP_SOCK"

progress() { kit_console | grep -c GUEST-PROGRESS || true; }
# wait_progress N WHAT: until the guest has reported N progress lines.
wait_progress() {
    for _ in $(seq 1200); do [[ $(progress) -ge $1 ]] && return 0; sleep 0.1; done
    kit_dump_console
    kit_fail "the guest stopped writing ($2)"
}
# ns ISO_TIME: nanoseconds since the epoch.
ns() { date -u -d "$1" +%s%N; }

times=() md5s=()
kit_protect_start "${KIT_CAPTURE_ARGS[@]}" --qmp "$psock" --drive vd0 --store "$store"
kit_protect_wait "base copy complete"
kit_protect_says_mirror 1
"$KVMCDP" qmp --qmp "$KIT_QMP_SOCK" '{"execute":"cont"}' >/dev/null

# 1. Moments while protect captures.  The guest writes on after the last
# of them, so the journal holds records after it: its range reaches past.
wait_progress 1 "before any moment"
for _ in $(seq "$BEFORE"); do
    sleep 0.$((RANDOM % 8 + 2))
    kit_moment "$KIT_QMP_SOCK" "$disk" "$fmt"
done
wait_progress $(($(progress) + 1)) "after the moments before the kill"

# 2. kill -9 mid-stream: QEMU and the guest go on without kvmcdp.
kit_protect_kill
kill -0 "$KIT_QEMU_PID" 2>/dev/null || { kit_dump_console; kit_fail "QEMU died with protect"; }
wait_progress $(($(progress) + 2)) "after protect was killed"
kit_moment "$KIT_QMP_SOCK" "$disk" "$fmt"
gap_time=${times[-1]} gap_md5=${md5s[-1]}
unset 'times[-1]' 'md5s[-1]'
wait_progress $(($(progress) + 1)) "while protect was away"

# 3. A new protect on the same store continues the stream and resends
# what QEMU's dirty bitmap recorded meanwhile.
kit_protect_start "${KIT_CAPTURE_ARGS[@]}" --qmp "$psock" --drive vd0 --store "$store"
kit_protect_wait "continuing the stream after seq"
kit_protect_wait "resync done"
kit_protect_says_mirror 2
restarted=$(grep -o -m1 "continuing the stream after seq [0-9]*" "$KIT_TMPDIR/protect.log")
resynced=$(grep -m1 "resync done" "$KIT_TMPDIR/protect.log")
resynced=${resynced#*resync done}
for _ in $(seq "$AFTER"); do
    sleep 0.$((RANDOM % 8 + 2))
    kit_moment "$KIT_QMP_SOCK" "$disk" "$fmt"
done

# 4. Protect stops cleanly while the guest writes, then the guest stops.
kill -TERM "$KIT_PROTECT_PID"
kit_protect_end
kit_tell_guest_stop "$KIT_TMPDIR/script.img"
kit_wait_poweroff 300 || { kit_dump_console; kit_fail "guest did not finish"; }
line=$(kit_console | grep "GUEST-STALL" || true)
[[ -n $line ]] || { kit_dump_console; kit_fail "the guest did not report its stalls"; }
kit_console | grep -qi "error" && { kit_dump_console; kit_fail "the guest saw an error"; }
worst=${line#*worst_cs=}
worst=${worst%% *}
[[ $worst -le $MAX_STALL_CS ]] ||
    kit_fail "a guest write stalled ${worst}0 ms (at most ${MAX_STALL_CS}0 ms) around protect's kill, restart or stop"

# 5. The store: two recoverable ranges with the gap between them.
"$KVMCDP" journal verify --store "$store" >/dev/null || kit_fail "journal verify failed"
"$KVMCDP" points --store "$store" >"$KIT_TMPDIR/points.txt" || kit_fail "points failed"
"$KVMCDP" points --json --store "$store" >"$KIT_TMPDIR/points.json" || kit_fail "points --json failed"
n_ranges=$(jq '.recoverable | length' "$KIT_TMPDIR/points.json")
n_gaps=$(jq '.gaps | length' "$KIT_TMPDIR/points.json")
if [[ $n_ranges -ne 2 || $n_gaps -ne 1 ||
    $(grep -c '^recoverable: ' "$KIT_TMPDIR/points.txt") -ne 2 ||
    $(grep -c '^gap: ' "$KIT_TMPDIR/points.txt") -ne 1 ]]; then
    cat "$KIT_TMPDIR/points.txt" >&2
    kit_fail "points shows $n_ranges recoverable ranges and $n_gaps gaps, not 2 and 1"
fi
r1_last=$(jq '.recoverable[0].last_time_ns' "$KIT_TMPDIR/points.json")
r2_first=$(jq '.recoverable[1].first_time_ns' "$KIT_TMPDIR/points.json")
for i in "${!times[@]}"; do
    t=$(ns "${times[$i]}")
    if ((i < BEFORE)); then
        ((t < r1_last)) || kit_fail "moment $i before the kill is not inside the first range: $(cat "$KIT_TMPDIR/points.txt")"
    else
        ((t > r2_first)) || kit_fail "moment $i after the resync is not inside the second range: $(cat "$KIT_TMPDIR/points.txt")"
    fi
done
t=$(ns "$gap_time")
((t > r1_last && t < r2_first)) ||
    kit_fail "the moment while protect was away is not in the gap: $(cat "$KIT_TMPDIR/points.txt")"

# 6. Restores: exact before the kill and after the resync, refused in
# the gap (the disk then is not known).
kit_check_restores_at "$store" "$fmt"
rc=0
"$KVMCDP" restore --quiet --force --store "$store" --at "$gap_time" -o "$KIT_TMPDIR/restored.raw" \
    >/dev/null 2>"$KIT_TMPDIR/gap.err" || rc=$?
if [[ $rc -ne 6 ]]; then
    cat "$KIT_TMPDIR/gap.err" >&2
    [[ $rc -eq 0 && $(md5sum "$KIT_TMPDIR/restored.raw" | cut -d' ' -f1) == "$gap_md5" ]] &&
        kit_fail "restore --at a moment while protect was away gave that disk, but points says it is a gap"
    kit_fail "restore --at a moment while protect was away exited $rc, not 6 (not recoverable)"
fi

echo "mirror kill: $fmt on $KIT_MIRROR_QEMU: worst guest write ${worst}0 ms;" \
    "${#times[@]} moments around the gap restore exactly;" \
    "$restarted, resync done$resynced"
