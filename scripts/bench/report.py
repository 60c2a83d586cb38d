#!/usr/bin/env python3
"""report.py RESULTS_DIR OUT.json: turns the raw measurements bench.sh left
in RESULTS_DIR into the figures: a table on stdout and OUT.json."""
import glob
import json
import os
import sys

rdir, out = sys.argv[1], sys.argv[2]
MiB = 2**20


def load(name):
    p = os.path.join(rdir, name)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        txt = f.read()
    try:
        return json.loads(txt)
    except ValueError:
        return txt.strip()


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def fio(mode, job, side):
    runs = [load(f"fio-{mode}-{job}-{side}-{i}.json") for i in (1, 2)]
    runs = [r["jobs"][0] for r in runs if r]
    if not runs:
        return None
    w = [r["write"] for r in runs]
    res = {"MiB_s": mean([x["bw"] / 1024 for x in w]),
           "iops": mean([x["iops"] for x in w]),
           "p99_ms": mean([x["clat_ns"]["percentile"]["99.000000"] / 1e6 for x in w])}
    s = [r.get("sync", {}).get("lat_ns") for r in runs]
    if all(s) and s[0].get("N"):
        res["flush_mean_ms"] = mean([x["mean"] / 1e6 for x in s])
        res["cycle_ms"] = 1e3 / res["iops"]
    return res


figures = []


def fig(name, value, ref, ratio, target=None, unit="", note=""):
    figures.append({"figure": name, "value": value, "reference": ref, "ratio": ratio,
                    "target": target, "unit": unit, "note": note})


def ratio(a, b):
    return a / b if a is not None and b else None


# 1-3: guest I/O.  Paths: none (the reference), cdp, and the two stock
# anchors blk (blklogwrites) and mirror (active mirror, write-blocking);
# modes: async, sync and the async variants pinned, tmpfs and both.
MODES = ("async", "sync", "async-pinned", "async-tmpfs", "async-pinned-tmpfs")
ANCHORS = (("blk", "blklogwrites"), ("mirror", "active mirror"))
JOBS = (("seq1m", "1 MiB seq write QD16"), ("rand4k", "4 KiB rand write QD16"))
paths = []  # every path's figures, mode by mode and job by job
for mode in MODES:
    is_async = mode.startswith("async")
    tgt = ">= 0.95" if is_async else "report"
    for job in ("seq1m", "rand4k", "flush64k"):
        n = fio(mode, job, "none")
        for side in ("none", "cdp", "blk", "mirror"):
            x = fio(mode, job, side)
            if x and n:
                paths.append(dict(x, mode=mode, job=job, path=side,
                                  share=ratio(x["MiB_s"], n["MiB_s"]),
                                  p99_ratio=ratio(x["p99_ms"], n["p99_ms"])))
    for job, label in JOBS:
        c, n = fio(mode, job, "cdp"), fio(mode, job, "none")
        if not c or not n:
            continue
        fig(f"{label} throughput, {mode}", c["MiB_s"], n["MiB_s"], ratio(c["MiB_s"], n["MiB_s"]),
            tgt, "MiB/s", "fio nbd engine; reference: same export without the filter")
    c, n = fio(mode, "rand4k", "cdp"), fio(mode, "rand4k", "none")
    if c and n:
        fig(f"p99 write latency 4 KiB QD16, {mode}", c["p99_ms"], n["p99_ms"],
            ratio(c["p99_ms"], n["p99_ms"]), "<= 1.10" if is_async else "report", "ms")
    c, n = fio(mode, "seq1m", "cdp"), fio(mode, "seq1m", "none")
    if c and n:
        fig(f"p99 write latency 1 MiB QD16, {mode}", c["p99_ms"], n["p99_ms"],
            ratio(c["p99_ms"], n["p99_ms"]), "report", "ms")
    c, n = fio(mode, "flush64k", "cdp"), fio(mode, "flush64k", "none")
    fs = load(f"fsync-{mode}.json")
    if c and n and "flush_mean_ms" in c:
        extra = c["flush_mean_ms"] - n["flush_mean_ms"] - (fs["median_ms"] if fs else 0)
        fig(f"flush latency (64 KiB write + flush QD1), {mode}", c["flush_mean_ms"],
            n["flush_mean_ms"], ratio(c["flush_mean_ms"], n["flush_mean_ms"]), "report", "ms",
            f"one journal commit (64 KiB append + fdatasync) = "
            f"{fs['median_ms']:.2f} ms median; extra over none + one commit = {extra:.2f} ms; "
            f"write+flush cycle {c['cycle_ms']:.2f} vs {n['cycle_ms']:.2f} ms" if fs else "")
    # The stock anchors: what QEMU's own ways of keeping a second copy of
    # every write cost on the same machine, file system and export set-up.
    for side, aname in ANCHORS:
        for job, label in JOBS:
            a, n = fio(mode, job, side), fio(mode, job, "none")
            if a and n:
                fig(f"{label} throughput, {mode}, {aname} share", a["MiB_s"], n["MiB_s"],
                    ratio(a["MiB_s"], n["MiB_s"]), "report", "MiB/s",
                    f"stock anchor; IOPS {a['iops']:.0f} vs {n['iops']:.0f}; "
                    f"p99 {a['p99_ms']:.2f} vs {n['p99_ms']:.2f} ms")
        a, n = fio(mode, "rand4k", side), fio(mode, "rand4k", "none")
        if a and n:
            fig(f"p99 write latency 4 KiB QD16, {mode}, {aname}", a["p99_ms"], n["p99_ms"],
                ratio(a["p99_ms"], n["p99_ms"]), "report", "ms")
        a, n = fio(mode, "flush64k", side), fio(mode, "flush64k", "none")
        if a and n and "flush_mean_ms" in a:
            fig(f"flush latency (64 KiB write + flush QD1), {mode}, {aname}",
                a["flush_mean_ms"], n["flush_mean_ms"],
                ratio(a["flush_mean_ms"], n["flush_mean_ms"]), "report", "ms",
                f"write+flush cycle {a['cycle_ms']:.2f} vs {n['cycle_ms']:.2f} ms")
    c, b, n = (fio(mode, "seq1m", x) for x in ("cdp", "blk", "none"))
    if c and b and n and is_async:
        cs, bs = ratio(c["MiB_s"], n["MiB_s"]), ratio(b["MiB_s"], n["MiB_s"])
        fig(f"1 MiB seq write QD16, {mode}: cdp share / blklogwrites share", cs, bs,
            ratio(cs, bs), ">= 1.0", "x",
            "value and reference: each path's MiB/s / none's (mean of its two runs)")

# Mirror capture (protect --capture mirror, for a QEMU without the filter):
# its own none and the stock active mirror in the same step.
for job in ("seq1m", "rand4k", "flush64k"):
    n = fio("capture-mirror", job, "none")
    for side in ("none", "kmirror", "mirror"):
        x = fio("capture-mirror", job, side)
        if x and n:
            paths.append(dict(x, mode="capture-mirror", job=job, path=side,
                              share=ratio(x["MiB_s"], n["MiB_s"]),
                              p99_ratio=ratio(x["p99_ms"], n["p99_ms"])))
for job, label in JOBS:
    k, m, n = (fio("capture-mirror", job, x) for x in ("kmirror", "mirror", "none"))
    if not k or not n:
        continue
    fig(f"{label} throughput, mirror capture", k["MiB_s"], n["MiB_s"],
        ratio(k["MiB_s"], n["MiB_s"]), "report", "MiB/s",
        "protect --capture mirror (every write durable in the journal before it completes); "
        "reference: same daemon, no job")
    if m:
        fig(f"{label}, mirror capture share / stock active mirror share",
            ratio(k["MiB_s"], n["MiB_s"]), ratio(m["MiB_s"], n["MiB_s"]),
            ratio(k["MiB_s"], m["MiB_s"]), "report", "x",
            "stock: active mirror into qemu-storage-daemon's NBD export of a raw file")
k, n = fio("capture-mirror", "rand4k", "kmirror"), fio("capture-mirror", "rand4k", "none")
if k and n:
    fig("p99 write latency 4 KiB QD16, mirror capture", k["p99_ms"], n["p99_ms"],
        ratio(k["p99_ms"], n["p99_ms"]), "report", "ms")
k, n = fio("capture-mirror", "flush64k", "kmirror"), fio("capture-mirror", "flush64k", "none")
if k and n and "flush_mean_ms" in k:
    fig("flush latency (64 KiB write + flush QD1), mirror capture", k["flush_mean_ms"],
        n["flush_mean_ms"], ratio(k["flush_mean_ms"], n["flush_mean_ms"]), "report", "ms",
        f"write+flush cycle {k['cycle_ms']:.2f} vs {n['cycle_ms']:.2f} ms")

# 4, 6: ingest (two interleaved rounds; each side's best run)
for kind, label in (("comp", "compressible"), ("rand", "incompressible")):
    runs = [r for r in (load(f"ingest{n}-{kind}.json") for n in (1, 2)) if r]
    if not runs:
        continue
    ing = max(runs, key=lambda r: r["mib_per_s"])
    size = ing["payload_bytes"]
    z = min(t["seconds"] for t in (load(f"zstd{n}-{kind}.json") for n in (1, 2, 3)) if t)
    dd = min(t["seconds"] for t in (load(f"dd{n}-{kind}.json") for n in (1, 2)) if t)
    zmb, ddmb = size / z / MiB, size / dd / MiB
    lim = min(zmb, ddmb)
    fig(f"journal ingest, {label}", ing["mib_per_s"], lim, ratio(ing["mib_per_s"], lim),
        ">= 0.9", "MiB/s",
        f"reference = lower of zstd -1 -T0 ({zmb:.0f} MiB/s) and dd conv=fdatasync "
        f"({ddmb:.0f} MiB/s); {size / MiB:.0f} MiB in 64 KiB records; best of 2 interleaved "
        f"runs each (kvmcdp: " + ", ".join(f"{r['mib_per_s']:.0f}" for r in runs) + ")")
    jr = size / int(load(f"journal-size-{kind}"))
    zr = size / int(load(f"zstd-size-{kind}"))
    fig(f"compression ratio, {label}", jr, zr, jr / zr, ">= 0.95", "x",
        "pool bytes / journal bytes vs pool bytes / zstd -1 output")
    rss = [s[1] for s in ing["rss_samples"]]
    q = [rss[int(len(rss) * f)] / MiB for f in (0.25, 0.5, 0.75)] if rss else []
    fig(f"protect peak RSS while ingesting, {label}", ing["hwm_end"] / MiB, None, None,
        "<= 256 MiB, flat", "MiB",
        "VmHWM at the end; VmRSS at 25/50/75% of the run: " + ", ".join(f"{x:.0f}" for x in q))
    fig(f"protect CPU per GiB ingested, {label}", ing["cpu_seconds"] / (size / 2**30), None,
        None, "report", "s/GiB", "utime+stime of protect during the ingest")

# issue 7: shipping to a server over loopback vs the local store (two
# interleaved rounds, each side's best run), and the controls: the local
# ingest beside a CPU load the size of the co-located server's
def best(name):
    runs = [r for r in (load(f"{name}-{n}.json") for n in (1, 2)) if r]
    return max(runs, key=lambda r: r["mib_per_s"]) if runs else None, runs


rl, rl_runs = best("remote-local")
if rl:
    local = rl["mib_per_s"]
    every = lambda runs: ", ".join(f"{r['mib_per_s']:.0f}" for r in runs)
    for proto in ("tcp", "tls"):
        rp, rp_runs = best(f"remote-{proto}")
        if not rp:
            continue
        cpu = [load(f"remote-serve-cpu-{proto}-{n}") for n in (1, 2)]
        fig(f"remote ingest over {proto} loopback (--spool, the end waits for the server's ACK)",
            rp["mib_per_s"], local, ratio(rp["mib_per_s"], local), ">= 0.9", "MiB/s",
            f"reference = local-store ingest of the same compressible pool; best of 2 interleaved "
            f"runs each ({proto}: {every(rp_runs)}; local: {every(rl_runs)}); the server's CPU "
            f"seconds per run: " + ", ".join(str(c).strip() for c in cpu if c))
        lo, lo_runs = best(f"remote-loaded-{proto}")
        if lo:
            duty = [load(f"remote-load-duty-{proto}-{n}") for n in (1, 2)]
            fig(f"control: local ingest beside a load the size of the {proto} server's CPU",
                lo["mib_per_s"], local, ratio(lo["mib_per_s"], local), "report", "MiB/s",
                f"a busy loop on one core for the server's share of the {proto} runs ("
                + ", ".join(f"{float(x):.2f}" for x in duty if x)
                + f" of a core); runs: {every(lo_runs)}")

# 5: full restore
fr = [load("full-restore.json"), load("full-restore-2.json")]
fq = [load("full-qemu-img.json"), load("full-qemu-img-2.json")]
if all(fr) and all(fq):
    r, q = mean([x["seconds"] for x in fr]), mean([x["seconds"] for x in fq])
    fi = load("full-ingest.json")
    alloc = load("full-allocated")
    m = load("machine.json")
    disk = 256 if m.get("quick") else 4096
    fig("full restore to raw (speed vs qemu-img convert)", r, q, q / r, ">= 1.0", "s",
        f"{disk} MiB disk, {int(alloc) / MiB:.0f} MiB allocated after restore, "
        f"journal {fi['records']} x 4 KiB records; ratio = qemu-img time / restore time")

# Instant recovery (issue 20): export and recover against the full restore
inst = sorted(glob.glob(os.path.join(rdir, "recovery-*.json")),
              key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0]))
inst = [(int(p.rsplit("-", 1)[1].split(".")[0]), load(os.path.basename(p))) for p in inst]
inst = [(mib, x) for mib, x in inst if x]
for mib, x in inst:
    gib = f"{mib / 1024:g} GiB disk"
    fig(f"export: time to first byte, {gib}", x["ttfb_seconds"], None, None, "<= 1 s", "s",
        "kvmcdp export started -> first 4 KiB read answered (median of 3: "
        + ", ".join(f"{t:.3f}" for t in x["ttfb_runs"]) + ")")
    rs = x["disk_size"] / x["restore_seconds"]
    er = x["disk_size"] / x["export_read_seconds"]
    fig(f"export: sequential read, {gib}", er / MiB, rs / MiB, er / rs, ">= 0.5", "MiB/s",
        "qemu-img bench, 2 MiB reads, 16 in flight, the whole disk; reference = full "
        "restore --latest to raw of the same store in the same run")
    fig(f"recover: time until the disk is usable, {gib}", x["recover_usable_seconds"], None, None,
        "<= 2 s", "s", "kvmcdp recover started -> first 4 KiB read through its overlay answered")
    cr = x["disk_size"] / x["recover_copy_seconds"]
    fig(f"recover: background copy, {gib}", cr / MiB, rs / MiB, cr / rs, ">= 0.8", "MiB/s",
        "recover started -> its end: the point restored into the image beside a QEMU on the "
        "overlay, that QEMU's writes mirrored into it and the QEMU moved onto it; "
        "reference = the same full restore")
if len(inst) == 2:
    (m1, a1), (m2, a2) = inst
    fig(f"export: time to first byte, {m2 / 1024:g} GiB vs {m1 / 1024:g} GiB disk",
        a2["ttfb_seconds"], a1["ttfb_seconds"], a2["ttfb_seconds"] / a1["ttfb_seconds"],
        "<= 1.5", "s", "the same journal and base data on a 4x larger disk")

# 7: restore scaling
prev = None
for p in sorted(glob.glob(os.path.join(rdir, "scale-restore-*.json")),
                key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0])):
    n = int(p.rsplit("-", 1)[1].split(".")[0])
    t = load(os.path.basename(p))["seconds"]
    fig(f"restore time, {n} records", t, prev[1] if prev else None,
        t / prev[1] if prev else None, "~10x per 10x records", "s",
        f"{t / n * 1e6:.1f} us/record; ratio vs {prev[0]} records" if prev else
        f"{t / n * 1e6:.1f} us/record")
    prev = (n, t)

# 8: snapshot pause under write load
def p99_median(xs):
    xs = sorted(xs)
    return xs[max(0, -(-len(xs) * 99 // 100) - 1)], xs[len(xs) // 2]  # nearest rank


inq, rt = load("snapshot-qemu-pauses"), load("snapshot-pauses")
if inq:
    ps = [float(x) for x in str(inq).split()]
    p99, med = p99_median(ps)
    fig("snapshot create I/O pause under write load, p99", p99, None, None, "<= 5 ms", "ms",
        f"{len(ps)} snapshots under fio 4 KiB random writes QD16; the transaction's run "
        f"inside QEMU (its qmp_enter/qmp_exit trace events), which holds the drained "
        f"section: an upper bound of the guest's pause; median {med:.2f} ms, max {max(ps):.2f} ms")
if rt:
    ps = [float(x) for x in str(rt).split()]
    p99, med = p99_median(ps)
    fig("snapshot create, QMP round trip of the transaction, p99", p99, None, None, "report",
        "ms", f"as kvmcdp times and prints it: adds the main loop's delay in taking the "
        f"command and the reply's way back, while guest I/O runs; median {med:.2f} ms, "
        f"max {max(ps):.2f} ms")
guest = load("snapshot-guest.json")
if guest:
    def p99_of(xs):
        xs = sorted(x for x in xs if x is not None)
        return (xs[max(0, -(-len(xs) * 99 // 100) - 1)], xs[len(xs) // 2]) if xs else (None, None)
    sw, sm = p99_of(guest["snapshot_worst_ms"])
    qw, qm = p99_of(guest["quiet_worst_ms"])
    fig("snapshot create, guest-visible: worst write latency during a create, p99", sw, qw,
        ratio(sw, qw), "report", "ms",
        "per create, the slowest fio write completing during the whole `snapshot create` run "
        "(its own service time included); reference: the same in an equally long window "
        f"just before, no snapshot running; medians {sm:.2f} vs {qm:.2f} ms")

def build_path():
    out = load("node-build.out") or ""
    if "written directly" in str(out):
        return "written directly"
    if "through qemu-nbd" in str(out):
        return "through qemu-nbd"
    return "path not reported"


# 7b: restore from a built node with 1% of the disk changed after it
nr, nb, no = load("node-restore.json"), load("node-build.json"), load("node-overlay.json")
if no and all(fr):
    full = mean([x["seconds"] for x in fr])
    fig("restore from a built node, 1% changed (--overlay)", no["seconds"], full,
        no["seconds"] / full, "<= 0.1", "s",
        "restore --latest --overlay from a node 1% of the disk (4 KiB records) before the end, "
        "vs the full restore of the same point (same MD5 after qemu-img convert)"
        + (f"; to raw from that node: {nr['seconds']:.2f} s" if nr else "")
        + (f"; building the node took {nb['seconds']:.1f} s (the tree's root from the base "
           f"copy, then the node, {build_path()})" if nb else ""))

machine = load("machine.json")
machine["wall_seconds"] = int(load("wall-seconds") or 0)
doc = {"machine": machine, "figures": figures, "guest_io_paths": paths}
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(doc, f, indent=1)
os.replace(tmp, out)


def fmt(x):
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


print(f"machine: {machine['cpus']} x {machine['cpu_model']}, {machine['mem_gib']} GiB, "
      f"kernel {machine['kernel']}, scratch {' '.join(machine['scratch_fs'])}, "
      f"load {' '.join(machine['loadavg_at_start'])}, run {machine['wall_seconds']} s")
w = max([len(f["figure"]) for f in figures] + [6])
print(f"{'figure':<{w}}  {'value':>9}  {'reference':>9}  {'ratio':>6}  {'target':<16} unit")
for f in figures:
    print(f"{f['figure']:<{w}}  {fmt(f['value']):>9}  {fmt(f['reference']):>9}  "
          f"{fmt(f['ratio']):>6}  {f['target'] or '':<16} {f['unit']}")
    if f["note"]:
        print(f"{'':<{w}}    {f['note']}")

if paths:
    print()
    print("guest I/O paths: mean of each path's two runs; share = MiB/s / none's; "
          "p99 ratio = p99 / none's")
    print(f"{'mode':<13} {'job':<8} {'path':<6} {'MiB/s':>7} {'IOPS':>7} {'p99 ms':>7} "
          f"{'share':>6} {'p99 ratio':>9} {'flush ms':>8}")
    for p in paths:
        print(f"{p['mode']:<13} {p['job']:<8} {p['path']:<6} {fmt(p['MiB_s']):>7} "
              f"{fmt(p['iops']):>7} {fmt(p['p99_ms']):>7} {fmt(p['share']):>6} "
              f"{fmt(p['p99_ratio']):>9} {fmt(p.get('flush_mean_ms')):>8}")
