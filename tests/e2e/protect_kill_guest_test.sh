#!/usr/bin/env bash
# A protect that dies does not hold the guest back: the kit guest writes
# 64 KiB blocks with a flush after each (every flush waits for kvmcdp's
# acknowledgement) and measures, with its own clock, the longest time one
# write and its flush took.  kill -9 of protect in the middle must not
# stall it for the filter's timeout (10 s): the filter sees the
# connection close and switches to its dirty bitmap at once.  Then a new
# protect continues the stream, and the disk restores exactly.
#
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT (see tests/lib/guest.sh).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
export KVMCDP_QEMU_IMG=$KVMCDP_QEMU_PREFIX/bin/qemu-img
readonly MAX_STALL_CS=100   # 1 s, in the guest's /proc/uptime centiseconds

kit_init
disk=$KIT_TMPDIR/disk.raw
store=$KIT_TMPDIR/store
tool_sock=$KIT_TMPDIR/tool.qmp
"$KVMCDP_QEMU_IMG" create -q -f raw "$disk" 64M

cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
dd if=/dev/urandom of=/tmp/blk bs=64k count=1 2>/dev/null
cs() { t=$(cut -d' ' -f1 /proc/uptime); echo "${t%%.*}${t#*.}"; }
worst=0
i=0
while [ $i -lt 100000 ]; do
    [ $((i % 10)) -eq 0 ] && dd if="$SCRIPT_DEV" bs=4k skip=256 count=1 iflag=direct 2>/dev/null | grep -q STOP && break
    t0=$(cs)
    dd if=/tmp/blk of="$DATA_DEV" bs=64k seek=$((i % 900)) count=1 oflag=direct conv=notrunc,fsync 2>/dev/null
    t1=$(cs)
    [ $((t1 - t0)) -gt $worst ] && worst=$((t1 - t0))
    i=$((i + 1))
    [ $((i % 50)) -eq 0 ] && echo "GUEST-PROGRESS $i"
done
sync
echo "GUEST-STALL worst_cs=$worst iterations=$i"
GUEST
kit_make_stoppable_script_disk "$KIT_TMPDIR/guest.sh" "$KIT_TMPDIR/script.img"
kit_run_guest --script "$KIT_TMPDIR/script.img" -- -S \
    -qmp "unix:$tool_sock,server=on,wait=off" \
    -blockdev "driver=file,filename=$disk,node-name=d0-file" \
    -blockdev "driver=raw,file=d0-file,node-name=d0" \
    -device "virtio-blk-pci,drive=d0,id=vd0,serial=kvmcdp-data"
for _ in $(seq 100); do [[ -S $tool_sock ]] && break; sleep 0.1; done

progress() { kit_console | grep -c GUEST-PROGRESS || true; }

kit_protect_start --qmp "$tool_sock" --drive vd0 --store "$store"
kit_protect_wait "base copy complete"
"$KVMCDP" qmp --qmp "$tool_sock" '{"execute":"cont"}' >/dev/null
# The guest writes a while under capture, then protect dies mid-stream.
for _ in $(seq 600); do [[ $(progress) -ge 2 ]] && break; sleep 0.1; done
[[ $(progress) -ge 2 ]] || { kit_dump_console; kit_fail "the guest does not write"; }
kit_protect_kill
before=$(progress)
for _ in $(seq 600); do [[ $(progress) -ge $((before + 2)) ]] && break; sleep 0.1; done
# A new protect takes the filter over and resends what was written since.
kit_protect_start --qmp "$tool_sock" --drive vd0 --store "$store"
kit_protect_wait "protecting vd0" 2
for _ in $(seq 600); do [[ $(progress) -ge $((before + 4)) ]] && break; sleep 0.1; done
kit_tell_guest_stop "$KIT_TMPDIR/script.img"
kit_wait_poweroff 300 || { kit_dump_console; kit_fail "guest did not finish"; }
line=$(kit_console | grep "GUEST-STALL" || true)
[[ -n $line ]] || { kit_dump_console; kit_fail "the guest did not report its stalls"; }
echo "protect kill: $line"
worst=$(sed 's/.*worst_cs=\([0-9]*\).*/\1/' <<<"$line")
[[ $worst -le $MAX_STALL_CS ]] ||
    kit_fail "a guest write stalled ${worst}0 ms when protect was killed (at most ${MAX_STALL_CS}0 ms)"

# QEMU is gone (the guest powered off): the second protect ends by itself.
kit_protect_end
"$KVMCDP" journal verify --store "$store" >/dev/null || kit_fail "journal verify failed"
"$KVMCDP" restore --quiet --force --store "$store" --latest -o "$KIT_TMPDIR/restored.raw" >/dev/null ||
    kit_fail "restore --latest failed"
[[ $(md5sum <"$KIT_TMPDIR/restored.raw") == $(md5sum <"$disk") ]] ||
    kit_fail "the restored disk differs from the guest's"
echo "protect kill: ok"
