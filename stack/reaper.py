"""Kill a supervisor's child process groups when the supervisor dies, however it dies (SIGKILL included).

stack.processes starts this script once per supervisor (``make serve``, ``make triton``, a test session), in
a session of its own, and writes to its standard input the process group of each child it starts (``+PGID``)
and of each child it has stopped (``-PGID``). The pipe closes when the supervisor exits, for whatever reason:
then every group still listed gets SIGKILL. A group is a child and what it started: tritonserver's group
holds its Python-backend stubs, which outlive a tritonserver killed mid-request (a stub whose parent died
while it was computing hangs for good, holding its model's memory).

Standard library only, and run as a script, so that it starts fast and needs no import path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor's Ctrl-C is the supervisor's to handle
    groups: set[int] = set()
    for line in sys.stdin:
        pgid = int(line)
        if pgid > 0:
            groups.add(pgid)
        else:
            groups.discard(-pgid)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
