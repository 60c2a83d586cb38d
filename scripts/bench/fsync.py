#!/usr/bin/env python3
"""fsync.py DIR SIZE N: the cost of one journal commit on DIR's file
system: N times, append SIZE bytes to a file and fdatasync it.  Prints
JSON with the mean, median and p99 in ms."""
import json
import os
import sys
import time

d, size, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
path = os.path.join(d, "bench-fsync.probe")
buf = os.urandom(size)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
lat = []
try:
    for _ in range(n):
        t = time.monotonic()
        os.write(fd, buf)
        os.fdatasync(fd)
        lat.append((time.monotonic() - t) * 1e3)
finally:
    os.close(fd)
    os.unlink(path)
lat.sort()
print(json.dumps({"n": n, "size": size, "mean_ms": sum(lat) / n,
                  "median_ms": lat[n // 2], "p99_ms": lat[min(n - 1, int(n * 0.99))]}))
