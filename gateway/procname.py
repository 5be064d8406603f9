"""Names the daemon's processes as `top`, `ps -o comm` and /proc/PID/comm show them.

`gateway run` is several processes (store/writer.py, gateway/runtime/children.py,
gateway/parse_pool.py); started from a fork server, they would all be called "python". With
these names an operator sees which one is busy: gw-daemon (SMTP listener, IMAP, API),
gw-writer (inbox commits), gw-worker, gw-sender, gw-parse.
"""

from __future__ import annotations

import ctypes
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
