"""Contention for the benchmarks: one busy process per core, started and stopped by the caller.

    with busy_cores() as procs:   # os.cpu_count() spinning processes
        ...                       # time the comparisons here

Each spinner is a separate Python process that runs a pure-Python loop (no I/O, ~no memory)
until its deadline (``max_seconds``, default 30 min) and is terminated when the ``with`` block
ends, whichever comes first, so a crashed benchmark cannot leave them spinning. This imitates a
shared machine at a load average of 2x its cores (the benchmark's threads plus one spinner per
core), the condition under which issue 20 measured widenet's ratios fall.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

_SPIN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def busy_cores(n: int | None = None, *, max_seconds: float = 1800.0):
    """Start ``n`` (default: one per core) spinning processes; stop them on exit."""
    n = (os.cpu_count() or 1) if n is None else int(n)
    if n < 0 or max_seconds <= 0:
        raise ValueError(f"n must be >= 0 and max_seconds > 0, got {n}, {max_seconds}")
    code = _SPIN.format(seconds=float(max_seconds))
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    try:
        time.sleep(0.5)  # let the scheduler see them before the first timing
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
