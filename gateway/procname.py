"""Names the daemon's processes as `top`, `ps -o comm` and /proc/PID/comm show them, and keeps
what each built at its start out of the garbage collector's scans (`freeze_heap`).

`gateway run` is several processes (store/writer.py, gateway/runtime/children.py,
gateway/parse_pool.py); started from a fork server, they would all be called "python". With
these names an operator sees which one is busy: gw-daemon (SMTP listener, IMAP, API),
gw-writer (inbox commits), gw-worker, gw-sender, gw-parse.
"""

from __future__ import annotations

import ctypes
import gc
import sys

_PR_SET_NAME = 15  # prctl(2): the calling thread's name, which is the process's for its main thread


def name_process(name: str) -> None:
    """Best effort: Linux only, at most 15 bytes, and nothing fails when it cannot be set."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def freeze_heap() -> None:
    """Once a process has started (its modules imported, its store and app built): what is alive
    now lives as long as the process, and the collector need not look at it again. Its full
    collections scanned all of it (SQLAlchemy's and psycopg's tables, the compiled statements):
    under bench/smtp.py the worker's took 143 and 207 ms each, 0.18 ms a mail; with this, 6 ms
    in all. The garbage of the start is collected first, so none of it is kept."""
    gc.collect()
    gc.freeze()
