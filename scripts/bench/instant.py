#!/usr/bin/env python3
"""instant.py --kvmcdp K --store S --qemu-bin DIR --work DIR --out OUT.json:
the instant-recovery figures of one store (latest point), each against a
full `kvmcdp restore --latest` to raw of the same store in the same run.

- ttfb: `kvmcdp export` started -> the first 4 KiB read answered, by a
  minimal NBD client here (connect retried every 2 ms); median of 3.
- export read: `qemu-img bench` reading the whole export sequentially in
  2 MiB requests, 16 in flight; bytes per second.
- recover usable: `kvmcdp recover --qmp` started -> the first 4 KiB read
  through the new image answered (qemu-io opening it, sharing the lock).
- recover copy: a QEMU (-machine none, -S) opens the overlay; from
  recover's start to its end (the point restored into the image, the
  VM's node mirrored into it and the VM moved onto it); bytes per
  second."""
import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--kvmcdp", required=True)
ap.add_argument("--store", required=True)
ap.add_argument("--qemu-bin", required=True)
ap.add_argument("--work", required=True)
ap.add_argument("--out", required=True)
a = ap.parse_args()
os.makedirs(a.work, exist_ok=True)
env = dict(os.environ, TMPDIR=a.work, KVMCDP_RUN_DIR=os.path.join(a.work, "run"))
size = json.load(open(os.path.join(a.store, "manifest.json")))["disk_size"]


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("NBD server closed")
        b += c
    return b


def first_read(path):
    """Connects (retrying) and reads 4 KiB at 0 with NBD_OPT_EXPORT_NAME."""
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            break
        except OSError:
            s.close()
            time.sleep(0.002)
    hdr = recv_exact(s, 18)
    assert hdr[:8] == b"NBDMAGIC"
    s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 1, 0))
    recv_exact(s, 10)  # size, flags
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, 4096))
    rep = recv_exact(s, 16)
    assert struct.unpack(">I", rep[:4])[0] == 0x67446698 and rep[4:8] == b"\0\0\0\0"
    recv_exact(s, 4096)
    s.close()


def export(sock):
    return subprocess.Popen([a.kvmcdp, "export", "--store", a.store, "--latest", "--socket", sock],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)


res = {"disk_size": size}

# The reference: a full restore of the same point.
out = os.path.join(a.work, "restored.raw")
t0 = time.monotonic()
subprocess.run([a.kvmcdp, "restore", "--quiet", "--store", a.store, "--latest", "-o", out],
               check=True, stdout=subprocess.DEVNULL, env=env)
res["restore_seconds"] = time.monotonic() - t0
os.unlink(out)

sock = os.path.join(a.work, "e.sock")
ttfb = []
for _ in range(3):
    t0 = time.monotonic()
    p = export(sock)
    first_read(sock)
    ttfb.append(time.monotonic() - t0)
    stop(p)
res["ttfb_runs"] = ttfb
res["ttfb_seconds"] = sorted(ttfb)[1]

p = export(sock)
first_read(sock)
req = 2 << 20
t0 = time.monotonic()
subprocess.run([os.path.join(a.qemu_bin, "qemu-img"), "bench", "-f", "raw", "-c",
                str(size // req), "-d", "16", "-s", str(req), "-S", str(req),
                f"nbd+unix:///?socket={sock}"], check=True, stdout=subprocess.DEVNULL)
res["export_read_seconds"] = time.monotonic() - t0
stop(p)

image = os.path.join(a.work, "r.raw")
overlay = image + ".kvmcdp-recover.qcow2"
vm_sock = os.path.join(a.work, "vm.sock")
t0 = time.monotonic()
rec = subprocess.Popen([a.kvmcdp, "recover", "--store", a.store, "--latest", "--to", image,
                        "--qmp", vm_sock, "--vm-timeout", "120"],
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
line = rec.stderr.readline()
assert "is ready" in line, line
subprocess.run([os.path.join(a.qemu_bin, "qemu-io"), "-r", "-U", "-f", "qcow2", "-c", "read 0 4k",
                overlay], check=True, stdout=subprocess.DEVNULL)
res["recover_usable_seconds"] = time.monotonic() - t0
vm = subprocess.Popen([os.path.join(a.qemu_bin, "qemu-system-x86_64"), "-machine", "none", "-S",
                       "-nodefaults", "-display", "none",
                       "-blockdev", f"driver=file,filename={overlay},node-name=f",
                       "-blockdev", "driver=qcow2,file=f,node-name=d",
                       "-qmp", f"unix:{vm_sock},server=on,wait=off"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
rest = rec.stderr.read()
rc = rec.wait()
res["recover_copy_seconds"] = time.monotonic() - t0
vm.terminate()
vm.wait()
if rc != 0 or "the VM runs on it now" not in rest:
    sys.exit(f"recover failed (exit {rc}): {rest}")
os.unlink(image)
json.dump(res, open(a.out, "w"), indent=1)
print(json.dumps(res))
