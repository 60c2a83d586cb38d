#!/usr/bin/env bash
# kvmcdp mount: file-level restore.  The disk of a VM on Debian's stock
# QEMU (mirror capture) holds a partition table and an ext4 file system
# in partition 1.  Files are added to it over time: each step is made
# on a copy of the disk with debugfs, and the 4 KiB blocks that differ
# are written through the drive (HMP qemu-io), so the journal sees what a
# guest's writes would be; a mark after each step.
#   - mount --mark first: the first file is there with its content, the
#     second is not; the mount is read-only (a write fails); status lists
#     it; umount leaves no mount, loop device, process, pin or file;
#   - mount --mark second --foreground (partition found by itself):
#     both files; Ctrl-C (SIGINT) ends it the same way;
#   - refusals: a mount point that does not exist (7), that is a file
#     (2), --partition 3 (2), umount of a directory kvmcdp did not mount (7).
#
# Needs KVMCDP, /usr/bin/qemu-system-x86_64, qemu-storage-daemon with
# FUSE, /dev/fuse, loop devices, mkfs.ext4, debugfs, sfdisk.
set -euo pipefail
: "${KVMCDP:?set KVMCDP to the kvmcdp binary}"
fail() { echo "FAIL: $*" >&2; exit 1; }
qemu=/usr/bin/qemu-system-x86_64
for t in "$qemu" /usr/bin/qemu-storage-daemon /usr/sbin/mkfs.ext4 /usr/sbin/debugfs /usr/sbin/sfdisk; do
  [ -x "$t" ] || fail "no $t: scripts/setup.sh installs it"
done
[ -c /dev/fuse ] || fail "no /dev/fuse"

tmp=$(mktemp -d)
export TMPDIR=$tmp/work
mkdir "$TMPDIR" "$tmp/mnt"
pids=()
cleanup() {
  mountpoint -q "$tmp/mnt" && umount -l "$tmp/mnt" 2>/dev/null
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # the background mount process is not our child: by its pin
  for f in "$tmp"/store/pins/mount-*.json; do
    [ -e "$f" ] && kill -TERM "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$f")" 2>/dev/null
  done
  sleep 0.5
  rm -rf "$tmp"
}
trap cleanup EXIT

# The disk: GPT, partition 1 from 1 MiB, ext4 in it.
truncate -s 64M "$tmp/disk.raw"
echo 'start=2048, size=100000, type=L' | sfdisk -q --label gpt "$tmp/disk.raw" >/dev/null
part="$tmp/next.raw?offset=1048576"  # debugfs edits the copy
mkfs.ext4 -q -F -E offset=1048576 "$tmp/disk.raw" 48M
cp "$tmp/disk.raw" "$tmp/next.raw"

"$qemu" -machine pc -accel tcg -nodefaults -display none \
  -drive "file=$tmp/disk.raw,format=raw,if=none,id=drv0,node-name=d0" \
  -device virtio-blk-pci,drive=drv0,id=vd0 \
  -qmp "unix:$tmp/qmp.sock,server=on,wait=off" >"$tmp/qemu.out" 2>"$tmp/qemu.err" &
qemu_pid=$!
pids+=("$qemu_pid")
for _ in $(seq 100); do [ -S "$tmp/qmp.sock" ] && break; sleep 0.05; done
[ -S "$tmp/qmp.sock" ] || { cat "$tmp/qemu.err" >&2; fail "the stock QEMU did not start"; }
"$KVMCDP" protect --qmp "$tmp/qmp.sock" --drive vd0 --store "$tmp/store" >"$tmp/protect.log" 2>&1 &
protect_pid=$!
pids+=("$protect_pid")
for _ in $(seq 600); do grep -q "base copy complete" "$tmp/protect.log" && break; sleep 0.1; done
grep -q "base copy complete" "$tmp/protect.log" || { cat "$tmp/protect.log" >&2; fail "no base copy"; }

# Writes through the drive every 4 KiB block where next.raw differs.
python_diff='
import sys
cur, nxt, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
a, b = open(cur, "rb"), open(nxt, "rb")
off, n, runs = 0, 0, []
while True:
    x, y = a.read(4096), b.read(4096)
    if not y: break
    if x != y:
        if runs and runs[-1][0] + runs[-1][1] == off: runs[-1][1] += 4096
        else: runs.append([off, 4096])
    off += 4096
for i, (o, l) in enumerate(runs):
    b.seek(o)
    name = "%s.%d" % (prefix, i)
    open(name, "wb").write(b.read(l))
    print(o, l, name)
'
apply_next() {
  python3 -c "$python_diff" "$tmp/disk.raw" "$tmp/next.raw" "$tmp/blk" >"$tmp/writes"
  [ -s "$tmp/writes" ] || fail "debugfs changed nothing"
  while read -r off len file; do
    out=$("$KVMCDP" qmp --qmp "$tmp/qmp.sock" \
      "{\"execute\":\"human-monitor-command\",\"arguments\":{\"command-line\":\"qemu-io drv0 \\\"write -s $file $off $len\\\"\"}}")
    [ "$out" = '""' ] || fail "qemu-io write: $out"
  done <"$tmp/writes"
  cmp -s "$tmp/disk.raw" "$tmp/next.raw" || fail "the drive does not hold the new file system"
}
head -c 300000 /dev/urandom >"$tmp/first.bin"
echo "the second file" >"$tmp/second.txt"
debugfs -w -R "write $tmp/first.bin first.bin" "$part" >/dev/null 2>&1
apply_next
"$KVMCDP" mark --store "$tmp/store" first >/dev/null
debugfs -w -R "write $tmp/second.txt second.txt" "$part" >/dev/null 2>&1
apply_next
"$KVMCDP" mark --store "$tmp/store" second >/dev/null
kill -TERM "$protect_pid"
wait "$protect_pid" || fail "protect exited non-zero"
loops_before=$(losetup -a | wc -l)

# In the background, then umount.
"$KVMCDP" mount --store "$tmp/store" --mark first --partition 1 "$tmp/mnt" 2>"$tmp/m1.err" ||
  fail "mount --mark first: $(cat "$tmp/m1.err")"
grep -q "^kvmcdp: mounted seq .* at $tmp/mnt: ext4 on partition 1, options ro,noload" "$tmp/m1.err" ||
  fail "mount said: $(cat "$tmp/m1.err")"
cmp -s "$tmp/mnt/first.bin" "$tmp/first.bin" || fail "first.bin is not there with its content: $(ls -la "$tmp/mnt"; cat "$tmp/m1.err"; debugfs -R "ls -l" "$tmp/disk.raw?offset=1048576")"
[ ! -e "$tmp/mnt/second.txt" ] || fail "second.txt is there before it was written"
! touch "$tmp/mnt/new" 2>/dev/null || fail "the mount is writable"
st=$("$KVMCDP" status --store "$tmp/store")
grep -q "^in use:      mount pid .* at $tmp/mnt" <<<"$st" || fail "status: $st"
"$KVMCDP" umount "$tmp/mnt" 2>"$tmp/u1.err" || fail "umount: $(cat "$tmp/u1.err")"
! mountpoint -q "$tmp/mnt" || fail "still mounted"
[ "$(losetup -a | wc -l)" -eq "$loops_before" ] || fail "a loop device is left: $(losetup -a)"
[ -z "$(ls "$tmp/store/pins" 2>/dev/null)" ] || fail "a pin is left"
[ -z "$(ls "$TMPDIR")" ] || fail "files are left: $(ls "$TMPDIR")"
! pgrep -f "qemu-storage-daemon.*$TMPDIR" >/dev/null || fail "qemu-storage-daemon is left"

# In the foreground, the partition found by itself; SIGINT ends it.
"$KVMCDP" mount --store "$tmp/store" --mark second --foreground "$tmp/mnt" 2>"$tmp/m2.err" &
fg=$!
pids+=("$fg")
for _ in $(seq 200); do grep -q mounted "$tmp/m2.err" && break; sleep 0.05; done
cmp -s "$tmp/mnt/first.bin" "$tmp/first.bin" && cmp -s "$tmp/mnt/second.txt" "$tmp/second.txt" ||
  fail "mount --mark second: $(cat "$tmp/m2.err"; ls -la "$tmp/mnt")"
kill -INT "$fg"
wait "$fg" || fail "mount --foreground exited non-zero: $(cat "$tmp/m2.err")"
! mountpoint -q "$tmp/mnt" || fail "still mounted after Ctrl-C"
[ "$(losetup -a | wc -l)" -eq "$loops_before" ] || fail "a loop device is left after Ctrl-C"
[ -z "$(ls "$TMPDIR")" ] || fail "files are left after Ctrl-C"

# The mount process killed (-9): umount still takes everything down.
"$KVMCDP" mount --store "$tmp/store" --mark first "$tmp/mnt" 2>"$tmp/m3.err" ||
  fail "mount again: $(cat "$tmp/m3.err")"
mpid=$(python3 -c 'import json,glob,sys; print(json.load(open(glob.glob(sys.argv[1] + "/mount-*.json")[0]))["pid"])' "$tmp/store/pins")
kill -KILL "$mpid"
sleep 0.5
"$KVMCDP" umount "$tmp/mnt" 2>"$tmp/u3.err" || fail "umount after kill -9: $(cat "$tmp/u3.err")"
! mountpoint -q "$tmp/mnt" || fail "still mounted after kill -9 and umount"
[ "$(losetup -a | wc -l)" -eq "$loops_before" ] || fail "a loop device is left after kill -9: $(losetup -a)"
for _ in $(seq 40); do pgrep -f "qemu-storage-daemon.*$TMPDIR" >/dev/null || break; sleep 0.05; done
! pgrep -f "qemu-storage-daemon.*$TMPDIR" >/dev/null || fail "qemu-storage-daemon is left after kill -9"
[ -z "$(ls "$TMPDIR")" ] || fail "files are left after kill -9: $(ls "$TMPDIR")"

# Refusals: one error line, the documented exit code.
expect() {  # exit-code command args...
  local want=$1 rc=0
  shift
  "$KVMCDP" "$@" >/dev/null 2>"$tmp/err" || rc=$?
  [ "$rc" -eq "$want" ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q '^kvmcdp: error: ' "$tmp/err" ||
    fail "$*: exit $rc (want $want): $(cat "$tmp/err")"
}
expect 7 mount --store "$tmp/store" --latest "$tmp/nosuch"
touch "$tmp/afile"
expect 2 mount --store "$tmp/store" --latest "$tmp/afile"
expect 2 mount --store "$tmp/store" --latest --partition 3 "$tmp/mnt"
! mountpoint -q "$tmp/mnt" || fail "mounted after a refusal"
[ "$(losetup -a | wc -l)" -eq "$loops_before" ] || fail "a loop device is left after a refusal"
expect 7 umount "$tmp/mnt"
echo "mount: files of two marks exact (ext4 in a GPT partition), read-only, umount and Ctrl-C leave nothing"
