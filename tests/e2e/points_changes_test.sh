#!/usr/bin/env bash
# `kvmcdp points --changes`: when a disk area was written.  A VM on
# Debian's stock QEMU (mirror capture) has three areas written at known
# moments through the drive (HMP qemu-io): area A in the first second,
# area B in the third, area A again in the fifth.  Between the first and
# the sixth second in six intervals:
#   - --range of A shows its bytes in the first and fifth intervals only,
#     --range of B in the third only, and no range the sum of all;
#   - the JSON agrees with the text, and first/last write bracket them;
#   - a restore --at just before A's second write has A's first data.
# Bad input (a range outside the disk, a missing --between, a reversed
# interval) is one error line with exit 2.
#
# Needs KVMCDP and /usr/bin/qemu-system-x86_64 (Debian's qemu-system-x86).
set -euo pipefail
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
fail() { echo "FAIL: $*" >&2; exit 1; }
qemu=/usr/bin/qemu-system-x86_64
[ -x "$qemu" ] || fail "no $qemu: scripts/setup.sh installs Debian's qemu-system-x86"

tmp=$(mktemp -d)
qemu_pid='' protect_pid=''
cleanup() {
  [ -z "$protect_pid" ] || { kill -KILL "$protect_pid" 2>/dev/null; wait "$protect_pid" 2>/dev/null; } || true
  [ -z "$qemu_pid" ] || { kill "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null; } || true
  rm -rf "$tmp"
}
trap cleanup EXIT

truncate -s 32M "$tmp/disk.raw"
"$qemu" -machine pc -accel tcg -nodefaults -display none \
  -drive "file=$tmp/disk.raw,format=raw,if=none,id=drv0,node-name=d0" \
  -device virtio-blk-pci,drive=drv0,id=vd0 \
  -qmp "unix:$tmp/qmp.sock,server=on,wait=off" >"$tmp/qemu.out" 2>"$tmp/qemu.err" &
qemu_pid=$!
for _ in $(seq 100); do [ -S "$tmp/qmp.sock" ] && break; sleep 0.05; done
[ -S "$tmp/qmp.sock" ] || { cat "$tmp/qemu.err" >&2; fail "the stock QEMU did not start"; }
hio() {
  local out
  out=$("$KVMCDP" qmp --qmp "$tmp/qmp.sock" \
    "{\"execute\":\"human-monitor-command\",\"arguments\":{\"command-line\":\"qemu-io drv0 \\\"$1\\\"\"}}")
  [ "$out" = '""' ] || fail "qemu-io '$1': $out"
}
"$KVMCDP" protect --qmp "$tmp/qmp.sock" --drive vd0 --store "$tmp/store" >"$tmp/protect.log" 2>&1 &
protect_pid=$!
for _ in $(seq 600); do grep -q "base copy complete" "$tmp/protect.log" && break; sleep 0.1; done
grep -q "base copy complete" "$tmp/protect.log" || { cat "$tmp/protect.log" >&2; fail "no base copy"; }

# Seconds 0..6 from t0: A (1 MiB at 4 MiB) at +0.5 s, B (256 KiB at 16 MiB)
# at +2.5 s, A again (64 KiB at 4 MiB + 512 KiB) at +4.5 s.
t0=$(($(date +%s) + 1))  # the next whole second: the intervals start there
sleep "$(python3 -c "import time; print(max(0, $t0 + 0.5 - time.time()))")"
hio "write -P 0xa1 4M 1M"
sleep "$(python3 -c "import time; print(max(0, $t0 + 2.5 - time.time()))")"
hio "write -P 0xb1 16M 256k"
sleep "$(python3 -c "import time; print(max(0, $t0 + 4.3 - time.time()))")"
before=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
sleep "$(python3 -c "import time; print(max(0, $t0 + 4.5 - time.time()))")"
hio "write -P 0xa2 4608K 64k"
sleep "$(python3 -c "import time; print(max(0, $t0 + 6.2 - time.time()))")"
kill -TERM "$protect_pid"
wait "$protect_pid" || fail "protect exited non-zero"
protect_pid=

changes() { "$KVMCDP" points --store "$tmp/store" --changes --between "@$t0" "@$((t0 + 6))" --intervals 6 "$@"; }
# bytes of each of the six intervals, from the JSON
per_interval() { changes "$@" --json | python3 -c 'import json,sys; print(" ".join(str(i["bytes"]) for i in json.load(sys.stdin)["intervals"]))'; }
a=$(per_interval --range 4M:1M)
b=$(per_interval --range 16M:1M)
all=$(per_interval)
[ "$a" = "1048576 0 0 0 65536 0" ] || fail "area A per interval: $a"
[ "$b" = "0 0 262144 0 0 0" ] || fail "area B per interval: $b"
[ "$all" = "1048576 0 262144 0 65536 0" ] || fail "whole disk per interval: $all"
text=$(changes --range 4M:1M)
grep -q "^bytes 4194304..5242880 written from .*: 1.06 MiB in 2 writes$" <<<"$text" ||
  fail "text summary: $text"
[ "$(grep -c ' writes  ' <<<"$text")" -eq 6 ] || fail "not six interval lines: $text"
# Just before A's second write: A holds its first data.
"$KVMCDP" restore --quiet --store "$tmp/store" --at "$before" -o "$tmp/r.raw" >/dev/null ||
  fail "restore --at $before failed"
[ "$(od -An -tx1 -j $((4608 * 1024)) -N 1 "$tmp/r.raw" | tr -d ' ')" = a1 ] ||
  fail "the restore before A's second write does not hold A's first data"

for bad in "--range 64M:1M" "--range 4M" "--range x:1"; do
  rc=0
  # shellcheck disable=SC2086  # the words of $bad are separate arguments
  changes $bad >/dev/null 2>"$tmp/err" || rc=$?
  [ "$rc" -eq 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q '^kvmcdp: error: ' "$tmp/err" ||
    fail "points --changes $bad: exit $rc, $(cat "$tmp/err")"
done
rc=0
"$KVMCDP" points --store "$tmp/store" --changes >/dev/null 2>"$tmp/err" || rc=$?
[ "$rc" -eq 2 ] || fail "--changes without --between: exit $rc"
rc=0
"$KVMCDP" points --store "$tmp/store" --changes --between "@$((t0 + 6))" "@$t0" >/dev/null 2>"$tmp/err" || rc=$?
[ "$rc" -eq 2 ] || fail "a reversed interval: exit $rc"
echo "points --changes: A $a, B $b (bytes per 1 s interval); refusals with exit 2"
