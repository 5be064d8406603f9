"""SQLite's WAL checkpoints in `gateway run`, on a thread of their own in the worker process.

A checkpoint copies the WAL's pages into the database file and fsyncs it. SQLite runs one in
the commit that takes the WAL past `wal_autocheckpoint` pages, and that commit waits for it:

* in the worker's transactions (SQLite's default, 1000 pages), the first commit after a burst
  copies the whole burst while the backlog waits behind it;
* in the SMTP writer's commits (8000 pages, store/writer.py), a client's 250 waits for
  one, many times its usual latency.

In `gateway run` on SQLite the worker and sender processes therefore never checkpoint in a
commit (`checkpoint_elsewhere`), and the `Checkpointer` does it beside them: as soon as the SMTP
commits pause, and at least every FORCE_AFTER_S while they do not (so the WAL stays far below
the writer's 8000 pages, which remain its safety net while the worker process is down). It is
PASSIVE: it never waits for a lock and never holds one that a commit needs; only its disk
writes share the disk with them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine

from store.engine import sync_sqlite_engine

log = logging.getLogger("store.sqlite.wal")

CHECK_EVERY_S = 0.1
FORCE_AFTER_S = 1.0


def _no_autocheckpoint(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")


async def checkpoint_elsewhere(*engines: Engine | AsyncEngine) -> None:
    """No checkpoint in these engines' commits (wal_autocheckpoint=0): the Checkpointer does them."""
    for engine in engines:
        if isinstance(engine, AsyncEngine):
            event.listen(engine.sync_engine, "connect", _no_autocheckpoint)
            await engine.dispose()  # its pool's connections were made before: the next ones have it
        else:
            event.listen(engine, "connect", _no_autocheckpoint)
            engine.dispose()


class Checkpointer:
    def __init__(self, url: str, busy_timeout_ms: int, quiet: Callable[[], bool]) -> None:
        self._engine = sync_sqlite_engine(url, busy_timeout_ms)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-checkpoint")
        self._quiet = quiet
        self._seen_version: int | None = None
        self.checkpoints = 0  # run (something had been committed since the one before)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), CHECK_EVERY_S)
                except TimeoutError:
                    pass
                if not (self._quiet() or time.monotonic() - last >= FORCE_AFTER_S):
                    continue
                try:
                    await loop.run_in_executor(self._thread, self.checkpoint)
                except Exception as exc:  # the next round tries again; commits go on meanwhile
                    log.warning("store.checkpoint_failed", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
                last = time.monotonic()
        finally:
            self._thread.shutdown(wait=True)
            self._engine.dispose()

    def checkpoint(self) -> bool:
        """One PASSIVE checkpoint, unless nothing was committed since the one before."""
        with self._engine.connect() as conn:
            version = int(conn.exec_driver_sql("PRAGMA data_version").scalar_one())
            if version == self._seen_version:
                return False
            self._seen_version = version
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        self.checkpoints += 1
        return True


def truncate_wal(url: str, attempts: int = 3, wait_ms: int = 1000) -> bool:
    """Copy the whole WAL into the database file and cut it to zero bytes (after an erasure
    or a retention run): frames of earlier transactions still hold the old pages until then.
    TRUNCATE waits for readers of an older snapshot and holds new writers back meanwhile, so
    each try waits at most `wait_ms` (the SMTP writer retries its commits for longer); says
    whether it got through."""
    engine = sync_sqlite_engine(url, wait_ms)
    try:
        with engine.connect() as conn:
            for _ in range(attempts):
                if not conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()[0]:
                    return True
                time.sleep(0.1)
        return False
    finally:
        engine.dispose()
