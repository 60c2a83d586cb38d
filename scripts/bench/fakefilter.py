#!/usr/bin/env python3
"""A stand-in for QEMU's cdp filter, to measure kvmcdp's ingest alone.

`kvmcdp protect` talks to QEMU twice: over QMP (attach, base copy, detach)
and over the filter's stream (records in, acks out).  This script plays
both parts so that protect can be fed records as fast as it takes them,
with nothing else (a guest, QEMU's block layer, the guest's own disk
writes) in the way:

  * a QMP server on --qmp answers the commands protect sends.  getfd is
    CommandNotFound (as on qemu-storage-daemon), so protect listens on a
    unix socket and cdp-attach tells us where; the base copy's NBD server
    is a real `qemu-nbd -r` serving --base;
  * the stream: HELLO, then, once the base copy is done, the records of
    --plan as fast as the socket takes them, while a second thread reads
    the ACKs.  The ingest time runs from the first byte sent to the ACK of
    the last record, i.e. until everything is durable in the journal;
  * like the filter, it keeps at most --window bytes (default 64 MiB, the
    filter's default queue-size) sent but not acknowledged; with protocol
    version 2 or 3, RECEIVED frees the window and only the end waits for
    the ACK; with version 3 (the default, as the filter) the records go
    through the shared-memory ring that protect passes with HELLO_REPLY,
    with one wake-up byte on the socket per 1 MiB batch (the filter sends
    one only when protect said it sleeps, which needs a memory barrier
    that Python has not);
  * meanwhile it samples protect's /proc/PID/status (VmRSS, VmHWM) and
    /proc/PID/stat (utime + stime); the PID comes from SO_PEERCRED.

Plans (--plan):
  seq:SIZE          records of SIZE bytes written sequentially from offset
                    0, carrying the --pool file once, in order (so zstd and
                    dd can be run on exactly the same bytes)
  rand:COUNT:SIZE   COUNT records of SIZE bytes at random SIZE-aligned
                    offsets over --disk-size, data taken from --pool

The result (JSON) goes to --result once the last record is acked; the
script then waits for protect's cdp-detach and exits.
Python 3 standard library only.
"""
import argparse
import collections
import json
import mmap
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time

MAGIC = 0x5044434B
HDR = struct.Struct("<IHHQQQQII")
T_HELLO, T_WRITE, T_HELLO_REPLY, T_ACK, T_RECEIVED = 1, 2, 64, 65, 66
RING_HDR, RING_HEAD, RING_TAIL = 4096, 64, 128  # kvmcdp-wire(5), The ring
PAGE = os.sysconf("SC_PAGE_SIZE")
HZ = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"fakefilter: {msg}", file=sys.stderr, flush=True)


def proc_sample(pid):
    """(rss_bytes, hwm_bytes, cpu_seconds) of pid, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            st = {l.split(":")[0]: l.split()[1] for l in f if l.startswith("Vm")}
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / HZ  # utime, stime
        return int(st["VmRSS"]) * 1024, int(st["VmHWM"]) * 1024, cpu
    except (OSError, KeyError, IndexError):
        return None


def machine_busy():
    """CPU seconds the whole machine spent busy (not idle, not iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / HZ


class Stream:
    def __init__(self, args):
        self.args = args
        self.sock = None
        self.stream_id = random.getrandbits(63) | 1
        self.seq = 0  # last seq assigned
        self.acked = 0
        self.received = 0  # RECEIVED or ACK: the window's measure
        self.ack_cv = threading.Condition()
        self.go = threading.Event()  # the base copy is done
        self.done = threading.Event()  # everything sent was acked
        self.closed = threading.Event()
        self.peer_pid = None

    def connect(self, path):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock = s
        pid, _, _ = struct.unpack("3i", s.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        self.peer_pid = pid
        name = b"disk0"
        s.sendall(HDR.pack(MAGIC, T_HELLO, 0, self.seq, time.time_ns(), self.stream_id,
                           self.args.disk_size, len(name), self.args.version) + name)
        threading.Thread(target=self.pump, daemon=True).start()

    def recv_exact(self, n):
        b = bytearray()
        while len(b) < n:
            c = self.sock.recv(n - len(b))
            if not c:
                return None
            b += c
        return bytes(b)

    def read_acks(self):
        while True:
            h = self.recv_exact(HDR.size)
            if h is None:
                return
            _, typ, _, seq, *_ = HDR.unpack(h)
            if typ in (T_ACK, T_RECEIVED):
                with self.ack_cv:
                    self.received = max(self.received, seq)
                    if typ == T_ACK:
                        self.acked = max(self.acked, seq)
                    self.ack_cv.notify_all()

    def records(self):
        """Yields (offset, payload memoryview) following the plan."""
        a = self.args
        with open(a.pool, "rb") as f:
            pool = memoryview(f.read())
        kind, *p = a.plan.split(":")
        if kind == "seq":
            size = int(p[0])
            for off in range(0, len(pool), size):
                yield off % a.disk_size, pool[off:off + size]
        elif kind == "rand":
            count, size = int(p[0]), int(p[1])
            rng = random.Random(a.seed)
            blocks = a.disk_size // size
            pos = 0
            for _ in range(count):
                if pos + size > len(pool):
                    pos = 0
                yield rng.randrange(blocks) * size, pool[pos:pos + size]
                pos += size
        else:
            raise SystemExit(f"unknown plan {a.plan}")

    def ring_send(self, b):
        """Copies b into the ring (waiting for room), publishes it, wakes protect."""
        m, size = self.ring, self.ring_size
        while size - (self.head - struct.unpack_from("<Q", m, RING_TAIL)[0]) < len(b):
            time.sleep(0.0002)
        pos = self.head % size
        first = min(len(b), size - pos)
        m[RING_HDR + pos:RING_HDR + pos + first] = b[:first]
        if first < len(b):
            m[RING_HDR:RING_HDR + len(b) - first] = b[first:]
        self.head += len(b)
        struct.pack_into("<Q", m, RING_HEAD, self.head)
        self.sock.send(b"w")

    def pump(self):
        msg, fds, _, _ = socket.recv_fds(self.sock, HDR.size, 1)
        h = msg + (self.recv_exact(HDR.size - len(msg)) if len(msg) < HDR.size else b"")
        _, typ, _, durable, *_, version = HDR.unpack(h)
        assert typ == T_HELLO_REPLY, typ
        assert 1 <= version <= self.args.version, version
        self.ring = None
        if version >= 3:
            assert fds, "version 3 without a ring"
            st = os.fstat(fds[0])
            self.ring = mmap.mmap(fds[0], st.st_size)
            self.ring_size = struct.unpack_from("<Q", self.ring, 8)[0]
            self.head = struct.unpack_from("<Q", self.ring, RING_HEAD)[0]
        for fd in fds:
            os.close(fd)
        send = self.ring_send if self.ring is not None else self.sock.sendall
        threading.Thread(target=self.read_acks, daemon=True).start()
        self.go.wait()
        gen = self.records()  # reads the pool before the clock starts
        first = next(gen, None)
        samples = []
        stop_sampling = threading.Event()

        def sampler():
            while not stop_sampling.is_set():
                s = proc_sample(self.peer_pid)
                if s:
                    samples.append((time.monotonic(), *s))
                stop_sampling.wait(0.25)

        before = proc_sample(self.peer_pid)
        busy0 = machine_busy()
        threading.Thread(target=sampler, daemon=True).start()
        t0 = time.monotonic()
        sent_bytes = 0
        nrec = 0
        batch, batch_len = [], 0
        window = self.args.window
        unacked = collections.deque()  # (seq, bytes sent up to it), not yet acked

        def wait_window(sent):
            # Like the filter's queue budget: no more than --window bytes in
            # flight without an ACK.
            with self.ack_cv:
                while True:
                    while unacked and unacked[0][0] <= self.received:
                        unacked.popleft()
                    if not unacked or sent - unacked[0][1] <= window:
                        return
                    self.ack_cv.wait(1)

        it = gen if first is None else _chain(first, gen)
        now = time.time_ns()
        for off, data in it:
            self.seq += 1
            nrec += 1
            batch.append(HDR.pack(MAGIC, T_WRITE, 0, self.seq, now, off, len(data),
                                  len(data), 0))
            batch.append(data)
            batch_len += len(data) + HDR.size
            sent_bytes += len(data)
            if batch_len >= (1 << 20):
                wait_window(sent_bytes)
                send(b"".join(batch))
                unacked.append((self.seq, sent_bytes - batch_len))
                batch, batch_len = [], 0
                now = time.time_ns()
        if batch:
            send(b"".join(batch))
        t_sent = time.monotonic()
        with self.ack_cv:
            while self.acked < self.seq:
                self.ack_cv.wait(1)
        t1 = time.monotonic()
        after = proc_sample(self.peer_pid)
        busy1 = machine_busy()
        stop_sampling.set()
        elapsed = t1 - t0
        res = {
            "plan": self.args.plan,
            "records": nrec,
            "payload_bytes": sent_bytes,
            "last_seq": self.seq,
            "seconds": elapsed,
            "send_seconds": t_sent - t0,
            "mib_per_s": sent_bytes / elapsed / 2**20 if elapsed else 0,
            "protect_pid": self.peer_pid,
            "cpu_seconds": (after[2] - before[2]) if after and before else None,
            # Every process's, this one's included: what the run cost the
            # machine (for the remote figure, client and server together).
            "machine_busy_seconds": busy1 - busy0,
            "rss_start": before[0] if before else None,
            "hwm_end": after[1] if after else None,
            "rss_samples": [(round(t - t0, 2), r, w) for t, r, w, _ in samples],
        }
        tmp = self.args.result + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f)
        os.rename(tmp, self.args.result)
        log(f"{nrec} records, {sent_bytes / 2**20:.0f} MiB durable in {elapsed:.2f} s")
        self.done.set()

    def close(self):
        self.done.wait()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.closed.set()


def _chain(first, gen):
    yield first
    yield from gen


class Qmp:
    def __init__(self, args, stream):
        self.args = args
        self.stream = stream
        self.attached = False
        self.nbd_sock = None
        self.nbd = None

    def info(self):
        s = self.stream
        return [{"node-name": self.args.filter, "child": "disk0", "connected": not s.closed.is_set(),
                 "seq": s.seq, "acked-seq": s.acked, "queued-bytes": 0, "gap": False,
                 "dirty-bytes": 0, "stream-id": s.stream_id}] if self.attached else []

    def handle(self, cmd, a):
        if cmd == "qmp_capabilities":
            return {}
        if cmd == "query-block":
            return []
        if cmd == "query-qmp-schema":  # protect's --capture auto: the filter is here
            return [{"name": "cdp-attach", "meta-type": "command"}]
        if cmd == "query-named-block-nodes":
            return [{"node-name": "disk0"}]
        if cmd == "query-cdp":
            return self.info()
        if cmd == "getfd":
            raise KeyError("CommandNotFound")
        if cmd == "cdp-attach":
            self.stream.connect(a["addr"]["path"])
            self.attached = True
            return {}
        if cmd == "nbd-server-start":
            self.nbd_sock = a["addr"]["data"]["path"]
            return {}
        if cmd == "block-export-add":
            self.nbd = subprocess.Popen([self.args.qemu_nbd, "-r", "-f", "raw", "-t", "-x", a["name"],
                                         "--socket", self.nbd_sock, self.args.base])
            for _ in range(500):
                if os.path.exists(self.nbd_sock):
                    break
                time.sleep(0.01)
            return {}
        if cmd == "block-export-del":
            return {}
        if cmd == "nbd-server-stop":
            if self.nbd:
                self.nbd.terminate()
                self.nbd.wait()
                self.nbd = None
            self.stream.go.set()  # the base copy is done: stream now
            return {}
        if cmd == "cdp-detach":
            self.stream.close()
            self.attached = False
            return {}
        raise KeyError("CommandNotFound")

    def serve(self, conn):
        f = conn.makefile("rwb")
        f.write(b'{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}},'
                b' "capabilities": []}}\r\n')
        f.flush()
        dec = json.JSONDecoder()
        buf = ""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk.decode()
            while True:
                buf = buf.lstrip()
                if not buf:
                    break
                try:
                    msg, n = dec.raw_decode(buf)
                except ValueError:
                    break
                buf = buf[n:]
                try:
                    reply = {"return": self.handle(msg["execute"], msg.get("arguments", {}))}
                except KeyError as e:
                    log(f"QMP {msg.get('execute')}: {e}")
                    reply = {"error": {"class": str(e).strip("'"), "desc": "not in the fake"}}
                if "id" in msg:
                    reply["id"] = msg["id"]
                conn.sendall(json.dumps(reply).encode() + b"\r\n")
                if msg["execute"] == "cdp-detach":
                    self.finished.set()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qmp", required=True)
    ap.add_argument("--base", required=True, help="raw image served as the base copy")
    ap.add_argument("--disk-size", type=int, required=True)
    ap.add_argument("--pool", required=True, help="the bytes the records carry")
    ap.add_argument("--plan", required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--filter", default="kvmcdp-disk0")
    ap.add_argument("--window", type=int, default=64 << 20,
                    help="bytes in flight without an ACK (the filter's queue-size)")
    ap.add_argument("--version", type=int, default=3, choices=(1, 2, 3),
                    help="the stream protocol version offered (2: RECEIVED frees the "
                         "window; 3: the records go through the shared-memory ring)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--qemu-nbd", default="qemu-nbd")
    args = ap.parse_args()
    stream = Stream(args)
    q = Qmp(args, stream)
    q.finished = threading.Event()
    if os.path.exists(args.qmp):
        os.unlink(args.qmp)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(args.qmp)
    srv.listen(4)
    srv.settimeout(0.5)
    while not q.finished.is_set():
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=q.serve, args=(conn,), daemon=True).start()
    os.unlink(args.qmp)


if __name__ == "__main__":
    main()
