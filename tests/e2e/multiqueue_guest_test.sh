#!/usr/bin/env bash
# The paper's test on a multiqueue disk: the kit guest runs on two vCPUs
# and writes from both at once, each writer pinned to its CPU, into
# overlapping ranges of a virtio-blk device with two queues, each queue
# served by its own iothread (iothread-vq-mapping, QEMU 9.0 and later).
# The cdp filter so gets requests from two AioContexts at once.  At 10+
# moments the test stops the VM and records the disk's MD5 and the
# filter's seq; every moment must restore to exactly that MD5, and the
# guest's block layer must show that both queues carried writes.
#
# QEMU lines: 10.0
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT (see tests/lib/guest.sh).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"

readonly MOMENTS=12
export KVMCDP_QEMU_IMG=$KVMCDP_QEMU_PREFIX/bin/qemu-img

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
qmp() { "$KVMCDP" qmp --qmp "$tool_sock" "$1"; }

kit_init
disk=$KIT_TMPDIR/disk.raw
tool_sock=$KIT_TMPDIR/tool.qmp
store=$KIT_TMPDIR/store
truncate -s 64M "$disk"

# Two writers, one per vCPU, over ranges that overlap in their middle
# (blocks 4096-8191 of 4 KiB): overlapping writes from the two queues
# must land in the journal in the order they took effect on the disk.
cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
mount -t debugfs debugfs /sys/kernel/debug
cat >/tmp/writer.sh <<'WRITER'
i=0
while [ $i -lt 120 ]; do
    dd if=/dev/urandom of="$2" bs=4k seek=$(($1 + RANDOM % 8000)) count=$((RANDOM % 16 + 1)) oflag=direct conv=notrunc 2>/dev/null
    [ $((i % 10)) -eq 0 ] && sync
    i=$((i + 1))
done
WRITER
taskset -c 0 sh /tmp/writer.sh 0 "$DATA_DEV" &
taskset -c 1 sh /tmp/writer.sh 4096 "$DATA_DEV" &
wait
sync
dev=$(basename "$DATA_DEV")
for q in /sys/kernel/debug/block/$dev/hctx*; do
    echo "GUEST-QUEUE $(basename "$q") $(cat "$q/run")"
done
echo GUEST-DONE
sleep 60
GUEST
kit_make_script_disk "$KIT_TMPDIR/guest.sh" "$KIT_TMPDIR/script.img"
# The VM starts paused so the filter and base copy are in place before
# the guest's first write.
kit_run_guest --script "$KIT_TMPDIR/script.img" -- -S -smp 2 \
    -qmp "unix:$tool_sock,server=on,wait=off" \
    -object iothread,id=io0 -object iothread,id=io1 \
    -blockdev "driver=file,filename=$disk,node-name=d0-file,aio=threads,cache.direct=on" \
    -blockdev "driver=raw,file=d0-file,node-name=d0" \
    -device '{"driver":"virtio-blk-pci","drive":"d0","id":"vd0","serial":"kvmcdp-data","num-queues":2,"iothread-vq-mapping":[{"iothread":"io0"},{"iothread":"io1"}]}'
for _ in $(seq 100); do [[ -S $tool_sock ]] && break; sleep 0.1; done

kit_protect_start --qmp "$tool_sock" --drive vd0 --store "$store"
kit_protect_wait "base copy complete"
qmp '{"execute":"cont"}' >/dev/null

seqs=() md5s=()
moment() {
    qmp '{"execute":"stop"}' >/dev/null
    seqs+=("$(qmp '{"execute":"query-cdp"}' | json_field '[0]["seq"]')")
    md5s+=("$(md5sum "$disk" | cut -d' ' -f1)")
    qmp '{"execute":"cont"}' >/dev/null
}
while [[ ${#seqs[@]} -lt $MOMENTS ]]; do
    sleep 0.$((RANDOM % 5 + 1))
    grep -q GUEST-DONE "$KIT_CONSOLE_LOG" && break
    moment
done
for _ in $(seq 1200); do grep -q GUEST-DONE "$KIT_CONSOLE_LOG" && break; sleep 0.1; done
grep -q GUEST-DONE "$KIT_CONSOLE_LOG" || { kit_dump_console; kit_fail "guest did not finish"; }
moment   # after the guest's last sync

kill -TERM "$KIT_PROTECT_PID"
kit_protect_end
[[ ${#seqs[@]} -ge 10 ]] || kit_fail "only ${#seqs[@]} moments recorded (guest too fast?)"
grep -qi "error" "$KIT_CONSOLE_LOG" && { kit_dump_console; kit_fail "guest saw an error"; }

# Both queues carried writes: the guest ran each hardware queue (its
# block layer counts the runs of each, hctxN/run in debugfs).
queues=$(kit_console | sed -n 's/^GUEST-QUEUE \(hctx[0-9]*\) \([0-9]*\)$/\1=\2/p' | tr '\n' ' ')
busy=$(kit_console | awk '/^GUEST-QUEUE hctx[0-9]+ [0-9]+$/ && $3 > 0 { n++ } END { print n + 0 }')
[[ $busy -ge 2 ]] || { kit_dump_console; kit_fail "the writes did not use two queues: $queues"; }

kit_check_restores "$store"
echo "multiqueue: ${#seqs[@]} moments, last seq ${seqs[-1]}, queues $queues: every restore matches"
