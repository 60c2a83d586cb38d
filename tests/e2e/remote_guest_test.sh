#!/usr/bin/env bash
# A remote backup server with a real guest: the kit guest never stops
# writing while `kvmcdp protect --spool --remote tcp://` ships its journal
# to a `kvmcdp serve` on loopback.  Meanwhile the server is killed for
# 10 s and restarted, and protect itself is killed -9 and restarted.  At
# moments throughout, the test stops the VM and records the disk's MD5 and
# the filter's seq; at the end every moment restored from the server's
# store must match, and the server's journal has no gap.
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT (see tests/lib/guest.sh).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib/guest.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/guest.sh"
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
export KVMCDP_QEMU_IMG=$KVMCDP_QEMU_PREFIX/bin/qemu-img

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
qmp() { "$KVMCDP" qmp --qmp "$tool" "$1"; }

kit_init
protect_pid= serve_pid=
stop_all() {
    [[ -n $protect_pid ]] && kill -KILL "$protect_pid" 2>/dev/null
    [[ -n $serve_pid ]] && kill -KILL "$serve_pid" 2>/dev/null
    kit_cleanup
}
trap stop_all EXIT
disk=$KIT_TMPDIR/disk.raw
tool=$KIT_TMPDIR/tool.qmp
root=$KIT_TMPDIR/server
spool=$KIT_TMPDIR/spool
mkdir -p "$root"
truncate -s 64M "$disk"

start_serve() {  # start_serve PORT LOG
    : >"$2"
    "$KVMCDP" serve --store-root "$root" --listen "127.0.0.1:$1" 2>"$2" &
    serve_pid=$!
    for _ in $(seq 100); do grep -q serving "$2" && return; sleep 0.1; done
    cat "$2"
    kit_fail "serve did not start"
}

start_protect() {  # start_protect LOG
    "$KVMCDP" protect --qmp "$tool" --drive vd0 --spool "$spool" \
        --remote "tcp://127.0.0.1:$port/vm1" --secret-file "$KIT_TMPDIR/vm1.secret" \
        --segment-size 1 >"$1" 2>&1 &
    protect_pid=$!
}

# Every moment: the VM paused, the disk's MD5 and the filter's seq.
seqs=() md5s=()
moment() {
    qmp '{"execute":"stop"}' >/dev/null
    seqs+=("$(qmp '{"execute":"query-cdp"}' | json_field '[0]["seq"]')")
    md5s+=("$(md5sum "$disk" | cut -d' ' -f1)")
    qmp '{"execute":"cont"}' >/dev/null
}

"$KVMCDP" serve --store-root "$root" --new-store vm1 >"$KIT_TMPDIR/vm1.secret"
chmod 600 "$KIT_TMPDIR/vm1.secret"
start_serve 0 "$KIT_TMPDIR/serve1.log"
port=$(sed -n 's/.* on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$KIT_TMPDIR/serve1.log")

cat >"$KIT_TMPDIR/guest.sh" <<'GUEST'
# Random blocks, some with sync, until the host writes STOP into block 256
# of the script disk.
i=0
while [ $i -lt 20000 ]; do
    [ $((i % 10)) -eq 0 ] && dd if="$SCRIPT_DEV" bs=4k skip=256 count=1 iflag=direct 2>/dev/null | grep -q STOP && break
    dd if=/dev/urandom of="$DATA_DEV" bs=4k seek=$((RANDOM % 16000)) count=$((RANDOM % 32 + 1)) conv=notrunc 2>/dev/null
    [ $((i % 3)) -eq 0 ] && sync
    i=$((i + 1))
    [ $((i % 50)) -eq 0 ] && echo "GUEST-PROGRESS $i"
    sleep 0.05
done
sync
echo "GUEST-DONE $i"
sleep 120
GUEST
kit_make_stoppable_script_disk "$KIT_TMPDIR/guest.sh" "$KIT_TMPDIR/script.img"
kit_run_guest --script "$KIT_TMPDIR/script.img" -- -S \
    -qmp "unix:$tool,server=on,wait=off" \
    -blockdev "driver=file,filename=$disk,node-name=d0,discard=unmap" \
    -device "virtio-blk-pci,drive=d0,id=vd0,serial=kvmcdp-data"
for _ in $(seq 300); do [[ -S $tool ]] && break; sleep 0.1; done
[[ -S $tool ]] || { cat "$KIT_TMPDIR/qemu.out"; kit_fail "QEMU did not start"; }

start_protect "$KIT_TMPDIR/protect1.log"
for _ in $(seq 600); do
    grep -q "base copy complete" "$KIT_TMPDIR/protect1.log" && break
    kill -0 "$protect_pid" 2>/dev/null || { cat "$KIT_TMPDIR/protect1.log"; kit_fail "protect exited"; }
    sleep 0.1
done
qmp '{"execute":"cont"}' >/dev/null
for _ in $(seq 1200); do grep -q GUEST-PROGRESS "$KIT_CONSOLE_LOG" && break; sleep 0.1; done
grep -q GUEST-PROGRESS "$KIT_CONSOLE_LOG" || { kit_dump_console; kit_fail "guest did not start writing"; }

for _ in 1 2 3; do sleep 1; moment; done

# The server dies for 10 s; the guest writes on, the spool takes it.
kill -KILL "$serve_pid"; wait "$serve_pid" 2>/dev/null || true
for _ in 1 2 3 4; do sleep 2.5; moment; done
start_serve "$port" "$KIT_TMPDIR/serve2.log"
for _ in 1 2; do sleep 1; moment; done

# protect itself crashes; the filter keeps the records until it is back.
kill -KILL "$protect_pid"; wait "$protect_pid" 2>/dev/null || true
sleep 2
start_protect "$KIT_TMPDIR/protect2.log"
for _ in 1 2 3; do sleep 1; moment; done

kit_tell_guest_stop "$KIT_TMPDIR/script.img"
for _ in $(seq 600); do grep -q GUEST-DONE "$KIT_CONSOLE_LOG" && break; sleep 0.1; done
grep -q GUEST-DONE "$KIT_CONSOLE_LOG" || { kit_dump_console; kit_fail "guest did not finish"; }
moment

# Everything reaches the server: its durable seq catches up.
last=${seqs[-1]}
for _ in $(seq 600); do
    got=$("$KVMCDP" status --json --store "$spool" | json_field '["remote"]["durable_seq"]')
    [[ $got -ge $last ]] && break
    sleep 0.2
done
[[ $got -ge $last ]] || { cat "$KIT_TMPDIR/protect2.log"; kit_fail "the server holds seq $got, not $last"; }
kill -TERM "$protect_pid"
wait "$protect_pid" || { cat "$KIT_TMPDIR/protect2.log"; kit_fail "protect exited non-zero"; }
protect_pid=
kill -TERM "$serve_pid"
wait "$serve_pid" || kit_fail "serve exited non-zero on SIGTERM"
serve_pid=
if grep -qiE 'I/O error|blk_update_request|Buffer I/O' "$KIT_CONSOLE_LOG"; then
    kit_dump_console
    kit_fail "the guest saw I/O errors"
fi

store=$root/vm1
"$KVMCDP" journal verify --store "$store" >/dev/null || kit_fail "the server's journal does not verify"
gaps=$("$KVMCDP" points --json --store "$store" | json_field '["gaps"].__len__()')
[[ $gaps == 0 ]] || kit_fail "the server's journal has $gaps gaps"
out=$KIT_TMPDIR/restored.raw
for i in "${!seqs[@]}"; do
    "$KVMCDP" restore --quiet --force --store "$store" --seq "${seqs[$i]}" -o "$out" >/dev/null ||
        kit_fail "restore --seq ${seqs[$i]} on the server failed"
    [[ $(md5sum "$out" | cut -d' ' -f1) == "${md5s[$i]}" ]] ||
        kit_fail "seq ${seqs[$i]}: the server's restore differs from the disk"
done
echo "remote with a guest: ${#seqs[@]} moments through a server outage and a protect crash, last seq $last: every restore from the server matches"
