#!/usr/bin/env python3
"""snapgap.py CLAT_LOG WINDOWS OUT.json: what the guest saw of each
snapshot create.  CLAT_LOG is fio's per-request completion latency log
(--write_lat_log, --log_avg_msec=0, --log_unix_epoch=1: completion time in
ms since the epoch, latency in ns); WINDOWS has one line per snapshot,
"START_NS END_NS" of the `kvmcdp snapshot create` run (wall clock).

For each create: the worst latency of the writes that completed during it
(a write held by the drained section completes right after the switch, so
its latency is the guest-visible pause plus its own service time).  The
reference is the same statistic over a window of the same length just
before the create, where no snapshot runs (bench.sh leaves a gap), so the
difference is what the snapshot added.  The whole kvmcdp run is counted,
not only the QMP transaction: blockdev-add of the overlay runs in QEMU's
main loop too."""
import bisect
import json
import sys

log, windows, out = sys.argv[1], sys.argv[2], sys.argv[3]
SLACK_MS = 20  # the last held writes complete just after kvmcdp has its reply

done = []  # (completion ms, latency ms)
with open(log) as f:
    for line in f:
        p = line.split(",")
        if len(p) >= 2:
            done.append((int(p[0]), int(p[1]) / 1e6))
done.sort()
times = [t for t, _ in done]


def worst(lo_ms, hi_ms):
    a, b = bisect.bisect_left(times, lo_ms), bisect.bisect_right(times, hi_ms)
    return max((lat for _, lat in done[a:b]), default=None)


snap, quiet, prev_end = [], [], None
with open(windows) as f:
    for line in f:
        s, e = (int(x) / 1e6 for x in line.split())
        snap.append(worst(s, e + SLACK_MS))
        length = e + SLACK_MS - s
        lo = max(s - length, prev_end + SLACK_MS if prev_end else s - length)
        quiet.append(worst(lo, s))
        prev_end = e
with open(out, "w") as f:
    json.dump({"snapshot_worst_ms": snap, "quiet_worst_ms": quiet,
               "requests": len(done)}, f)
