#!/usr/bin/env python3
"""burn.py DUTY: keeps one core busy DUTY (0..1) of the time until killed.

The remote-ingest step's control load: a stand-in for the CPU that a
backup server on the same machine takes from the client.  Busy 2 ms *
DUTY, then asleep for the rest of each 2 ms period.
"""
import signal
import sys
import time

duty = max(0.0, min(1.0, float(sys.argv[1])))
period = 0.002
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < period * duty:
        pass
    time.sleep(period * (1 - duty))
