#!/usr/bin/env python3
"""mkdisk.py OUT SIZE FRACTION POOL: a sparse raw disk of SIZE bytes with
about FRACTION of it data, in 16 MiB extents spread evenly over the disk,
the data taken from POOL (cycled)."""
import os
import sys

out, size, frac, pool = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
ext = 16 << 20
with open(pool, "rb") as f:
    data = memoryview(f.read())
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, size)
pos = 0
for i in range(size // ext):
    if int((i + 1) * frac) > int(i * frac):
        if pos + ext > len(data):
            pos = 0
        os.pwrite(fd, data[pos:pos + ext], i * ext)
        pos += ext
os.fsync(fd)
os.close(fd)
