#!/usr/bin/env bash
# A QEMU without the cdp filter: Debian's own qemu-system-x86_64 (setup
# installs it beside the patched ones).  protect against it must fail with
# exit status 3 and one `kvmcdp: error:` line that says why and what to
# run instead, create no store, and leave the VM running and its disk as
# it was.
#
# Needs KVMCDP and /usr/bin/qemu-system-x86_64 (Debian's qemu-system-x86).
set -euo pipefail
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
fail() { echo "FAIL: $*" >&2; exit 1; }
stock=/usr/bin/qemu-system-x86_64
[ -x "$stock" ] || fail "no $stock: scripts/setup.sh installs Debian's qemu-system-x86"

tmp=$(mktemp -d)
qemu_pid=
cleanup() {
  [ -z "$qemu_pid" ] || { kill "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null; } || true
  rm -rf "$tmp"
}
trap cleanup EXIT

head -c 16M /dev/urandom >"$tmp/disk.raw"
before=$(md5sum <"$tmp/disk.raw")
"$stock" -machine pc -accel tcg -nodefaults -display none -S \
  -blockdev "driver=file,filename=$tmp/disk.raw,node-name=disk0-file" \
  -blockdev driver=raw,file=disk0-file,node-name=disk0 \
  -device virtio-blk-pci,drive=disk0,id=vd0 \
  -qmp "unix:$tmp/qmp.sock,server=on,wait=off" 2>"$tmp/qemu.err" &
qemu_pid=$!
for _ in $(seq 100); do [ -S "$tmp/qmp.sock" ] && break; sleep 0.05; done
[ -S "$tmp/qmp.sock" ] || { cat "$tmp/qemu.err" >&2; fail "the stock QEMU did not start"; }

rc=0
"$KVMCDP" protect --qmp "$tmp/qmp.sock" --drive vd0 --store "$tmp/store" \
  >"$tmp/out" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 3 ] || { cat "$tmp/err" >&2; fail "protect on a stock QEMU exited $rc, not 3"; }
[ "$(wc -l <"$tmp/err")" -eq 1 ] || { cat "$tmp/err" >&2; fail "more than one line on stderr"; }
grep -q '^kvmcdp: error: this QEMU has no cdp filter.*kvmcdp-qemu' "$tmp/err" ||
  fail "unclear error: $(cat "$tmp/err")"
[ ! -e "$tmp/store" ] || fail "protect created the store it could not fill"
"$KVMCDP" qmp --qmp "$tmp/qmp.sock" '{"execute":"query-status"}' | grep -q '"status"' ||
  fail "the VM's QEMU does not answer after the failed protect"
[ "$(md5sum <"$tmp/disk.raw")" = "$before" ] || fail "the disk changed"
echo "stock QEMU: protect refused with exit 3 and: $(cat "$tmp/err")"
