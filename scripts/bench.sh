#!/usr/bin/env bash
# kvmcdp benchmarks (issue 6): every figure measured side by side, in the
# same run, against a reference, and given as a ratio, because the machine
# is shared and absolute times drift.  Prints a table and writes the same
# figures to bench-results.json (default tests/bench/bench-results.json).
#
#   bash scripts/bench.sh [--quick] [--out FILE]
#
# --quick shrinks every size (for trying the script; its figures mean
# little).  BENCH_DIR picks the scratch directory (default
# /var/tmp/kvmcdp-bench.PID, removed at the end unless BENCH_KEEP=1).
# BENCH_ONLY picks steps (see the end); BENCH_FULL_DISK the full restore's disk size.  BENCH_SKIP_SETUP=1 skips scripts/setup.sh (e.g. while the patched QEMU
# for the current patch is not built yet) and then BENCH_QEMU_BIN (a bin/
# with qemu-storage-daemon, qemu-nbd, qemu-img) and BENCH_KVMCDP (the
# kvmcdp binary) override what build/env.sh says.
#
# Method
# ------
# Guest I/O (figures 1-3).  One qemu-storage-daemon (the patched QEMU)
# holds two identical preallocated raw disks, cache.direct=on, aio=native
# (what a production VM with cache=none uses): disk0 is protected by
# `kvmcdp protect --mode async|sync`, disk1 is the reference.  The filter
# only goes above a node that has a user, so protect attaches it to the
# file node f0 under the raw node disk0 (disk0 is its user), and both
# exports are of the raw nodes: disk0 -> filter -> f0 against disk1 -> f1.  The daemon
# has two QMP monitors: protect gets one to itself (it attaches the cdp
# filter, takes the base copy through its own NBD server, then stops that
# server); once the base copy is complete we start our own NBD server on
# the other monitor and export, writable, disk0 (every write goes
# through the filter) and disk1 (no filter).  fio's nbd
# engine then plays the guest.  Each fio job runs on both exports in the
# order none, cdp, cdp, none and the two runs of each are averaged, so a
# drift in the machine's load hits both sides alike.
#   * throughput: 1 MiB sequential and 4 KiB random writes, QD 16;
#   * p99 write latency: completion latency of the 4 KiB random job;
#   * flush: 64 KiB write + flush, QD 1 (fio --fsync=1); the sync latency,
#     and the extra time over one journal commit (a 64 KiB append +
#     fdatasync in the store's directory, measured by scripts/bench/fsync.py).
# Two stock anchors share the daemon and the NBD server (issue 17): "blk",
# QEMU's blklogwrites over its own raw data file, logging every write (and
# flush) to a log file on the same file system (log-sector-size 4096; the
# log is sparse and never extended, and punched empty before each run), and
# "mirror", a raw disk under an active mirror job (blockdev-mirror
# sync=none copy-mode=write-blocking: each write returns once on both) to
# an NBD client node of a second qemu-storage-daemon exporting a raw file on
# the same file system; the job is cancelled at the end and the target must
# then equal its source.  Each job runs none, blk, mirror, cdp, cdp,
# mirror, blk, none; each path's two runs are averaged and compared with
# none.  Variants of the async step (steps guest_io_pinned and
# guest_io_tmpfs, seq1m and rand4k only): the daemons and fio on CPU 0 and
# protect on CPU 1; and protect's store, the blk log and the mirror's
# target on a tmpfs under /dev/shm (removed at the end); and both at once
# (guest_io_pinned_tmpfs), which leaves kvmcdp neither the guest's CPU nor
# its disk to share.
#
# Ingest (figures 4, 6).  scripts/bench/fakefilter.py plays QEMU to
# `kvmcdp protect`: a QMP server and the filter's stream, fed as fast as
# protect takes it, so only kvmcdp's receiver and journal are measured.
# Like the filter, the fake keeps at most 64 MiB (the default
# --queue-size) unacknowledged.  The records carry a pool file exactly once (64 KiB writes); ingest time
# runs from the first byte sent to the ACK of the last record (all of it
# durable).  References on the same pool file: `zstd -1 -T0` (to
# /dev/null: the compression limit) and `dd bs=1M conv=fdatasync` to the
# store's file system (the disk limit).  zstd, dd and kvmcdp run twice,
# interleaved (zstd once more at the end), and each side's best run is
# compared: the machine is shared.  Two pools: compressible (system
# libraries and binaries concatenated) and incompressible (/dev/urandom).
# Compression ratio: pool bytes / journal segment bytes, against pool bytes
# / `zstd -1` output bytes.  Meanwhile protect's VmRSS/VmHWM and
# utime+stime are sampled from /proc every 0.25 s.
#
# Restore (figures 5, 7).  Same fake filter.  Full restore: a disk (4 GiB,
# 256 MiB with --quick) whose base image holds ~30% data in 16 MiB extents
# and whose journal holds 4 KiB random writes worth ~10% of the disk, i.e.
# ~40% data; `kvmcdp restore --latest` is compared with `qemu-img convert
# -O raw` of the restored image (the output removed before each run:
# on this machine rename(2) over an existing multi-GiB file takes seconds) (a raw source with the same data), both
# followed by fsync of the output.  Scaling: 1e4, 1e5, 1e6 (1e3..1e5 with
# --quick) random 4 KiB records over the same 1 GiB disk, restore time
# each; linear growth is ~10x per step, quadratic ~100x.
# Restore from a built node: on the full-restore store, `kvmcdp build`
# makes a node at the point 1% of the disk (in 4 KiB records) before the
# end; `restore --latest` then starts from it and must give the same MD5
# as the full restore: to raw (the node's chain converted, then the tail)
# and with --overlay (a qcow2 on the node holding only the tail).
#
# Snapshot pause (figure 8).  A qemu-system-x86_64 without a guest
# (-M none) exports a qcow2 disk over NBD; while fio writes to it (4 KiB
# random, QD 16), `kvmcdp snapshot create --qmp` takes 50 snapshots one
# after the other (20 with --quick).  The pause is bounded from above
# twice: (a) QEMU's trace events qmp_enter_transaction and
# qmp_exit_transaction (timestamped, scripts/bench/qmptrace.py) bracket the
# transaction's handler, inside which the drained section (drain, flush of
# the old top, switch, reopen read-only) lies: the target's figure, p99
# (nearest rank); (b) the round trip of the QMP command as kvmcdp times it
# and prints it, which adds the main loop's delay in reading the command
# and the reply's way back, while the guest's I/O still runs: reported.  What the guest saw (scripts/bench/snapgap.py): fio logs every
# write's completion latency; per create, the worst latency of the writes
# completing during the whole `snapshot create` run, against the same in
# an equally long quiet window just before it (0.2 s gaps between creates).
#
# No figure is asserted; the script fails only if a tool fails.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
quick=0
out=$here/tests/bench/bench-results.json
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --out) out=$2; shift ;;
    *) echo "usage: $0 [--quick] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done

if [ -z "${BENCH_SKIP_SETUP:-}" ]; then
  bash "$here/scripts/setup.sh"
fi
# Without setup, build/env.sh may not exist: the caller then exports what
# it would (KVMCDP_QEMU_PREFIX, and KVMCDP or BENCH_KVMCDP).
if [ -z "${BENCH_SKIP_SETUP:-}" ] || [ -f "$here/build/env.sh" ]; then
  # shellcheck source=/dev/null
  source "$here/build/env.sh"
fi
QBIN=${BENCH_QEMU_BIN:-${KVMCDP_QEMU_PREFIX:?set KVMCDP_QEMU_PREFIX or BENCH_QEMU_BIN}/bin}
K=${BENCH_KVMCDP:-${KVMCDP:?set KVMCDP or BENCH_KVMCDP}}
H=$here/scripts/bench
B=${BENCH_DIR:-/var/tmp/kvmcdp-bench.$$}
R=$B/results
mkdir -p "$B" "$R"

pids=()
tmpfs_dirs=()  # in RAM: removed even with BENCH_KEEP
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "${tmpfs_dirs[@]}"
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$B"
}
trap cleanup EXIT

log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
wait_for() {  # wait_for SECONDS TEST...
  local n=$(($1 * 10)); shift
  while ! "$@"; do
    n=$((n - 1)); [ $n -gt 0 ] || return 1
    sleep 0.1
  done
}
qmp() { "$K" qmp --qmp "$1" "$2" >/dev/null; }

if [ $quick = 1 ]; then
  fio_secs=3; fio_disk=256M; pool_mib=64; full_disk=$((256 << 20))
  scale_counts=(1000 10000 100000); snap_count=20
else
  fio_secs=6; fio_disk=1G; pool_mib=512; full_disk=$((4 << 30))
  scale_counts=(10000 100000 1000000); snap_count=50
fi
# BENCH_FULL_DISK=bytes: another disk size for the full restore.
full_disk=${BENCH_FULL_DISK:-$full_disk}

machine_json() {
  python3 - <<EOF
import json, os, platform, subprocess
cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")]
mem = [l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")][0]
fs = subprocess.run(["df", "--output=fstype,source", "$B"], capture_output=True,
                    text=True).stdout.split("\n")[1].split()
print(json.dumps({
  "cpus": os.cpu_count(), "cpu_model": cpu[0] if cpu else "?",
  "mem_gib": round(int(mem) / 2**20, 1), "kernel": platform.release(),
  "scratch_fs": fs, "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
  "qemu": "$QBIN", "kvmcdp_rev": subprocess.run(["git", "-C", "$here", "rev-parse",
          "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
  "quick": $quick}))
EOF
}
machine_json >"$R/machine.json"
log "scratch $B, QEMU $QBIN, kvmcdp $K"

# ---------------------------------------------------------------- guest I/O
# fio_run EXPORT NAME JOBARGS...: one fio run, its JSON in $R/fio-NAME.json;
# fio runs under "${fio_pin[@]}" (guest_io sets it for the pinned variant).
fio_pin=()
fio_run() {
  local exp=$1 name=$2; shift 2
  "${fio_pin[@]}" fio --name="$name" --ioengine=nbd --uri="nbd+unix:///$exp?socket=$B/nbd.sock" \
    --size="$fio_disk" --time_based --runtime="$fio_secs" --output-format=json \
    --output="$R/fio-$name.json" "$@" >/dev/null 2>"$B/fio.err" ||
    { cat "$B/fio.err" >&2; die "fio $name failed"; }
}

# jobs_status SOCK: the status of each block job, or nothing.  (kvmcdp
# qmp prints the reply's "return".)
jobs_status() {
  "$K" qmp --qmp "$1" '{"execute":"query-block-jobs"}' | python3 -c \
    'import json, sys; print(" ".join(j["status"] for j in json.load(sys.stdin)))'
}

# mirror_ready SOCK NAME: a mirror job that failed (e.g. its target gone)
# would leave the guest's writes on the source alone: after each mirror
# run the job must still be ready.
mirror_ready() {
  [ "$(jobs_status "$1")" = ready ] ||
    die "mirror ($2) no longer ready (block jobs: '$(jobs_status "$1")')"
}

# guest_io MODE [VARIANT]: the four paths (none, blk, mirror, cdp) with
# `protect --mode MODE`.  VARIANT pinned: the qemu-storage-daemons and fio
# on CPU 0, protect on CPU 1; tmpfs: protect's store, blklogwrites' log and
# the mirror's target on a tmpfs (each path's "journal device" in RAM);
# pinned-tmpfs: both.
# The variants run seq1m and rand4k only; their results are named
# MODE-VARIANT (e.g. async-pinned).
guest_io() {
  local mode=$1 variant=${2:-}
  local name=$mode${variant:+-$variant}
  local d=$B/io-$name jd=$B/io-$name
  local jobs=(seq1m rand4k flush64k) qpin=() ppin=()
  case $variant in
    "") ;;
    pinned) qpin=(taskset -c 0); ppin=(taskset -c 1); jobs=(seq1m rand4k) ;;
    tmpfs|pinned-tmpfs)
      jd=$(mktemp -d /dev/shm/kvmcdp-bench.XXXXXX)
      tmpfs_dirs+=("$jd")
      [ "$variant" = tmpfs ] || { qpin=(taskset -c 0); ppin=(taskset -c 1); }
      jobs=(seq1m rand4k) ;;
    *) die "guest_io: unknown variant $variant" ;;
  esac
  local fio_pin=("${qpin[@]}")
  mkdir -p "$d"
  fallocate -l "$fio_disk" "$d/disk0.raw"
  fallocate -l "$fio_disk" "$d/disk1.raw"
  fallocate -l "$fio_disk" "$d/disk2.raw"
  fallocate -l "$fio_disk" "$d/disk3.raw"
  fallocate -l "$fio_disk" "$jd/mirror-target.raw"
  # blklogwrites' log: sparse and larger than any run writes, so that log
  # writes allocate blocks (as a journal's appends do) but never extend the
  # file; its blocks are freed (punched) before each blk run.
  truncate -s 256G "$jd/blk-log.raw"
  local bd="cache.direct=on,aio=native"
  # The active mirror's target: a second daemon exporting a raw file.
  "${qpin[@]}" "$QBIN/qemu-storage-daemon" \
    --blockdev "driver=file,filename=$jd/mirror-target.raw,node-name=ft,$bd" \
    --blockdev driver=raw,file=ft,node-name=target \
    --nbd-server "addr.type=unix,addr.path=$d/nbd-target.sock" \
    --export type=nbd,id=target,node-name=target,name=target,writable=on \
    >"$d/qsd-target.log" 2>&1 &
  local qsdt=$!
  pids+=("$qsdt")
  wait_for 20 test -S "$d/nbd-target.sock" ||
    die "qemu-storage-daemon (mirror target) did not start: $(cat "$d/qsd-target.log")"
  "${qpin[@]}" "$QBIN/qemu-storage-daemon" \
    --blockdev "driver=file,filename=$d/disk0.raw,node-name=f0,$bd" \
    --blockdev driver=raw,file=f0,node-name=disk0 \
    --blockdev "driver=file,filename=$d/disk1.raw,node-name=f1,$bd" \
    --blockdev driver=raw,file=f1,node-name=disk1 \
    --blockdev "driver=file,filename=$d/disk2.raw,node-name=f2,$bd" \
    --blockdev "driver=file,filename=$jd/blk-log.raw,node-name=blklog,$bd" \
    --blockdev driver=blklogwrites,node-name=blk,file=f2,log=blklog,log-sector-size=4096 \
    --blockdev "driver=file,filename=$d/disk3.raw,node-name=f3,$bd" \
    --blockdev driver=raw,file=f3,node-name=disk3 \
    --chardev "socket,id=m0,path=$d/qmp-protect.sock,server=on,wait=off" --monitor chardev=m0 \
    --chardev "socket,id=m1,path=$d/qmp-bench.sock,server=on,wait=off" --monitor chardev=m1 \
    >"$d/qsd.log" 2>&1 &
  local qsd=$!
  pids+=("$qsd")
  wait_for 20 test -S "$d/qmp-bench.sock" || die "qemu-storage-daemon did not start: $(cat "$d/qsd.log")"
  : >"$d/protect.log"  # before wait_for greps it
  "${ppin[@]}" "$K" protect --qmp "$d/qmp-protect.sock" --drive f0 --store "$jd/store" --mode "$mode" \
    >"$d/protect.log" 2>&1 &
  local prot=$!
  pids+=("$prot")
  wait_for 120 grep -q "base copy complete" "$d/protect.log" ||
    die "protect ($name): no base copy: $(cat "$d/protect.log")"
  local bq=$d/qmp-bench.sock e
  qmp "$bq" "{\"execute\":\"nbd-server-start\",\"arguments\":{\"addr\":{\"type\":\"unix\",\"data\":{\"path\":\"$B/nbd.sock\"}}}}"
  for e in cdp:disk0 none:disk1 blk:blk mirror:disk3; do
    qmp "$bq" "{\"execute\":\"block-export-add\",\"arguments\":{\"type\":\"nbd\",\"id\":\"${e%%:*}\",\"name\":\"${e%%:*}\",\"node-name\":\"${e#*:}\",\"writable\":true}}"
  done
  # The mirror starts after the export, so that its filter goes between the
  # export and disk3 (a user added later would bypass it).
  qmp "$bq" "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"nbd\",\"node-name\":\"mtarget\",\"server\":{\"type\":\"unix\",\"path\":\"$d/nbd-target.sock\"},\"export\":\"target\"}}"
  qmp "$bq" '{"execute":"blockdev-mirror","arguments":{"job-id":"mirror","device":"disk3","target":"mtarget","sync":"none","copy-mode":"write-blocking"}}'
  wait_for 20 test "$(jobs_status "$bq")" = ready ||
    die "mirror ($name) not ready: $(jobs_status "$bq")"
  local job args
  for job in "${jobs[@]}"; do
    case $job in
      seq1m) args=(--rw=write --bs=1M --iodepth=16) ;;
      rand4k) args=(--rw=randwrite --bs=4k --iodepth=16 --randrepeat=0) ;;
      flush64k) args=(--rw=write --bs=64k --iodepth=1 --fsync=1) ;;
    esac
    log "fio $job, $name: none, blk, mirror, cdp, cdp, mirror, blk, none (${fio_secs} s each)"
    fio_run none "$name-$job-none-1" "${args[@]}"
    fallocate -p -o 0 -l 256G "$jd/blk-log.raw"
    fio_run blk "$name-$job-blk-1" "${args[@]}"
    fio_run mirror "$name-$job-mirror-1" "${args[@]}"
    mirror_ready "$bq" "$name"
    fio_run cdp "$name-$job-cdp-1" "${args[@]}"
    fio_run cdp "$name-$job-cdp-2" "${args[@]}"
    fio_run mirror "$name-$job-mirror-2" "${args[@]}"
    mirror_ready "$bq" "$name"
    fallocate -p -o 0 -l 256G "$jd/blk-log.raw"
    fio_run blk "$name-$job-blk-2" "${args[@]}"
    fio_run none "$name-$job-none-2" "${args[@]}"
  done
  "$K" qmp --qmp "$bq" '{"execute":"query-cdp"}' >"$R/query-cdp-$name.json"
  qmp "$bq" '{"execute":"block-job-cancel","arguments":{"device":"mirror"}}'
  wait_for 20 test -z "$(jobs_status "$bq")" || die "mirror ($name) did not stop"
  for e in cdp none blk mirror; do
    qmp "$bq" "{\"execute\":\"block-export-del\",\"arguments\":{\"id\":\"$e\",\"mode\":\"hard\"}}"
  done
  qmp "$bq" '{"execute":"blockdev-del","arguments":{"node-name":"mtarget"}}'
  qmp "$bq" '{"execute":"nbd-server-stop"}'
  if [ -z "$variant" ]; then
    python3 "$H/fsync.py" "$jd/store" 65536 200 >"$R/fsync-$name.json"
  fi
  kill -TERM "$prot"; wait "$prot" || die "protect ($name) failed: $(tail -3 "$d/protect.log")"
  kill -TERM "$qsd"; wait "$qsd" || true
  kill -TERM "$qsdt"; wait "$qsdt" || true
  cmp -s "$d/disk3.raw" "$jd/mirror-target.raw" ||
    die "mirror ($name): the target differs from its source"
  rm -rf "$d" "$jd"
}
# guest_io_mirror: protect's mirror capture (--capture mirror: an active
# mirror job into kvmcdp's NBD server, what a QEMU without the cdp filter
# gets) beside none and the stock active mirror anchor, on one daemon.
# Protect's mirror mode starts QEMU's one NBD server itself, so the exports
# fio writes to go on that server (its private socket); the one of the
# protected disk is of the job's filter node (kvmcdp-f-<stream>), which
# sits above disk1, so fio's writes go through the job like a guest's.
# Each job runs none, mirror, kmirror, kmirror, mirror, none.
guest_io_mirror() {
  local d=$B/io-mirror
  mkdir -p "$d"
  local i
  for i in 1 2 3; do fallocate -l "$fio_disk" "$d/disk$i.raw"; done
  fallocate -l "$fio_disk" "$d/mirror-target.raw"
  local bd="cache.direct=on,aio=native"
  "$QBIN/qemu-storage-daemon" \
    --blockdev "driver=file,filename=$d/mirror-target.raw,node-name=ft,$bd" \
    --blockdev driver=raw,file=ft,node-name=target \
    --nbd-server "addr.type=unix,addr.path=$d/nbd-target.sock" \
    --export type=nbd,id=target,node-name=target,name=target,writable=on \
    >"$d/qsd-target.log" 2>&1 &
  local qsdt=$!
  pids+=("$qsdt")
  wait_for 20 test -S "$d/nbd-target.sock" || die "mirror target daemon did not start"
  "$QBIN/qemu-storage-daemon" \
    --blockdev "driver=file,filename=$d/disk1.raw,node-name=f1,$bd" \
    --blockdev driver=raw,file=f1,node-name=disk1 \
    --blockdev "driver=file,filename=$d/disk2.raw,node-name=f2,$bd" \
    --blockdev driver=raw,file=f2,node-name=disk2 \
    --blockdev "driver=file,filename=$d/disk3.raw,node-name=f3,$bd" \
    --blockdev driver=raw,file=f3,node-name=disk3 \
    --chardev "socket,id=m0,path=$d/qmp-protect.sock,server=on,wait=off" --monitor chardev=m0 \
    --chardev "socket,id=m1,path=$d/qmp-bench.sock,server=on,wait=off" --monitor chardev=m1 \
    >"$d/qsd.log" 2>&1 &
  local qsd=$!
  pids+=("$qsd")
  wait_for 20 test -S "$d/qmp-bench.sock" || die "qemu-storage-daemon did not start: $(cat "$d/qsd.log")"
  : >"$d/protect.log"
  "$K" protect --qmp "$d/qmp-protect.sock" --drive disk1 --store "$d/store" --capture mirror \
    >"$d/protect.log" 2>&1 &
  local prot=$!
  pids+=("$prot")
  wait_for 120 grep -q "base copy complete" "$d/protect.log" ||
    die "protect (mirror): no base copy: $(cat "$d/protect.log")"
  local sock bq=$d/qmp-bench.sock e job args
  sock=$(ls /tmp/kvmcdp-"$prot"-*.nbd)
  local stream
  stream=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["stream_id"])' \
    "$d/store/manifest.json")
  for e in kmirror:kvmcdp-f-$stream none:disk2 mirror:disk3; do
    qmp "$bq" "{\"execute\":\"block-export-add\",\"arguments\":{\"type\":\"nbd\",\"id\":\"${e%%:*}\",\"name\":\"${e%%:*}\",\"node-name\":\"${e#*:}\",\"writable\":true}}"
  done
  qmp "$bq" "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"nbd\",\"node-name\":\"mtarget\",\"server\":{\"type\":\"unix\",\"path\":\"$d/nbd-target.sock\"},\"export\":\"target\"}}"
  qmp "$bq" '{"execute":"blockdev-mirror","arguments":{"job-id":"mirror","device":"disk3","target":"mtarget","sync":"none","copy-mode":"write-blocking"}}'
  for job in seq1m rand4k flush64k; do
    case $job in
      seq1m) args=(--rw=write --bs=1M --iodepth=16) ;;
      rand4k) args=(--rw=randwrite --bs=4k --iodepth=16 --randrepeat=0) ;;
      flush64k) args=(--rw=write --bs=64k --iodepth=1 --fsync=1) ;;
    esac
    log "fio $job, mirror capture: none, mirror, kmirror, kmirror, mirror, none (${fio_secs} s each)"
    for e in none-1 mirror-1 kmirror-1 kmirror-2 mirror-2 none-2; do
      fio --name="m-$job-$e" --ioengine=nbd --uri="nbd+unix:///${e%-*}?socket=$sock" \
        --size="$fio_disk" --time_based --runtime="$fio_secs" --output-format=json \
        --output="$R/fio-capture-mirror-$job-$e.json" "${args[@]}" >/dev/null 2>"$B/fio.err" ||
        { cat "$B/fio.err" >&2; die "fio $job $e failed"; }
    done
  done
  grep -q "kvmcdp: error" "$d/protect.log" && die "protect (mirror) failed: $(cat "$d/protect.log")"
  for e in kmirror none mirror; do
    qmp "$bq" "{\"execute\":\"block-export-del\",\"arguments\":{\"id\":\"$e\",\"mode\":\"hard\"}}"
  done
  # protect's own job first, then the stock one: then no job is left.
  kill -TERM "$prot"; wait "$prot" || die "protect (mirror) failed: $(tail -3 "$d/protect.log")"
  qmp "$bq" '{"execute":"block-job-cancel","arguments":{"device":"mirror"}}'
  wait_for 20 test -z "$(jobs_status "$bq")" || die "stock mirror did not stop"
  qmp "$bq" '{"execute":"blockdev-del","arguments":{"node-name":"mtarget"}}'
  # What protect journaled is the disk: the restore of its last point.
  "$K" restore --quiet --store "$d/store" --latest -o "$d/restored.raw" >/dev/null ||
    die "restore of the mirror-captured store failed"
  cmp -s "$d/disk1.raw" "$d/restored.raw" || die "mirror capture: the restore differs from the disk"
  kill -TERM "$qsd"; wait "$qsd" || true
  kill -TERM "$qsdt"; wait "$qsdt" || true
  rm -rf "$d"
}
guest_io_pinned() { guest_io "$1" pinned; }
guest_io_tmpfs() { guest_io "$1" tmpfs; }
guest_io_pinned_tmpfs() { guest_io "$1" pinned-tmpfs; }

# ------------------------------------------------------------------- ingest
# fake_protect DIR BASE DISKSIZE POOL PLAN RESULT: protect fed by the fake filter
fake_protect() {
  local d=$1 base=$2 size=$3 pool=$4 plan=$5 res=$6
  mkdir -p "$d"
  rm -f "$d/fq.sock"
  python3 "$H/fakefilter.py" --qmp "$d/fq.sock" --base "$base" --disk-size "$size" \
    --pool "$pool" --plan "$plan" --result "$res" --qemu-nbd "$QBIN/qemu-nbd" \
    2>"$d/fake.log" &
  local fake=$!
  pids+=("$fake")
  wait_for 20 test -S "$d/fq.sock" || die "fake filter did not start: $(cat "$d/fake.log")"
  # PROTECT_ARGS replaces "--store DIR" (the remote figure uses a spool).
  # shellcheck disable=SC2086
  "$K" protect --qmp "$d/fq.sock" --drive disk0 ${PROTECT_ARGS:---store $d/store} --quiet \
    >"$d/protect.log" 2>&1 &
  local prot=$!
  pids+=("$prot")
  while [ ! -e "$res" ]; do
    kill -0 "$prot" 2>/dev/null || die "protect died: $(cat "$d/protect.log")"
    kill -0 "$fake" 2>/dev/null || die "fake filter died: $(cat "$d/fake.log")"
    sleep 0.2
  done
  kill -TERM "$prot"; wait "$prot" || die "protect failed: $(cat "$d/protect.log")"
  wait "$fake" || die "fake filter failed: $(cat "$d/fake.log")"
}

make_pools() {
  log "pools: ${pool_mib} MiB compressible, ${pool_mib} MiB incompressible"
  python3 "$H/mkpool.py" "$B/pool.comp" $((pool_mib << 20))
  head -c $((pool_mib << 20)) /dev/urandom >"$B/pool.rand"
}

ingest() {
  local kind=$1 run
  local pool=$B/pool.$kind d=$B/ingest-$kind
  # Two rounds of zstd, dd and kvmcdp, interleaved, and a last zstd; each
  # side's best run counts (on a shared machine the best run is the one
  # least disturbed by others).
  log "ingest ($kind): zstd -1 -T0, dd conv=fdatasync, kvmcdp protect; twice"
  zstd -1 -T0 -q -c "$pool" | wc -c >"$R/zstd-size-$kind"
  for run in 1 2; do
    mkdir -p "$d"
    truncate -s 1G "$d/base.raw"
    python3 "$H/timeit.py" "$R/zstd$run-$kind.json" sh -c "zstd -1 -T0 -q -c '$pool' >/dev/null"
    python3 "$H/timeit.py" "$R/dd$run-$kind.json" \
      dd if="$pool" of="$d/dd.out" bs=1M conv=fdatasync status=none
    rm -f "$d/dd.out"
    fake_protect "$d" "$d/base.raw" $((1 << 30)) "$pool" seq:65536 "$R/ingest$run-$kind.json"
    du -sb --apparent-size "$d/store/journal" | cut -f1 >"$R/journal-size-$kind"
    rm -rf "$d"
  done
  python3 "$H/timeit.py" "$R/zstd3-$kind.json" sh -c "zstd -1 -T0 -q -c '$pool' >/dev/null"
}

# Remote (issue 7): the same compressible pool through `protect --spool
# --remote tcp://` and `tls://` to a `kvmcdp serve` on loopback, whose acks
# (hence the ingest time) wait for the server's fdatasync, against the
# local-store ingest of the same pool; two interleaved rounds, each side's
# best run counts (as for ingest).  The server shares the client's cores
# here, as it would not in use, so each round also runs two controls: the
# local ingest beside a CPU load the size of what the server took in that
# round's tcp (tls) run (its utime+stime over the run's length, as a duty
# cycle of one core, scripts/bench/burn.py).  The remote figures are to be
# read against them: what a control loses is the co-located server's share.
# serve_start DIR [serve args]: a server on a free loopback port; sets srv, port
serve_start() {
  local d=$1; shift
  : >"$d/serve.log"
  "$K" serve --store-root "$d/server" --listen 127.0.0.1:0 "$@" 2>"$d/serve.log" &
  srv=$!
  pids+=("$srv")
  wait_for 20 grep -q serving "$d/serve.log" || die "serve did not start: $(cat "$d/serve.log")"
  port=$(sed -n 's/.* on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$d/serve.log")
}
proc_cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
remote_ingest() {
  local pool=$B/pool.comp d=$B/remote run proto fp c0 srv port
  mkdir -p "$d"
  truncate -s 1G "$d/base.raw"
  fp=$("$K" serve --init-tls "$d/tls" 2>/dev/null)
  for run in 1 2; do
    log "remote ingest, round $run: local store, tcp and tls loopback to kvmcdp serve, local beside each server's CPU load"
    fake_protect "$d/l" "$d/base.raw" $((1 << 30)) "$pool" seq:65536 "$R/remote-local-$run.json"
    rm -rf "$d/l"
    for proto in tcp tls; do
      rm -rf "$d/server" "$d/r"
      mkdir -p "$d/server"
      "$K" serve --store-root "$d/server" --new-store bench >"$d/secret"
      chmod 600 "$d/secret"
      local extra=""
      if [ $proto = tls ]; then
        serve_start "$d" --tls-cert "$d/tls/server.crt" --tls-key "$d/tls/server.key"
        extra="--server-fingerprint $fp"
      else
        serve_start "$d"
      fi
      c0=$(proc_cpu "$srv")
      PROTECT_ARGS="--spool $d/r/spool --remote $proto://127.0.0.1:$port/bench --secret-file $d/secret $extra" \
        fake_protect "$d/r" "$d/base.raw" $((1 << 30)) "$pool" seq:65536 "$R/remote-$proto-$run.json"
      awk -v a="$(proc_cpu "$srv")" -v b="$c0" 'BEGIN { print a - b }' >"$R/remote-serve-cpu-$proto-$run"
      kill -TERM "$srv"; wait "$srv" || true
      "$K" journal verify --store "$d/server/bench" >/dev/null ||
        die "the server's journal does not verify ($proto)"
    done
    local duty
    for proto in tcp tls; do
      duty=$(python3 -c "import json; t = json.load(open('$R/remote-$proto-$run.json'))['seconds']; print(min(1.0, float(open('$R/remote-serve-cpu-$proto-$run').read()) / t))")
      echo "$duty" >"$R/remote-load-duty-$proto-$run"
      python3 "$H/burn.py" "$duty" &
      local burn=$!
      pids+=("$burn")
      fake_protect "$d/l" "$d/base.raw" $((1 << 30)) "$pool" seq:65536 "$R/remote-loaded-$proto-$run.json"
      kill -TERM "$burn"; wait "$burn" || true
      rm -rf "$d/l"
    done
  done
  rm -rf "$d"
}

# ------------------------------------------------------------------ restore
full_restore() {
  local d=$B/full
  mkdir -p "$d"
  log "full restore: $((full_disk >> 20)) MiB disk, ~30% data in the base, ~10% in the journal"
  python3 "$H/mkdisk.py" "$d/base.raw" "$full_disk" 0.30 "$B/pool.comp"
  local recs=$((full_disk / 10 / 4096))
  fake_protect "$d/p" "$d/base.raw" "$full_disk" "$B/pool.comp" "rand:$recs:4096" "$R/full-ingest.json"
  rm -f "$d/base.raw"
  python3 "$H/timeit.py" "$R/full-restore.json" \
    "$K" restore --quiet --store "$d/p/store" --latest -o "$d/restored.raw" >/dev/null
  python3 "$H/timeit.py" "$R/full-qemu-img.json" sh -c \
    "'$QBIN/qemu-img' convert -f raw -O raw '$d/restored.raw' '$d/ref.raw' && sync '$d/ref.raw'"
  du -B1 "$d/restored.raw" | cut -f1 >"$R/full-allocated"
  rm -f "$d/ref.raw"
  rm -f "$d/restored.raw"  # renaming over a file takes seconds here
  python3 "$H/timeit.py" "$R/full-restore-2.json" \
    "$K" restore --quiet --store "$d/p/store" --latest -o "$d/restored.raw" >/dev/null
  python3 "$H/timeit.py" "$R/full-qemu-img-2.json" sh -c \
    "'$QBIN/qemu-img' convert -f raw -O raw '$d/restored.raw' '$d/ref.raw' && sync '$d/ref.raw'"
  # Restore from a built node: a node at the point where 1% of the disk
  # (in 4 KiB records) is still to come, then --latest again, which starts
  # from that node and replays only the tail; against the full restores.
  local full_md5 last p
  full_md5=$(md5sum <"$d/restored.raw")
  rm -f "$d/ref.raw" "$d/restored.raw"
  last=$("$K" points --json --store "$d/p/store" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["recoverable"][-1]["last_seq"])')
  p=$((last - full_disk / 100 / 4096))
  KVMCDP_QEMU_IMG=$QBIN/qemu-img python3 "$H/timeit.py" "$R/node-build.json" \
    "$K" build --store "$d/p/store" --seq "$p" >"$R/node-build.out" 2>&1
  # --from-node: by default a raw restore would start from the base here
  # (the journal up to the node is smaller than the node's chain).
  python3 "$H/timeit.py" "$R/node-restore.json" \
    "$K" restore --quiet --from-node --store "$d/p/store" --latest -o "$d/restored.raw" >/dev/null
  [ "$(md5sum <"$d/restored.raw")" = "$full_md5" ] ||
    die "the restore from a built node differs from the full restore"
  rm -f "$d/restored.raw"
  KVMCDP_QEMU_IMG=$QBIN/qemu-img python3 "$H/timeit.py" "$R/node-overlay.json" \
    "$K" restore --quiet --overlay --store "$d/p/store" --latest -o "$d/overlay.qcow2" >/dev/null
  "$QBIN/qemu-img" convert -O raw "$d/overlay.qcow2" "$d/restored.raw"
  [ "$(md5sum <"$d/restored.raw")" = "$full_md5" ] ||
    die "the overlay restored from a built node differs from the full restore"
  rm -rf "$d"
}

restore_scaling() {
  local n d
  for n in "${scale_counts[@]}"; do
    d=$B/scale-$n
    mkdir -p "$d"
    truncate -s 1G "$d/base.raw"
    log "restore scaling: $n records of 4 KiB over 1 GiB"
    fake_protect "$d" "$d/base.raw" $((1 << 30)) "$B/pool.comp" "rand:$n:4096" "$R/scale-ingest-$n.json"
    python3 "$H/timeit.py" "$R/scale-restore-$n.json" \
      "$K" restore --quiet --store "$d/store" --latest -o "$d/restored.raw" >/dev/null
    rm -rf "$d"
  done
}

# ------------------------------------------------------- instant recovery
# Two stores with the same journal (4 KiB random records worth 10% of the
# 4 GiB disk) and the same base data (1.2 GiB in 16 MiB extents), one of a
# 4 GiB disk and one of a 16 GiB disk (256 MiB and 1 GiB with --quick):
# scripts/bench/instant.py measures export's time to first byte, its
# sequential read and recover's time to a usable disk and its copy, each
# store against its own full restore in the same run.
instant_recovery() {
  local d=$B/instant size frac recs
  recs=$((full_disk / 10 / 4096))
  for size in "$full_disk" $((full_disk * 4)); do
    mkdir -p "$d"
    frac=$(python3 -c "print(0.30 * $full_disk / $size)")
    log "instant recovery: $((size >> 20)) MiB disk, $recs journal records"
    python3 "$H/mkdisk.py" "$d/base.raw" "$size" "$frac" "$B/pool.comp"
    fake_protect "$d/p" "$d/base.raw" "$size" "$B/pool.comp" "rand:$recs:4096" "$R/instant-ingest-$((size >> 30)).json"
    rm -f "$d/base.raw"
    python3 "$H/instant.py" --kvmcdp "$K" --store "$d/p/store" --qemu-bin "$QBIN" \
      --work "$d/w" --out "$R/recovery-$((size >> 20)).json"
    rm -rf "$d"
  done
}

# ---------------------------------------------------------- snapshot pause
snapshot_pause() {
  local d=$B/snap i out
  mkdir -p "$d"
  log "snapshot pause: $snap_count snapshots under 4 KiB random writes"
  "$QBIN/qemu-img" create -q -f qcow2 "$d/base.qcow2" "$fio_disk"
  # A VM's QEMU without a guest (fio plays it over NBD), so that QEMU's own
  # trace of the transaction command, with microsecond timestamps
  # (-msg timestamp=on; qemu-storage-daemon cannot stamp its log), shows
  # how long the command ran inside QEMU.
  "$QBIN/qemu-system-x86_64" -M none -nodefaults -display none -msg timestamp=on \
    -trace qmp_enter_transaction -trace qmp_exit_transaction -D "$d/trace.log" \
    -blockdev "driver=file,filename=$d/base.qcow2,node-name=f0,cache.direct=on,aio=native" \
    -blockdev driver=qcow2,file=f0,node-name=disk \
    -qmp "unix:$d/qmp.sock,server=on,wait=off" >"$d/qemu.log" 2>&1 &
  local qemu=$!
  pids+=("$qemu")
  wait_for 20 test -S "$d/qmp.sock" || die "qemu-system-x86_64 did not start: $(cat "$d/qemu.log")"
  qmp "$d/qmp.sock" "{\"execute\":\"nbd-server-start\",\"arguments\":{\"addr\":{\"type\":\"unix\",\"data\":{\"path\":\"$d/nbd.sock\"}}}}"
  qmp "$d/qmp.sock" '{"execute":"block-export-add","arguments":{"type":"nbd","id":"e0","name":"d","node-name":"disk","writable":true}}'
  # The load runs until it is stopped, whatever the snapshots take.
  fio --name=snapload --ioengine=nbd --uri="nbd+unix:///d?socket=$d/nbd.sock" \
    --size="$fio_disk" --time_based --runtime=3600 --rw=randwrite --bs=4k --iodepth=16 \
    --randrepeat=0 --output-format=json --output="$R/fio-snapload.json" \
    --write_lat_log="$d/snapload" --log_avg_msec=0 --log_unix_epoch=1 \
    >/dev/null 2>"$d/fio.err" &
  local load=$!
  pids+=("$load")
  sleep 2
  kill -0 "$load" 2>/dev/null || die "fio (snapshot load) failed: $(cat "$d/fio.err")"
  : >"$R/snapshot-pauses"
  : >"$d/windows"
  for i in $(seq 1 "$snap_count"); do
    local drive=() t0
    [ "$i" = 1 ] && drive=(--drive disk)
    # A quiet gap before each create: the reference for what the guest sees.
    sleep 0.2
    t0=$(date +%s%N)
    out=$("$K" snapshot create "s$i" --tree "$d/tree" --qmp "$d/qmp.sock" "${drive[@]}") ||
      die "snapshot create s$i failed: $out"
    echo "$t0 $(date +%s%N)" >>"$d/windows"
    sed -n 's/^I\/O paused for \([0-9.]*\) ms$/\1/p' <<<"$out" >>"$R/snapshot-pauses"
  done
  kill -TERM "$load"; wait "$load" || true
  python3 "$H/snapgap.py" "$d/snapload_clat.1.log" "$d/windows" "$R/snapshot-guest.json"
  kill -TERM "$qemu"; wait "$qemu" || true
  python3 "$H/qmptrace.py" "$d/trace.log" transaction >"$R/snapshot-qemu-pauses"
  [ "$(wc -l <"$R/snapshot-pauses")" = "$snap_count" ] ||
    die "snapshot create did not report $snap_count pauses"
  [ "$(wc -l <"$R/snapshot-qemu-pauses")" = "$snap_count" ] ||
    die "QEMU's trace does not hold $snap_count transactions"
  rm -rf "$d"
}

t0=$(date +%s)
for step in "guest_io async" guest_io_mirror "guest_io sync" "guest_io_pinned async" "guest_io_tmpfs async" \
  "guest_io_pinned_tmpfs async" make_pools "ingest comp" "ingest rand" \
  remote_ingest full_restore instant_recovery restore_scaling snapshot_pause; do
  # BENCH_ONLY="snapshot_pause ingest" runs only the steps named (and the
  # pools the ingest and restore steps read).
  if [ -n "${BENCH_ONLY:-}" ] && [ "$step" != make_pools ]; then
    case " $BENCH_ONLY " in *" ${step%% *} "*) ;; *) continue ;; esac
  fi
  $step
done
echo $(($(date +%s) - t0)) >"$R/wall-seconds"
mkdir -p "$(dirname "$out")"
python3 "$H/report.py" "$R" "$out"
