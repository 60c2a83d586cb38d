#!/usr/bin/env bash
# kvmcdp recover: a VM runs at once on a point while the point is restored
# into its new image beside it, then moves onto that image.  A store is
# made on Debian's stock QEMU (mirror capture, writes through HMP qemu-io,
# a mark m1, the disk's MD5 then).  The kit guest reads the whole disk (its
# MD5 must be m1's), writes 40 random 64 KiB blocks, checks each by reading
# it back, and waits for the host's word; then it checks the 40 blocks
# again (they must have survived the move) and prints the disk's MD5.
#   1. recover --mark m1 --to IMAGE --qmp SOCK (raw): the VM starts on the
#      overlay recover prints; recover ends 0 with the VM on IMAGE; IMAGE
#      reads (qemu-img) exactly as the guest last saw it.
#   2. the same into a qcow2 IMAGE with the restore held to 1 MiB/s, so
#      that the guest writes into the overlay while the point is still
#      being restored; recover is killed (-9) then; `recover --resume`
#      finishes: the mirror moves the guest's writes into IMAGE and the VM
#      onto it (said with a byte count > 0); same checks.
#   3. no VM: recover without --qmp, a write into the overlay (qemu-io)
#      while the restore runs: IMAGE = the point plus that write.
#   4. a libvirt domain (a real libvirtd, its QEMU running as nobody),
#      shut off, on an old disk: recover --domain --drive vda points it at
#      the overlay, starts it, and moves it onto IMAGE; the guest's checks
#      as in 1; the domain's definition names IMAGE (raw) afterwards.
# Also: prune while a recover runs keeps the journal; IMAGE existing: exit 8.
#
# Needs KVMCDP, KVMCDP_QEMU_PREFIX, KVMCDP_KIT, /usr/bin/qemu-system-x86_64,
# libvirtd and virsh.
set -euo pipefail
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
# shellcheck source=../lib/guest.sh
. "$(dirname "$0")/../lib/guest.sh"
# shellcheck source=../lib/libvirt.sh
. "$(dirname "$0")/../lib/libvirt.sh"
kit_init
chmod 755 "$KIT_TMPDIR"  # the domain's QEMU (nobody) reaches its files
stock=/usr/bin/qemu-system-x86_64
[ -x "$stock" ] || kit_fail "no $stock: scripts/setup.sh installs Debian's qemu-system-x86"
tmp=$KIT_TMPDIR
export TMPDIR=$tmp/work KVMCDP_RUN_DIR=$tmp/run
mkdir "$TMPDIR"
rec_pid='' store_qemu=''
stop_all() {
  [ -z "$rec_pid" ] || { kill -KILL "$rec_pid" 2>/dev/null; wait "$rec_pid" 2>/dev/null; } || true
  [ -z "$store_qemu" ] || { kill "$store_qemu" 2>/dev/null; wait "$store_qemu" 2>/dev/null; } || true
  lv_stop
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

# The guest: MD5 of the point, checked writes, the host's word, the
# writes checked again, MD5 after.
cat >"$tmp/guest.sh" <<'GUEST'
echo "GUEST-BEFORE $(md5sum <"$DATA_DEV" | cut -d' ' -f1)"
bad=0
i=0
while [ $i -lt 40 ]; do
    dd if=/dev/urandom of=/tmp/blk$i bs=64k count=1 2>/dev/null
    off=$(( (i * 37 + 11) % 2000 ))
    dd if=/tmp/blk$i of="$DATA_DEV" bs=64k seek=$off count=1 oflag=direct conv=notrunc 2>/dev/null || bad=$((bad + 1))
    dd if="$DATA_DEV" of=/tmp/back bs=64k skip=$off count=1 iflag=direct 2>/dev/null || bad=$((bad + 1))
    cmp -s /tmp/blk$i /tmp/back || bad=$((bad + 1))
    i=$((i + 1))
done
echo "GUEST-WROTE bad=$bad"
until dd if="$SCRIPT_DEV" bs=4k skip=256 count=1 iflag=direct 2>/dev/null | grep -q STOP; do sleep 0.2; done
i=0
while [ $i -lt 40 ]; do
    off=$(( (i * 37 + 11) % 2000 ))
    dd if="$DATA_DEV" of=/tmp/back bs=64k skip=$off count=1 iflag=direct 2>/dev/null || bad=$((bad + 1))
    cmp -s /tmp/blk$i /tmp/back || bad=$((bad + 1))
    i=$((i + 1))
done
sync
echo 3 >/proc/sys/vm/drop_caches
echo "GUEST-AFTER $(md5sum <"$DATA_DEV" | cut -d' ' -f1) bad=$bad"
[ $bad -eq 0 ]
GUEST

start_recover() {  # log args...
  local log=$1
  shift
  "$KVMCDP" recover "$@" --vm-timeout 60 >"$log.out" 2>"$log" &
  rec_pid=$!
  for _ in $(seq 200); do grep -q 'is ready\|serves again' "$log" && return 0; sleep 0.05; done
  cat "$log" >&2
  kit_fail "recover did not get ready"
}
wait_console() {  # pattern seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do kit_console | grep -q "$1" && return 0; sleep 0.1; done
  kit_dump_console
  kit_fail "the guest did not print $1 within $2 s"
}
check_image() {  # image
  local before after got
  kit_script_rc >/dev/null || { kit_dump_console; kit_fail "the guest script did not finish"; }
  [ "$(kit_script_rc)" = 0 ] || { kit_dump_console; kit_fail "the guest's checked writes failed"; }
  before=$(kit_script_output | sed -n 's/^GUEST-BEFORE //p')
  after=$(kit_script_output | sed -n 's/^GUEST-AFTER \([0-9a-f]*\) .*/\1/p')
  [ "$before" = "$m1" ] || kit_fail "the guest read $before, the point is $m1"
  kit_qemu_img info "$1" | grep -q '^backing file' && kit_fail "$1 has a backing file"
  kit_qemu_img convert -O raw "$1" "$tmp/check.raw"
  got=$(md5sum <"$tmp/check.raw" | cut -d' ' -f1)
  rm -f "$tmp/check.raw"
  [ "$got" = "$after" ] || kit_fail "$1 holds $got, the guest saw $after at the end"
  [ "$after" != "$m1" ] || kit_fail "the guest's writes are not in $1"
  [ ! -e "$1.kvmcdp-recover.qcow2" ] && [ ! -e "$1.kvmcdp-recover.json" ] ||
    kit_fail "the overlay or the recover state is left beside $1"
  [ -z "$(ls -A "$(dirname "$1")" | grep '^\..*kvmcdp-partial$')" ] || kit_fail "restore temps left"
}

# 1. Straight through.
kit_make_stoppable_script_disk "$tmp/guest.sh" "$tmp/script1.img"
start_recover "$tmp/r1.log" --store "$tmp/store" --mark m1 --to "$tmp/r1.raw" --qmp "$KIT_QMP_SOCK"
ov=$(cat "$tmp/r1.log.out")
[ "$ov" = "$tmp/r1.raw.kvmcdp-recover.qcow2" ] || kit_fail "recover printed '$ov'"
kit_qemu_img info -U "$ov" | grep -q '^backing file: json:' || kit_fail "the overlay has no export backing"
pr=$("$KVMCDP" prune --store "$tmp/store" --keep-last 1 2>&1) || true
grep -q "journal: not merged into a new base: recover pid $rec_pid" <<<"$pr" ||
  kit_fail "prune during recover: $pr"
kit_run_guest --script "$tmp/script1.img" --data "$ov" --data-format qcow2
wait "$rec_pid" || { cat "$tmp/r1.log" >&2; kit_fail "recover exited non-zero"; }
rec_pid=
grep -q "^kvmcdp: recovered: $tmp/r1.raw holds seq .*the VM runs on it now" "$tmp/r1.log" ||
  kit_fail "recover said: $(cat "$tmp/r1.log")"
wait_console GUEST-WROTE 120
kit_tell_guest_stop "$tmp/script1.img"
kit_wait_poweroff 120 || { kit_dump_console; kit_fail "the guest did not power off"; }
check_image "$tmp/r1.raw"
[ -z "$(ls "$TMPDIR")" ] || kit_fail "scratch files left: $(ls "$TMPDIR")"
rc=0
"$KVMCDP" recover --store "$tmp/store" --mark m1 --to "$tmp/r1.raw" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 8 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] || kit_fail "recover onto an existing image: exit $rc: $(cat "$tmp/err")"

# 2. The guest writes into the overlay while the restore (1 MiB/s) runs;
# recover is killed then and resumed without a limit.
kit_make_stoppable_script_disk "$tmp/guest.sh" "$tmp/script2.img"
start_recover "$tmp/r2.log" --store "$tmp/store" --mark m1 --to "$tmp/r2.qcow2" --format qcow2 \
  --qmp "$KIT_QMP_SOCK" --copy-speed 1
kit_run_guest --script "$tmp/script2.img" --data "$tmp/r2.qcow2.kvmcdp-recover.qcow2" --data-format qcow2
wait_console GUEST-WROTE 120
[ ! -e "$tmp/r2.qcow2" ] || kit_fail "the restore was complete before the guest wrote: nothing tested"
kill -KILL "$rec_pid"
wait "$rec_pid" 2>/dev/null || true
rec_pid=
kit_qemu_img info -U "$tmp/r2.qcow2.kvmcdp-recover.qcow2" | grep -q '^backing file: json:' ||
  kit_fail "the overlay lost its export backing"
kill -0 "$KIT_QEMU_PID" || { kit_dump_console; kit_fail "the VM died with recover"; }
start_recover "$tmp/r2b.log" --resume --to "$tmp/r2.qcow2" --qmp "$KIT_QMP_SOCK"
wait "$rec_pid" || { cat "$tmp/r2b.log" >&2; kit_fail "recover --resume exited non-zero"; }
rec_pid=
moved=$(sed -n 's/.*the VM runs on it now (\([0-9]*\) bytes of its writes moved.*/\1/p' "$tmp/r2b.log")
[ -n "$moved" ] && [ "$moved" -gt 0 ] || kit_fail "the resume did not mirror the guest's writes: $(cat "$tmp/r2b.log")"
kit_tell_guest_stop "$tmp/script2.img"
kit_wait_poweroff 120 || { kit_dump_console; kit_fail "the guest did not power off after the resume"; }
check_image "$tmp/r2.qcow2"
[ "$(kit_qemu_img info "$tmp/r2.qcow2" | sed -n 's/^file format: //p')" = qcow2 ] || kit_fail "r2 is not qcow2"

# 3. No VM: a write into the overlay while the restore runs is merged.
start_recover "$tmp/r3.log" --store "$tmp/store" --mark m1 --to "$tmp/r3.raw" --copy-speed 16
qio() { "$(kit_qemu_bindir)/qemu-io" "$@"; }
qio -f qcow2 -c "write -P 0x33 1M 1M" "$tmp/r3.raw.kvmcdp-recover.qcow2" >/dev/null
[ ! -e "$tmp/r3.raw" ] || kit_fail "the restore was complete before the write: nothing tested"
wait "$rec_pid" || { cat "$tmp/r3.log" >&2; kit_fail "recover without a VM exited non-zero"; }
rec_pid=
grep -q "no VM had the overlay open: its writes are merged in" "$tmp/r3.log" || kit_fail "r3: $(cat "$tmp/r3.log")"
"$KVMCDP" restore --quiet --store "$tmp/store" --mark m1 -o "$tmp/exp.raw" >/dev/null
qio -f raw -c "write -P 0x33 1M 1M" "$tmp/exp.raw" >/dev/null
[ "$(md5sum <"$tmp/r3.raw")" = "$(md5sum <"$tmp/exp.raw")" ] || kit_fail "r3 is not the point plus the write"
[ ! -e "$tmp/r3.raw.kvmcdp-recover.qcow2" ] || kit_fail "r3's overlay is left"

# 4. A libvirt domain, shut off on its old disk, recovered by name.
command -v libvirtd >/dev/null && command -v virsh >/dev/null ||
  kit_fail "libvirtd and virsh are needed (scripts/setup.sh installs them)"
export KVMCDP_QEMU_IMG=$KVMCDP_QEMU_PREFIX/bin/qemu-img
lv_start "$tmp/lv"
head -c 1M /dev/urandom >"$tmp/old.raw"
truncate -s 128M "$tmp/old.raw"
old_md5=$(md5sum <"$tmp/old.raw")
kit_make_stoppable_script_disk "$tmp/guest.sh" "$tmp/script4.img"
chown nobody:nogroup "$tmp/old.raw"
chmod 644 "$tmp/script4.img"
lv_kit_domain rec "$tmp/old.raw" raw "$tmp/script4.img"
KIT_CONSOLE_LOG=$LV_DIR/rec.console
rc=0
"$KVMCDP" recover --store "$tmp/store" --mark m1 --to "$tmp/r4.raw" --domain rec \
  --connect "$LV_URI" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q -- "--drive" "$tmp/err" ||
  kit_fail "recover --domain without --drive: exit $rc: $(cat "$tmp/err")"
"$KVMCDP" recover --store "$tmp/store" --mark m1 --to "$tmp/r4.raw" --domain rec \
  --connect "$LV_URI" --drive vda --vm-timeout 60 >/dev/null 2>"$tmp/r4.log" &
rec_pid=$!
wait "$rec_pid" || { cat "$tmp/r4.log" "$LV_DIR/libvirtd.log" >&2; kit_fail "recover --domain exited non-zero"; }
rec_pid=
grep -q "^kvmcdp: libvirt domain rec started on $tmp/r4.raw.kvmcdp-recover.qcow2" "$tmp/r4.log" &&
  grep -q "^kvmcdp: recovered: $tmp/r4.raw holds seq .*the VM runs on it now" "$tmp/r4.log" ||
  kit_fail "recover --domain said: $(cat "$tmp/r4.log")"
lv_virsh dumpxml --inactive rec | grep -q "<source file='$tmp/r4.raw'/>" ||
  kit_fail "the domain's definition does not name r4.raw: $(lv_virsh dumpxml --inactive rec | grep -A3 '<disk')"
lv_virsh dumpxml --inactive rec | grep -q "<driver name='qemu' type='raw'" || kit_fail "the definition's format is not raw"
for _ in $(seq 1200); do grep -q GUEST-WROTE "$KIT_CONSOLE_LOG" 2>/dev/null && break; sleep 0.1; done
grep -q GUEST-WROTE "$KIT_CONSOLE_LOG" || { cat "$KIT_CONSOLE_LOG" >&2; kit_fail "the domain's guest did not write"; }
rc=0
"$KVMCDP" recover --store "$tmp/store" --mark m1 --to "$tmp/r5.raw" --domain rec \
  --connect "$LV_URI" --drive vda 2>"$tmp/err" || rc=$?
[ "$rc" -eq 5 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "is running" "$tmp/err" ||
  kit_fail "recover --domain of a running domain: exit $rc: $(cat "$tmp/err")"
[ ! -e "$tmp/r5.raw" ] && [ ! -e "$tmp/r5.raw.kvmcdp-recover.json" ] || kit_fail "the refused recover left files"
kit_tell_guest_stop "$tmp/script4.img"
for _ in $(seq 1200); do [ "$(lv_virsh domstate rec)" = "shut off" ] && break; sleep 0.1; done
[ "$(lv_virsh domstate rec)" = "shut off" ] || kit_fail "the domain did not power off"
check_image "$tmp/r4.raw"
[ "$(md5sum <"$tmp/old.raw")" = "$old_md5" ] || kit_fail "the old disk was written"
echo "recover: the guest read the point at once and wrote while it was restored beside it; it moved onto the image with its writes, also after kill -9 and --resume; without a VM the writes are merged; a libvirt domain is started on the point and moved onto the image"
