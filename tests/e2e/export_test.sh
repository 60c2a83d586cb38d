#!/usr/bin/env bash
# kvmcdp export: points served as NBD exports, several at once.  A VM on
# Debian's stock QEMU (mirror capture, 1 MiB segments) has its disk
# written three times through the drive (HMP qemu-io), a mark after each;
# the MD5 of the disk file at each mark is the truth.
#   - three exports at once (two unix sockets, one TCP port): each
#     `qemu-img convert` of an export has its mark's MD5;
#   - nbdcopy and nbdfuse (libnbd) read their marks' MD5 too, and a QEMU
#     with `-blockdev driver=nbd` reads the first mark's data;
#   - `status --store` lists the three; `prune` while they run keeps the
#     journal and says why; after they end, the same prune merges;
#   - a --writable export takes a write (qemu-io), shows it, and when it
#     ends the store is byte for byte what it was (and verifies);
#   - every export ends on SIGTERM with exit 0, its socket, pin and
#     scratch files gone;
#   - bad input: no socket, an unknown mark, a socket path that is a
#     regular file (left as it was): one error line, exits 2, 7, 2.
#
# Needs KVMCDP and /usr/bin/qemu-system-x86_64, qemu-img, qemu-io (Debian's),
# nbdcopy and nbdfuse (libnbd-bin), /dev/fuse.
set -euo pipefail
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
fail() { echo "FAIL: $*" >&2; exit 1; }
qemu=/usr/bin/qemu-system-x86_64
for t in "$qemu" /usr/bin/qemu-img /usr/bin/qemu-io /usr/bin/nbdcopy /usr/bin/nbdfuse; do
  [ -x "$t" ] || fail "no $t: scripts/setup.sh installs Debian's qemu-system-x86, qemu-utils, libnbd-bin"
done

tmp=$(mktemp -d)
export TMPDIR=$tmp/work
mkdir "$TMPDIR"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

truncate -s 32M "$tmp/disk.raw"
"$qemu" -machine pc -accel tcg -nodefaults -display none \
  -drive "file=$tmp/disk.raw,format=raw,if=none,id=drv0,node-name=d0" \
  -device virtio-blk-pci,drive=drv0,id=vd0 \
  -qmp "unix:$tmp/qmp.sock,server=on,wait=off" >"$tmp/qemu.out" 2>"$tmp/qemu.err" &
qemu_pid=$!
pids+=("$qemu_pid")
for _ in $(seq 100); do [ -S "$tmp/qmp.sock" ] && break; sleep 0.05; done
[ -S "$tmp/qmp.sock" ] || { cat "$tmp/qemu.err" >&2; fail "the stock QEMU did not start"; }
hio() {
  local out
  out=$("$KVMCDP" qmp --qmp "$tmp/qmp.sock" \
    "{\"execute\":\"human-monitor-command\",\"arguments\":{\"command-line\":\"qemu-io drv0 \\\"$1\\\"\"}}")
  [ "$out" = '""' ] || fail "qemu-io '$1': $out"
}
"$KVMCDP" protect --qmp "$tmp/qmp.sock" --drive vd0 --store "$tmp/store" --segment-size 1 \
  >"$tmp/protect.log" 2>&1 &
protect_pid=$!
pids+=("$protect_pid")
for _ in $(seq 600); do grep -q "base copy complete" "$tmp/protect.log" && break; sleep 0.1; done
grep -q "base copy complete" "$tmp/protect.log" || { cat "$tmp/protect.log" >&2; fail "no base copy"; }

declare -A md5
head -c 3M /dev/urandom >"$tmp/rand"  # incompressible: several segments
hio "write -P 0xa1 4M 3M"
hio "write -s $tmp/rand 12M 3M"
"$KVMCDP" mark --store "$tmp/store" m1 >/dev/null
md5[m1]=$(md5sum <"$tmp/disk.raw")
hio "write -P 0xb1 8M 3M"
hio "write -z 5M 512k"
hio "write -s $tmp/rand 20M 3M"
"$KVMCDP" mark --store "$tmp/store" m2 >/dev/null
md5[m2]=$(md5sum <"$tmp/disk.raw")
hio "write -P 0xc1 4M 2M"
"$KVMCDP" mark --store "$tmp/store" m3 >/dev/null
md5[m3]=$(md5sum <"$tmp/disk.raw")
kill -TERM "$protect_pid"
wait "$protect_pid" || fail "protect exited non-zero"
kill "$qemu_pid"
wait "$qemu_pid" 2>/dev/null || true
[ "$(ls "$tmp/store/journal" | grep -c '\.seg$')" -ge 3 ] || fail "expected several segments"

# A restore point for prune to keep: the fold would merge the segments
# before it into a new base.
seq_m3=$("$KVMCDP" points --store "$tmp/store" --json |
  python3 -c 'import json,sys; print([m["seq"] for m in json.load(sys.stdin)["marks"] if m["name"]=="m3"][0])')
"$KVMCDP" build --store "$tmp/store" --seq "$seq_m3" >/dev/null
# Everything but the pins and the lock files (which name their last holder).
store_sum() {
  (cd "$tmp/store" && find . -path ./pins -prune -o -type f ! -name lock ! -name '*.lock' -print |
    sort | xargs md5sum)
}
before=$(store_sum)

start_export() {  # name args...: starts it, waits until it serves
  local n=$1
  shift
  "$KVMCDP" export --store "$tmp/store" "$@" >"$tmp/$n.uri" 2>"$tmp/$n.err" &
  pids+=($!)
  eval "pid_$n=$!"
  for _ in $(seq 300); do [ -s "$tmp/$n.uri" ] && return 0; sleep 0.05; done
  cat "$tmp/$n.err" >&2
  fail "export $n did not start"
}
port=$((20000 + RANDOM % 20000))
start_export e1 --mark m1 --socket "$tmp/e1.sock"
start_export e2 --mark m2 --listen "127.0.0.1:$port"
start_export e3 --mark m3 --socket "$tmp/e3.sock" --name third
[ "$(cat "$tmp/e2.uri")" = "nbd://127.0.0.1:$port/" ] || fail "e2's URI: $(cat "$tmp/e2.uri")"
# m3 is the built restore point: its export stands on it (through
# qemu-nbd); m1 and m2 come before it and stand on the base.
grep -q "journal extents (0 bytes) over restore point .* (seq $seq_m3)" "$tmp/e3.err" ||
  fail "e3 does not stand on the restore point: $(cat "$tmp/e3.err")"
grep -q "over the base" "$tmp/e1.err" || fail "e1: $(cat "$tmp/e1.err")"
[ "$(cat "$tmp/e3.uri")" = "nbd+unix:///third?socket=$tmp/e3.sock" ] || fail "e3's URI: $(cat "$tmp/e3.uri")"

for n in e1 e2 e3; do
  /usr/bin/qemu-img convert -f raw -O raw "$(cat "$tmp/$n.uri")" "$tmp/$n.raw" ||
    fail "qemu-img convert of $n"
done
[ "$(md5sum <"$tmp/e1.raw")" = "${md5[m1]}" ] || fail "export of m1 differs from the disk at m1"
[ "$(md5sum <"$tmp/e2.raw")" = "${md5[m2]}" ] || fail "export of m2 differs from the disk at m2"
[ "$(md5sum <"$tmp/e3.raw")" = "${md5[m3]}" ] || fail "export of m3 differs from the disk at m3"
rm -f "$tmp"/e?.raw
# base:allocation: data where m2 has data, holes where the journal zeroed
# (5M..5.5M) and where nothing was ever written (30M).
/usr/bin/qemu-img map --output=json -f raw "$(cat "$tmp/e2.uri")" >"$tmp/map.json"
python3 - "$tmp/map.json" <<'PY' || fail "qemu-img map of the export: $(cat "$tmp/map.json")"
import json, sys
m = json.load(open(sys.argv[1]))
def at(off):
    return next(e for e in m if e["start"] <= off < e["start"] + e["length"])
assert at(4 << 20)["data"] and not at(4 << 20)["zero"], at(4 << 20)
for off in (5 << 20, (5 << 20) + (256 << 10), 30 << 20):
    assert not at(off)["data"], (off, at(off))
PY

# libnbd's clients: nbdcopy of the third, nbdfuse of the first (a file
# under a FUSE mount).
nbdcopy "$(cat "$tmp/e3.uri")" "$tmp/e3.raw" || fail "nbdcopy of e3"
[ "$(md5sum <"$tmp/e3.raw")" = "${md5[m3]}" ] || fail "nbdcopy of m3 differs from the disk at m3"
rm -f "$tmp/e3.raw"
mkdir "$tmp/fuse"
nbdfuse "$tmp/fuse/disk" "$(cat "$tmp/e1.uri")" 2>"$tmp/nbdfuse.err" &
nbdfuse=$!
pids+=("$nbdfuse")
for _ in $(seq 100); do [ -f "$tmp/fuse/disk" ] && break; sleep 0.05; done
[ "$(md5sum <"$tmp/fuse/disk")" = "${md5[m1]}" ] || fail "nbdfuse of m1 differs: $(cat "$tmp/nbdfuse.err")"
umount "$tmp/fuse"
kill "$nbdfuse" 2>/dev/null || true
wait "$nbdfuse" 2>/dev/null || true

# QEMU's own NBD client on the first export.
"$qemu" -machine pc -accel tcg -nodefaults -display none \
  -blockdev "driver=nbd,server.type=unix,server.path=$tmp/e1.sock,node-name=n1,read-only=on" \
  -qmp "unix:$tmp/qmp2.sock,server=on,wait=off" >"$tmp/qemu2.out" 2>"$tmp/qemu2.err" &
qemu2=$!
pids+=("$qemu2")
for _ in $(seq 100); do [ -S "$tmp/qmp2.sock" ] && break; sleep 0.05; done
# (HMP's qemu-io prints on QEMU's standard output.)
"$KVMCDP" qmp --qmp "$tmp/qmp2.sock" \
  '{"execute":"human-monitor-command","arguments":{"command-line":"qemu-io n1 \"read -P 0xa1 4M 3M\""}}' >/dev/null
"$KVMCDP" qmp --qmp "$tmp/qmp2.sock" \
  '{"execute":"human-monitor-command","arguments":{"command-line":"qemu-io n1 \"read -P 0xb1 8M 1M\""}}' >/dev/null
out=$(cat "$tmp/qemu2.out")
[ "$(grep -c '^read .* bytes at offset' <<<"$out")" -eq 2 ] || fail "QEMU's NBD client reads: $out"
[ "$(grep -c 'Pattern verification failed' <<<"$out")" -eq 1 ] &&
  grep -q 'Pattern verification failed at offset 8388608' <<<"$out" ||
  fail "QEMU's NBD client: m1's data at 4M, not m2's at 8M: $out"
kill "$qemu2"
wait "$qemu2" 2>/dev/null || true

# status lists them; prune keeps the journal while they read it.
st=$("$KVMCDP" status --store "$tmp/store")
[ "$(grep -c '^in use:      export pid' <<<"$st")" -eq 3 ] || fail "status: $st"
"$KVMCDP" status --store "$tmp/store" --json |
  python3 -c 'import json,sys; j=json.load(sys.stdin); assert len(j["in_use"])==3, j["in_use"]'
pr=$("$KVMCDP" prune --store "$tmp/store" --keep-last 1) || fail "prune during the exports failed"
grep -q "journal: not merged into a new base: export pid $pid_e1 " <<<"$pr" || fail "prune: $pr"
grep -q "^keep .* seq $seq_m3 .*in use" <<<"$pr" || fail "prune did not keep the exported restore point: $pr"
diff <(echo "$before") <(store_sum) >&2 || fail "prune during the exports changed the store"

# A writable export: the client's write shows, then vanishes.
start_export w --mark m3 --socket "$tmp/w.sock" --writable
/usr/bin/qemu-io -f raw -c "write -P 0xee 0 64k" "$(cat "$tmp/w.uri")" >/dev/null ||
  fail "write to the writable export"
/usr/bin/qemu-img convert -f raw -O raw "$(cat "$tmp/w.uri")" "$tmp/w.raw"
[ "$(od -An -tx1 -N1 "$tmp/w.raw" | tr -d ' ')" = ee ] || fail "the write does not show"
rc=0
/usr/bin/qemu-io -f raw -c "write -P 0xee 0 64k" "$(cat "$tmp/e1.uri")" >"$tmp/ro.out" 2>&1 || rc=$?
grep -qi 'read-only\|permission\|not permitted' "$tmp/ro.out" || fail "a read-only export took a write: $(cat "$tmp/ro.out")"

for n in e1 e2 e3 w; do
  p=$(eval echo "\$pid_$n")
  kill -TERM "$p"
  wait "$p" || fail "export $n exited non-zero: $(cat "$tmp/$n.err")"
  grep -q "^kvmcdp: export of seq .* ended: [1-9][0-9]* connections" "$tmp/$n.err" ||
    fail "export $n: $(cat "$tmp/$n.err")"
done
[ ! -e "$tmp/e1.sock" ] && [ ! -e "$tmp/e3.sock" ] && [ ! -e "$tmp/w.sock" ] || fail "sockets left behind"
[ -z "$(ls "$TMPDIR")" ] || fail "scratch files left behind: $(ls "$TMPDIR")"
[ -z "$(ls "$tmp/store/pins" 2>/dev/null)" ] || fail "pins left behind"
[ "$(store_sum)" = "$before" ] || fail "the exports changed the store"
"$KVMCDP" journal verify --store "$tmp/store" >/dev/null || fail "journal verify after the exports"
pr=$("$KVMCDP" prune --store "$tmp/store" --keep-last 1) || fail "prune after the exports failed"
grep -q "merged the journal through seq" <<<"$pr" || fail "prune after the exports did not merge: $pr"

# A killed export leaves its scratch folder; the next export removes it.
start_export k --latest --socket "$tmp/k.sock"
kill -KILL "$pid_k"
wait "$pid_k" 2>/dev/null || true
[ "$(ls "$TMPDIR" | grep -c '^kvmcdp-export-')" -eq 1 ] || fail "no scratch folder after kill -9"
start_export k2 --latest --socket "$tmp/k.sock"
[ "$(ls "$TMPDIR" | grep -c '^kvmcdp-export-')" -eq 1 ] || fail "the killed export's folder is left: $(ls "$TMPDIR")"
kill -TERM "$pid_k2"
wait "$pid_k2" || fail "export k2 exited non-zero"
[ -z "$(ls "$TMPDIR")" ] || fail "scratch files left behind: $(ls "$TMPDIR")"

# Refusals.
expect() {  # exit-code args...
  local want=$1 rc=0
  shift
  "$KVMCDP" export --store "$tmp/store" "$@" >/dev/null 2>"$tmp/err" || rc=$?
  [ "$rc" -eq "$want" ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q '^kvmcdp: error: ' "$tmp/err" ||
    fail "export $*: exit $rc (want $want): $(cat "$tmp/err")"
}
expect 2 --latest
expect 7 --mark nosuch --socket "$tmp/x.sock"
echo keep >"$tmp/file"
expect 2 --latest --socket "$tmp/file"
[ "$(cat "$tmp/file")" = keep ] || fail "a regular file at --socket was touched"
echo "export: three points at once exact (qemu-img, nbdcopy, nbdfuse, QEMU's NBD client), writable export thrown away, prune held off by the pins"
