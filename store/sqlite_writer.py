"""The daemon's inbox writer for SQLite: group commits on one thread with a plain connection.

Through aiosqlite a commit is half a dozen hops between the event loop and the driver's
thread (begin, execute, fetch, commit, reset), and each hop waits for a loop that is busy
receiving mail; here the whole transaction is one hop. SQLite's own busy handler is off: it
sleeps 1, 2, 5, 10 … 100 ms between tries and keeps missing the moments the worker process
releases the write lock, so this writer tries again every millisecond instead, for at most
the configured busy timeout. The connection has the same durability as the engine's
(WAL, synchronous=FULL).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError, OperationalError

from gateway.errors import StoreUnavailable
from store.engine import sync_sqlite_engine
from store.inbox import Accepted, IncomingMail, insert_batch, row_of

RETRY_EVERY_S = 0.001
MAX_YIELD_S = 0.2


class SqliteInboxWriter:
    def __init__(self, url: str, busy_timeout_s: float) -> None:
        self._engine = sync_sqlite_engine(url, busy_timeout_ms=0)
        self._busy_timeout_s = busy_timeout_s
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inbox-writer")
        # Shared memory: 1 while a commit of ours waits or runs; `yield_to_smtp` reads it.
        self.waiting = multiprocessing.get_context("forkserver").RawValue("i", 0)

    async def accept_many(self, mails: Sequence[IncomingMail], now: datetime) -> list[Accepted]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._accept, list(mails), now)

    def _accept(self, mails: list[IncomingMail], now: datetime) -> list[Accepted]:
        rows = [row_of(mail, now) for mail in mails]  # hashing 20 KB mails: off the loop too
        give_up = time.monotonic() + self._busy_timeout_s
        self.waiting.value = 1
        try:
            while True:
                try:
                    with self._engine.begin() as conn:
                        return insert_batch(conn, rows)
                except (OperationalError, DBAPIError, OSError) as exc:
                    if not (_busy(exc) and time.monotonic() < give_up):
                        raise StoreUnavailable(f"inbox commit failed: {type(exc).__name__}") from exc
                time.sleep(RETRY_EVERY_S)
        finally:
            self.waiting.value = 0

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._engine.dispose()


def yield_to_smtp(engine: Engine, waiting: Any, max_wait_s: float = MAX_YIELD_S) -> None:
    """In another process on the same SQLite file (the worker): before each transaction,
    let a waiting SMTP commit go first.

    SQLite has one write lock per database. A worker transaction holds it for its whole
    length, and the 250s of every session on the listener wait behind it; bounded, so a
    steady stream of mail slows the worker down but never stops it.
    """
    def before_begin(_conn: Any) -> None:
        give_up = time.monotonic() + max_wait_s
        while waiting.value and time.monotonic() < give_up:
            time.sleep(RETRY_EVERY_S / 2)

    event.listen(engine, "begin", before_begin)


def _busy(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text

