#!/usr/bin/env bash
# A QEMU without the cdp filter: Debian's own qemu-system-x86_64 (setup
# installs it beside the patched ones).  protect --capture filter against
# it must fail with exit status 3 and one `kvmcdp: error:` line that says
# why and what to run instead, create no store, and leave the VM running
# and its disk as it was.  The default, --capture auto, then protects the
# same VM by active mirror: it says `capture: active mirror`, completes
# the base copy, captures a write made through the device (HMP qemu-io on
# the virtio-blk device's backend, so the write passes the mirror as a
# guest's would) and stops on SIGTERM with exit 0; the store restores to
# the disk.  Then the same on Debian's stock qemu-storage-daemon, which has
# no getfd (the mirror's NBD client connects to a private unix socket):
# writes, write-zeroes, a discard and a flush through an export of the
# job's filter node are captured, status says "mirror capture", and the
# store restores to the daemon's disk.
#
# Needs KVMCDP and /usr/bin/qemu-system-x86_64 (Debian's qemu-system-x86).
set -euo pipefail
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
fail() { echo "FAIL: $*" >&2; exit 1; }
stock=/usr/bin/qemu-system-x86_64
[ -x "$stock" ] || fail "no $stock: scripts/setup.sh installs Debian's qemu-system-x86"

tmp=$(mktemp -d)
qemu_pid='' protect_pid='' qsd_pid=''
cleanup() {
  [ -z "$protect_pid" ] || { kill -KILL "$protect_pid" 2>/dev/null; wait "$protect_pid" 2>/dev/null; } || true
  [ -z "$qemu_pid" ] || { kill "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null; } || true
  [ -z "$qsd_pid" ] || { kill "$qsd_pid" 2>/dev/null; wait "$qsd_pid" 2>/dev/null; } || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

head -c 16M /dev/urandom >"$tmp/disk.raw"
before=$(md5sum <"$tmp/disk.raw")
"$stock" -machine pc -accel tcg -nodefaults -display none -S \
  -blockdev "driver=file,filename=$tmp/disk.raw,node-name=disk0-file" \
  -blockdev driver=raw,file=disk0-file,node-name=disk0 \
  -device virtio-blk-pci,drive=disk0,id=vd0 \
  -qmp "unix:$tmp/qmp.sock,server=on,wait=off" \
  -qmp "unix:$tmp/tool.sock,server=on,wait=off" >"$tmp/qemu.out" 2>"$tmp/qemu.err" &
qemu_pid=$!
for _ in $(seq 100); do [ -S "$tmp/qmp.sock" ] && [ -S "$tmp/tool.sock" ] && break; sleep 0.05; done
[ -S "$tmp/qmp.sock" ] || { cat "$tmp/qemu.err" >&2; fail "the stock QEMU did not start"; }

rc=0
"$KVMCDP" protect --qmp "$tmp/qmp.sock" --drive vd0 --store "$tmp/store" --capture filter \
  >"$tmp/out" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 3 ] || { cat "$tmp/err" >&2; fail "protect --capture filter on a stock QEMU exited $rc, not 3"; }
[ "$(wc -l <"$tmp/err")" -eq 1 ] || { cat "$tmp/err" >&2; fail "more than one line on stderr"; }
grep -q '^kvmcdp: error: this QEMU has no cdp filter.*kvmcdp-qemu' "$tmp/err" ||
  fail "unclear error: $(cat "$tmp/err")"
[ ! -e "$tmp/store" ] || fail "protect created the store it could not fill"
"$KVMCDP" qmp --qmp "$tmp/qmp.sock" '{"execute":"query-status"}' | grep -q '"status"' ||
  fail "the VM's QEMU does not answer after the failed protect"
[ "$(md5sum <"$tmp/disk.raw")" = "$before" ] || fail "the disk changed"
refusal=$(cat "$tmp/err")

# The default: capture by active mirror.
"$KVMCDP" protect --qmp "$tmp/qmp.sock" --drive vd0 --store "$tmp/store" >"$tmp/protect.log" 2>&1 &
protect_pid=$!
for _ in $(seq 600); do
  grep -q "base copy complete" "$tmp/protect.log" && break
  kill -0 "$protect_pid" 2>/dev/null || break
  sleep 0.1
done
grep -q "base copy complete" "$tmp/protect.log" ||
  { cat "$tmp/protect.log" >&2; fail "protect (--capture auto) on a stock QEMU did not complete its base copy"; }
[ "$(grep -c '^kvmcdp: capture: active mirror' "$tmp/protect.log")" -eq 1 ] ||
  { cat "$tmp/protect.log" >&2; fail "protect (--capture auto) on a stock QEMU did not say 'capture: active mirror'"; }
hmp='{"execute":"human-monitor-command","arguments":{"command-line":"qemu-io -d /machine/peripheral/vd0/virtio-backend \"write -P 0x5a 1M 64k\""}}'
# The test's own QMP socket: protect may hold its own while it runs.
out=$("$KVMCDP" qmp --qmp "$tmp/tool.sock" "$hmp") || fail "HMP qemu-io failed"
[ "$out" = '""' ] || [ -z "$out" ] || fail "HMP qemu-io said: $out"
[ "$(od -An -tx1 -j 1048576 -N 1 "$tmp/disk.raw" | tr -d ' ')" = 5a ] || fail "the write through the device did not reach the disk"
kill -TERM "$protect_pid"
for _ in $(seq 300); do kill -0 "$protect_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$protect_pid" 2>/dev/null && { cat "$tmp/protect.log" >&2; fail "protect did not stop on SIGTERM"; }
rc=0
wait "$protect_pid" || rc=$?
protect_pid=
[ "$rc" -eq 0 ] || { cat "$tmp/protect.log" >&2; fail "protect (--capture auto) exited $rc on SIGTERM, not 0"; }
"$KVMCDP" journal verify --store "$tmp/store" >/dev/null || fail "journal verify failed"
"$KVMCDP" restore --quiet --store "$tmp/store" --latest -o "$tmp/restored.raw" >/dev/null ||
  fail "restore --latest failed"
[ "$(md5sum <"$tmp/restored.raw")" = "$(md5sum <"$tmp/disk.raw")" ] ||
  fail "the store restores to another disk than the VM's (the write through the mirror was not captured?)"

# Debian's stock qemu-storage-daemon (no getfd: the NBD target connects
# to a private unix socket).  Writes come through an export of the job's
# filter node on protect's own NBD server, as a guest's would.
qsd=/usr/bin/qemu-storage-daemon
head -c 16M /dev/urandom >"$tmp/qsd.raw"
"$qsd" --blockdev "driver=file,filename=$tmp/qsd.raw,node-name=qf" \
  --blockdev driver=raw,file=qf,node-name=qdisk \
  --chardev "socket,id=m0,path=$tmp/qsd.qmp,server=on,wait=off" --monitor chardev=m0 \
  --chardev "socket,id=m1,path=$tmp/qsd-tool.qmp,server=on,wait=off" --monitor chardev=m1 \
  >"$tmp/qsd.log" 2>&1 &
qsd_pid=$!
for _ in $(seq 100); do [ -S "$tmp/qsd-tool.qmp" ] && break; sleep 0.05; done
"$KVMCDP" protect --qmp "$tmp/qsd.qmp" --drive qdisk --store "$tmp/qstore" >"$tmp/qprotect.log" 2>&1 &
protect_pid=$!
for _ in $(seq 600); do
  grep -q "base copy complete" "$tmp/qprotect.log" && break
  kill -0 "$protect_pid" 2>/dev/null || break
  sleep 0.1
done
grep -q "base copy complete" "$tmp/qprotect.log" ||
  { cat "$tmp/qprotect.log" >&2; fail "protect on the stock qemu-storage-daemon did not complete its base copy"; }
stream=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["stream_id"])' "$tmp/qstore/manifest.json")
sock=/tmp/kvmcdp-$protect_pid-$stream.nbd
"$KVMCDP" qmp --qmp "$tmp/qsd-tool.qmp" "{\"execute\":\"block-export-add\",\"arguments\":{\"type\":\"nbd\",\"id\":\"w\",\"name\":\"w\",\"node-name\":\"kvmcdp-f-$stream\",\"writable\":true}}" >/dev/null ||
  fail "cannot export the mirror job's filter node"
/usr/bin/qemu-io -f raw "nbd+unix:///w?socket=$sock" -c "write -P 0x6b 2M 1M" -c "write -z 5M 64k" \
  -c "discard 8M 1M" -c flush >/dev/null || fail "qemu-io through the export failed"
"$KVMCDP" status --store "$tmp/qstore" | grep -q "mirror capture, connected" ||
  fail "status does not say mirror capture: $("$KVMCDP" status --store "$tmp/qstore")"
"$KVMCDP" qmp --qmp "$tmp/qsd-tool.qmp" '{"execute":"block-export-del","arguments":{"id":"w"}}' >/dev/null
kill -TERM "$protect_pid"
rc=0
wait "$protect_pid" || rc=$?
protect_pid=
[ "$rc" -eq 0 ] || { cat "$tmp/qprotect.log" >&2; fail "protect on qemu-storage-daemon exited $rc"; }
"$KVMCDP" restore --quiet --store "$tmp/qstore" --latest -o "$tmp/qrestored.raw" >/dev/null ||
  fail "restore --latest (qemu-storage-daemon) failed"
cmp -s "$tmp/qrestored.raw" "$tmp/qsd.raw" ||
  fail "qemu-storage-daemon: the store restores to another disk than the daemon's"
echo "stock QEMU: --capture filter refused with exit 3 and: $refusal; --capture auto protects by active mirror and restores exactly, on qemu-system-x86_64 and qemu-storage-daemon"
