"""Running the parse step inside a budget (RELIABILITY 38–41): a child process with a memory
limit and a deadline, so one hostile mail can neither stall nor kill the daemon; it also puts
the parsing on the second core while the event loop keeps receiving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import resource
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from functools import partial

from gateway.errors import UnusableMail
from gateway.model import ParsedMail
from gateway.pipeline.parse import Limits, parse_mail
from store.blobs import BlobStore

_blobs: BlobStore | None = None
OWNER_CHECK_S = 1.0


def _init_child(blob_dir: str, memory_mb: int, owner: int) -> None:
    global _blobs
    _blobs = BlobStore(blob_dir)
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    threading.Thread(target=_exit_with, args=(owner,), name="owner-watch", daemon=True).start()


def _exit_with(owner: int) -> None:
    """A parse process started from a fork server is not the child of the process that owns
    the pool: when that owner is killed (a worker child after SIGKILL), nothing tells it, and it
    would wait for work forever. So it looks once a second and leaves with its owner."""
    while True:
        time.sleep(OWNER_CHECK_S)
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass  # exists, owned by someone else: cannot be ours, but do not guess


def _parse_in_child(raw: bytes, limits: Limits, envelope_from: str | None,
                    envelope_to: tuple[str, ...]) -> ParsedMail:
    assert _blobs is not None
    try:
        return parse_mail(raw, _blobs.put, limits, envelope_from, envelope_to)
    except MemoryError as exc:
        raise UnusableMail("parsing exceeded the memory budget") from exc


class ParseRunner:
    """Parses inline (CLI, tests) or in a pool of child processes (the daemon)."""

    def __init__(self, blobs: BlobStore, limits: Limits, in_subprocess: bool = False, processes: int = 1,
                 timeout_s: float = 30.0, memory_mb: int = 1024) -> None:
        self._blobs = blobs
        self._limits = limits
        self._in_subprocess = in_subprocess
        self._processes = processes
        self._timeout = timeout_s
        self._memory_mb = memory_mb
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _ensure_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self._processes, initializer=_init_child,
                initargs=(str(self._blobs.root), self._memory_mb, os.getpid()))
        return self._pool

    async def parse(self, raw: bytes, envelope_from: str | None = None,
                    envelope_to: tuple[str, ...] = ()) -> ParsedMail:
        if not self._in_subprocess:
            return parse_mail(raw, self._blobs.put, self._limits, envelope_from, envelope_to)
        loop = asyncio.get_running_loop()
        call = partial(_parse_in_child, raw, self._limits, envelope_from, envelope_to)
        try:
            future = loop.run_in_executor(self._ensure_pool(), call)
            return await asyncio.wait_for(future, self._timeout)
        except TimeoutError as exc:
            self._reset()
            raise UnusableMail(f"parsing took longer than {self._timeout:g} s") from exc
        except BrokenProcessPool as exc:
            self._reset()
            raise UnusableMail("the parser process died (memory budget)") from exc

    def _reset(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
