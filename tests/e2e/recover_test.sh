#!/usr/bin/env bash
# kvmcdp recover: a VM runs at once on a point while the point is copied
# into its new image.  A store is made on Debian's stock QEMU (mirror
# capture, writes through HMP qemu-io, a mark m1, the disk's MD5 then).
# Twice, each time into a new image:
#   1. recover --mark m1 --to IMAGE --qmp SOCK; the kit guest boots with
#      IMAGE as its disk and, while block-stream copies, reads the whole
#      disk (its MD5 must be m1's), writes 40 random 64 KiB blocks, checks
#      each by reading it back, and prints the MD5 of the whole disk;
#      recover ends 0 once the copy is complete; IMAGE then has no backing
#      file and reads (qemu-img) exactly as the guest last saw it.
#   2. the same, but recover is killed (-9) while the guest reads;
#      `recover --resume --to IMAGE --qmp SOCK` serves the point again, the
#      guest goes on (its reads waited), the copy completes, same checks.
# Also: prune while a recover runs keeps the journal; IMAGE existing: exit 8.
#
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT, /usr/bin/qemu-system-x86_64.
set -euo pipefail
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
# shellcheck source=../lib/guest.sh
. "$(dirname "$0")/../lib/guest.sh"
kit_init
stock=/usr/bin/qemu-system-x86_64
[ -x "$stock" ] || kit_fail "no $stock: scripts/setup.sh installs Debian's qemu-system-x86"
tmp=$KIT_TMPDIR
export TMPDIR=$tmp/work KVMCDP_RUN_DIR=$tmp/run
mkdir "$TMPDIR"
rec_pid='' store_qemu=''
stop_all() {
  [ -z "$rec_pid" ] || { kill -KILL "$rec_pid" 2>/dev/null; wait "$rec_pid" 2>/dev/null; } || true
  [ -z "$store_qemu" ] || { kill "$store_qemu" 2>/dev/null; wait "$store_qemu" 2>/dev/null; } || true
  kit_cleanup
}
trap stop_all EXIT

# The store.
truncate -s 128M "$tmp/disk.raw"
head -c 8M /dev/urandom >"$tmp/rand"
"$stock" -machine pc -accel tcg -nodefaults -display none \
  -drive "file=$tmp/disk.raw,format=raw,if=none,id=drv0" -device virtio-blk-pci,drive=drv0,id=vd0 \
  -qmp "unix:$tmp/sqmp.sock,server=on,wait=off" >/dev/null 2>"$tmp/sqemu.err" &
store_qemu=$!
for _ in $(seq 100); do [ -S "$tmp/sqmp.sock" ] && break; sleep 0.05; done
hio() {
  local out
  out=$("$KVMCDP" qmp --qmp "$tmp/sqmp.sock" \
    "{\"execute\":\"human-monitor-command\",\"arguments\":{\"command-line\":\"qemu-io drv0 \\\"$1\\\"\"}}")
  [ "$out" = '""' ] || kit_fail "qemu-io '$1': $out"
}
"$KVMCDP" protect --qmp "$tmp/sqmp.sock" --drive vd0 --store "$tmp/store" >"$tmp/protect.log" 2>&1 &
protect=$!
for _ in $(seq 600); do grep -q "base copy complete" "$tmp/protect.log" && break; sleep 0.1; done
hio "write -s $tmp/rand 0 8M"
hio "write -P 0x5a 40M 24M"
hio "write -s $tmp/rand 100M 8M"
"$KVMCDP" mark --store "$tmp/store" m1 >/dev/null
m1=$(md5sum <"$tmp/disk.raw" | cut -d' ' -f1)
hio "write -P 0x77 0 64M"  # after m1: must not show
"$KVMCDP" mark --store "$tmp/store" later >/dev/null
kill -TERM "$protect"
wait "$protect" || kit_fail "protect exited non-zero"
kill "$store_qemu"
wait "$store_qemu" 2>/dev/null || true
store_qemu=
# A restore point, so that prune has a journal to merge.
later=$("$KVMCDP" points --store "$tmp/store" --json |
  python3 -c 'import json,sys; print([m["seq"] for m in json.load(sys.stdin)["marks"] if m["name"]=="later"][0])')
"$KVMCDP" build --store "$tmp/store" --seq "$later" >/dev/null

# The guest: MD5 of the point, checked writes, MD5 after.
cat >"$tmp/guest.sh" <<'GUEST'
echo "GUEST-BEFORE $(md5sum <"$DATA_DEV" | cut -d' ' -f1)"
bad=0
i=0
while [ $i -lt 40 ]; do
    dd if=/dev/urandom of=/tmp/blk bs=64k count=1 2>/dev/null
    off=$(( (i * 37 + 11) % 2000 ))
    dd if=/tmp/blk of="$DATA_DEV" bs=64k seek=$off count=1 oflag=direct conv=notrunc 2>/dev/null || bad=$((bad + 1))
    dd if="$DATA_DEV" of=/tmp/back bs=64k skip=$off count=1 iflag=direct 2>/dev/null || bad=$((bad + 1))
    cmp -s /tmp/blk /tmp/back || bad=$((bad + 1))
    i=$((i + 1))
done
sync
echo 3 >/proc/sys/vm/drop_caches
echo "GUEST-AFTER $(md5sum <"$DATA_DEV" | cut -d' ' -f1) bad=$bad"
[ $bad -eq 0 ]
GUEST
kit_make_script_disk "$tmp/guest.sh" "$tmp/script.img"

start_recover() {  # log args...
  local log=$1
  shift
  "$KVMCDP" recover "$@" --qmp "$KIT_QMP_SOCK" --vm-timeout 60 >/dev/null 2>"$log" &
  rec_pid=$!
  for _ in $(seq 200); do grep -q 'is ready\|serves again' "$log" && return 0; sleep 0.05; done
  cat "$log" >&2
  kit_fail "recover did not get ready"
}
check_image() {  # image
  local before after got
  kit_script_rc >/dev/null || { kit_dump_console; kit_fail "the guest script did not finish"; }
  [ "$(kit_script_rc)" = 0 ] || { kit_dump_console; kit_fail "the guest's checked writes failed"; }
  before=$(kit_script_output | sed -n 's/^GUEST-BEFORE //p')
  after=$(kit_script_output | sed -n 's/^GUEST-AFTER \([0-9a-f]*\) .*/\1/p')
  [ "$before" = "$m1" ] || kit_fail "the guest read $before, the point is $m1"
  kit_qemu_img info "$1" | grep -q '^backing file' && kit_fail "$1 still has a backing file"
  kit_qemu_img convert -O raw "$1" "$tmp/check.raw"
  got=$(md5sum <"$tmp/check.raw" | cut -d' ' -f1)
  rm -f "$tmp/check.raw"
  [ "$got" = "$after" ] || kit_fail "$1 holds $got, the guest saw $after at the end"
  [ "$after" != "$m1" ] || kit_fail "the guest's writes are not in $1"
}

# 1. Straight through.
start_recover "$tmp/r1.log" --store "$tmp/store" --mark m1 --to "$tmp/r1.qcow2"
kit_qemu_img info "$tmp/r1.qcow2" | grep -q '^backing file: json:' || kit_fail "r1 has no export backing"
pr=$("$KVMCDP" prune --store "$tmp/store" --keep-last 1 2>&1) || true
grep -q "journal: not merged into a new base: recover pid $rec_pid" <<<"$pr" ||
  kit_fail "prune during recover: $pr"
kit_run_guest --script "$tmp/script.img" --data "$tmp/r1.qcow2" --data-format qcow2
wait "$rec_pid" || { cat "$tmp/r1.log" >&2; kit_fail "recover exited non-zero"; }
rec_pid=
grep -q "^kvmcdp: recovered: $tmp/r1.qcow2 holds seq" "$tmp/r1.log" || kit_fail "recover said: $(cat "$tmp/r1.log")"
kit_wait_poweroff 120 || { kit_dump_console; kit_fail "the guest did not power off"; }
check_image "$tmp/r1.qcow2"
[ ! -e "$tmp/r1.qcow2.kvmcdp-recover.json" ] || kit_fail "the recover state is left"
[ -z "$(ls "$TMPDIR")" ] || kit_fail "scratch files left: $(ls "$TMPDIR")"
rc=0
"$KVMCDP" recover --store "$tmp/store" --mark m1 --to "$tmp/r1.qcow2" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 8 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] || kit_fail "recover onto an existing image: exit $rc: $(cat "$tmp/err")"

# 2. Killed while the guest reads, then resumed.  The copy is held to
# 8 MiB/s so that the kill lands in it (40 MiB to copy).
start_recover "$tmp/r2.log" --store "$tmp/store" --mark m1 --to "$tmp/r2.qcow2" --copy-speed 8
kit_run_guest --script "$tmp/script.img" --data "$tmp/r2.qcow2" --data-format qcow2
for _ in $(seq 200); do grep -q 'copying the point' "$tmp/r2.log" && break; sleep 0.05; done
kill -KILL "$rec_pid"
wait "$rec_pid" 2>/dev/null || true
rec_pid=
# Killed mid-copy: the image still reads through to the (gone) export.
kit_qemu_img info -U "$tmp/r2.qcow2" | grep -q '^backing file: json:' ||
  kit_fail "the copy was complete before the kill: nothing tested"
sleep 1
kill -0 "$KIT_QEMU_PID" || { kit_dump_console; kit_fail "the VM died with recover"; }
start_recover "$tmp/r2b.log" --resume --to "$tmp/r2.qcow2"  # and no limit from here
wait "$rec_pid" || { cat "$tmp/r2b.log" >&2; kit_fail "recover --resume exited non-zero"; }
rec_pid=
kit_wait_poweroff 180 || { kit_dump_console; kit_fail "the guest did not power off after the resume"; }
check_image "$tmp/r2.qcow2"
echo "recover: the guest read the point at once and wrote while it was copied; exact, also after kill -9 and --resume"
