#!/usr/bin/env bash
# Mirror capture across a restart of QEMU, on Debian's stock QEMU: protect
# is stopped, QEMU quits and starts again, the disk is written while no
# protect runs, and protect continues the store.
#   - qcow2: QEMU kept the dirty bitmap in the image (persistent), so
#     protect resends only what it marks;
#   - raw: the bitmap died with QEMU, so the whole disk is resent and
#     compared with the journal's latest image: only what differs (the
#     writes made while away) is journaled, and protect says how much.
# Either way a moment before the restart and one after the resync restore
# exactly, and the journal verifies.  Around it, what the rest of kvmcdp
# does with a mirror-captured drive: snapshot create of the qcow2 disk is
# refused while the job runs (exit 5, saying what to do) and leaves the
# capture going; the raw disk's store ships to a backup server (serve,
# tcp://) whose copy restores the last moment exactly.  Writes come from HMP qemu-io on the
# drive, which passes the mirror's filter like a guest's.
#
# Needs KVMCDP and /usr/bin/qemu-system-x86_64, /usr/bin/qemu-img
# (Debian's qemu-system-x86 and qemu-utils).
set -euo pipefail
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
fail() { echo "FAIL: $*" >&2; exit 1; }
qemu=/usr/bin/qemu-system-x86_64 img=/usr/bin/qemu-img
[ -x "$qemu" ] || fail "no $qemu: scripts/setup.sh installs Debian's qemu-system-x86"

tmp=$(mktemp -d)
qemu_pid='' protect_pid='' serve_pid=''
cleanup() {
  [ -z "$serve_pid" ] || { kill "$serve_pid" 2>/dev/null; wait "$serve_pid" 2>/dev/null; } || true
  [ -z "$protect_pid" ] || { kill -KILL "$protect_pid" 2>/dev/null; wait "$protect_pid" 2>/dev/null; } || true
  [ -z "$qemu_pid" ] || { kill "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null; } || true
  rm -rf "$tmp"
}
trap cleanup EXIT

start_qemu() {  # start_qemu FORMAT
  rm -f "$tmp/qmp.sock"
  "$qemu" -machine pc -accel tcg -nodefaults -display none \
    -drive "file=$tmp/disk.$1,format=$1,if=none,id=drv0,node-name=d0,discard=unmap" \
    -device virtio-blk-pci,drive=drv0,id=vd0 \
    -qmp "unix:$tmp/qmp.sock,server=on,wait=off" >"$tmp/qemu.out" 2>"$tmp/qemu.err" &
  qemu_pid=$!
  for _ in $(seq 100); do [ -S "$tmp/qmp.sock" ] && break; sleep 0.05; done
  [ -S "$tmp/qmp.sock" ] || { cat "$tmp/qemu.err" >&2; fail "the stock QEMU did not start"; }
}
quit_qemu() {
  "$KVMCDP" qmp --qmp "$tmp/qmp.sock" '{"execute":"quit"}' >/dev/null || true
  wait "$qemu_pid" || true
  qemu_pid=
}
hio() {  # hio 'qemu-io command': through the drive, as the guest writes
  local out
  out=$("$KVMCDP" qmp --qmp "$tmp/qmp.sock" \
    "{\"execute\":\"human-monitor-command\",\"arguments\":{\"command-line\":\"qemu-io drv0 \\\"$1\\\"\"}}")
  [ "$out" = '""' ] || fail "qemu-io '$1': $out"
}
disk_md5() {  # the guest's view: QEMU flushed its metadata at stop
  "$img" convert -U -f "$1" -O raw "$tmp/disk.$1" "$tmp/flat.raw"
  md5sum <"$tmp/flat.raw"
}
moment() {  # moment FORMAT: the time and the disk's MD5, the VM stopped
  "$KVMCDP" qmp --qmp "$tmp/qmp.sock" '{"execute":"stop"}' >/dev/null
  times+=("$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)")
  md5s+=("$(disk_md5 "$1")")
  "$KVMCDP" qmp --qmp "$tmp/qmp.sock" '{"execute":"cont"}' >/dev/null
}
protect_until() {  # protect_until LOG TEXT [ARGS...]: start protect, wait for TEXT
  local log=$1 text=$2
  shift 2
  "$KVMCDP" protect --qmp "$tmp/qmp.sock" --drive vd0 --store "$tmp/store" "$@" >"$log" 2>&1 &
  protect_pid=$!
  for _ in $(seq 600); do
    grep -q "$text" "$log" && return 0
    kill -0 "$protect_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$log" >&2
  fail "protect did not say '$text'"
}
protect_stop() {
  kill -TERM "$protect_pid"
  local rc=0
  wait "$protect_pid" || rc=$?
  protect_pid=
  [ "$rc" -eq 0 ] || fail "protect exited $rc"
}

# The backup server for the raw run.
mkdir "$tmp/vault"
"$KVMCDP" serve --store-root "$tmp/vault" --new-store vm --secret-out "$tmp/secret" >/dev/null ||
  fail "serve --new-store failed"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$KVMCDP" serve --listen "127.0.0.1:$port" --store-root "$tmp/vault" --insecure-cleartext \
  >"$tmp/serve.log" 2>&1 &
serve_pid=$!

summary=''
for fmt in qcow2 raw; do
  remote=()
  [ "$fmt" = raw ] && remote=(--remote "tcp://127.0.0.1:$port/vm" --secret-file "$tmp/secret")
  rm -rf "$tmp/store"
  times=() md5s=()
  "$img" create -q -f "$fmt" "$tmp/disk.$fmt" 32M
  start_qemu "$fmt"
  protect_until "$tmp/p1.log" "base copy complete" "${remote[@]}"
  hio "write -P 0x11 0 1M"
  hio "write -P 0x12 4M 64k"
  if [ "$fmt" = qcow2 ]; then
    rc=0
    "$KVMCDP" snapshot create s1 --tree "$tmp/tree" --qmp "$tmp/qmp.sock" --drive vd0 \
      >/dev/null 2>"$tmp/snap.err" || rc=$?
    [ "$rc" -eq 5 ] || fail "snapshot create under the mirror job exited $rc, not 5: $(cat "$tmp/snap.err")"
    grep -q "^kvmcdp: error: the disk is captured by kvmcdp protect in mirror mode.*stop protect" \
      "$tmp/snap.err" || fail "unclear refusal: $(cat "$tmp/snap.err")"
    kill -0 "$protect_pid" 2>/dev/null || fail "protect ended after the refused snapshot"
    hio "write -P 0x13 6M 64k"
  fi
  moment "$fmt"
  protect_stop
  quit_qemu
  start_qemu "$fmt"
  # Written while nothing captures.
  hio "write -P 0x21 8M 128k"
  hio "write -P 0x22 0 4k"
  protect_until "$tmp/p2.log" "resync done" "${remote[@]}"
  if [ "$fmt" = qcow2 ]; then
    grep -q "resending .* MiB that QEMU's dirty bitmap marks" "$tmp/p2.log" ||
      { cat "$tmp/p2.log" >&2; fail "qcow2: protect did not resend from the persistent bitmap"; }
  else
    grep -q "comparing the disk with the journal's latest image" "$tmp/p2.log" ||
      { cat "$tmp/p2.log" >&2; fail "raw: protect did not compare the disk with the journal"; }
    # 132 KiB were written while away: at most a few 64 KiB blocks differ.
    grep -Eq "resync done: 0\.[0-9] MiB of [0-9.]+ MiB differed" "$tmp/p2.log" ||
      { cat "$tmp/p2.log" >&2; fail "raw: more of the disk was journaled than was written"; }
  fi
  hio "write -P 0x31 12M 64k"
  moment "$fmt"
  protect_stop
  quit_qemu
  "$KVMCDP" journal verify --store "$tmp/store" >/dev/null || fail "$fmt: journal verify failed"
  for i in "${!times[@]}"; do
    "$KVMCDP" restore --quiet --force --store "$tmp/store" --at "${times[$i]}" -o "$tmp/r.raw" >/dev/null ||
      fail "$fmt: restore --at ${times[$i]} failed"
    [ "$(md5sum <"$tmp/r.raw")" = "${md5s[$i]}" ] || fail "$fmt: moment $i restores to another disk"
  done
  summary+="${summary:+; }$fmt: $(grep -o "continuing the stream.*" "$tmp/p2.log" | head -1 | cut -c1-90)"
done
# The server's copy of the raw run's store: the last moment, exactly.
"$KVMCDP" restore --quiet --force --store "$tmp/vault/vm" --at "${times[-1]}" -o "$tmp/r.raw" >/dev/null ||
  fail "restore from the backup server's store failed"
[ "$(md5sum <"$tmp/r.raw")" = "${md5s[-1]}" ] || fail "the backup server's copy restores to another disk"
echo "mirror capture across a QEMU restart: $summary; both moments of each restore exactly, also from the backup server; snapshot create refused while the job runs"
