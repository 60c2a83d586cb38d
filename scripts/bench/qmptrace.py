#!/usr/bin/env python3
"""qmptrace.py TRACE_LOG COMMAND: how long each run of a QMP command took
inside QEMU, one line per run, in ms.  TRACE_LOG is QEMU's log of the
qmp_enter_COMMAND / qmp_exit_COMMAND trace events with timestamps
(-msg timestamp=on: "PID@SECONDS.MICROS:qmp_enter_COMMAND ...").  Those
events bracket the command's handler, so the time between them excludes
the wait for the main loop to read the command and the reply's way back,
during which the guest's I/O runs on."""
import re
import sys

log, cmd = sys.argv[1], sys.argv[2]
pat = re.compile(r"^\d+@(\d+)\.(\d{6}):qmp_(enter|exit)_" + re.escape(cmd) + r"\b")
entered = None
runs = 0
with open(log) as f:
    for line in f:
        m = pat.match(line)
        if not m:
            continue
        t = int(m.group(1)) * 1000000 + int(m.group(2))
        if m.group(3) == "enter":
            if entered is not None:
                sys.exit(f"qmptrace: {cmd} entered twice without an exit")
            entered = t
        else:
            if entered is None:
                sys.exit(f"qmptrace: {cmd} exited without an enter")
            print(f"{(t - entered) / 1000:.3f}")
            entered = None
            runs += 1
if runs == 0:
    sys.exit(f"qmptrace: no {cmd} in {log}")
