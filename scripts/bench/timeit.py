#!/usr/bin/env python3
"""timeit.py OUT.json CMD...: runs CMD, writes its wall time, the CPU
seconds of it and its children, and their peak RSS to OUT.json; exits
with CMD's status."""
import json
import resource
import subprocess
import sys
import time

out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.monotonic()
rc = subprocess.run(cmd).returncode
wall = time.monotonic() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(out, "w") as f:
    json.dump({"cmd": cmd, "seconds": wall, "cpu_seconds": ru.ru_utime + ru.ru_stime,
               "maxrss_bytes": ru.ru_maxrss * 1024, "status": rc}, f)
sys.exit(rc)
