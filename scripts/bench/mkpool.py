#!/usr/bin/env python3
"""mkpool.py OUT SIZE: SIZE bytes of compressible, disk-like data: the
system's shared libraries and programs concatenated (in a fixed order),
repeated if they are fewer than SIZE."""
import os
import sys

out, size = sys.argv[1], int(sys.argv[2])
files = []
for d in ("/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/share/doc", "/usr/lib"):
    for root, _, names in os.walk(d):
        for n in sorted(names):
            p = os.path.join(root, n)
            if os.path.isfile(p) and not os.path.islink(p):
                files.append(p)
left = size
with open(out, "wb") as o:
    while left > 0:
        for p in files:
            try:
                with open(p, "rb") as f:
                    b = f.read(left)
            except OSError:
                continue
            o.write(b)
            left -= len(b)
            if left <= 0:
                break
