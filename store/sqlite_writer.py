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
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, bindparam, event, insert, select

from gateway.errors import StoreUnavailable
from store.engine import sync_sqlite_engine
from store.inbox import RAW, Accepted, IncomingMail, T, insert_statement, row_of

RETRY_EVERY_S = 0.001
MAX_ROWS_PER_INSERT = 200  # 13 values a row, far below SQLite's 32766 variables
MAX_YIELD_S = 0.2


class SqliteInboxWriter:
    def __init__(self, url: str, busy_timeout_s: float) -> None:
        self._engine = sync_sqlite_engine(url, busy_timeout_ms=0)
        self._insert = DriverInsert(self._engine)
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
                    return self._insert.run(rows)
                except (sqlite3.Error, OSError) as exc:
                    if not (_busy(exc) and time.monotonic() < give_up):
                        raise StoreUnavailable(f"inbox commit failed: {type(exc).__name__}") from exc
                time.sleep(RETRY_EVERY_S)
        finally:
            self.waiting.value = 0

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._engine.dispose()


class DriverInsert:
    """`store.inbox.insert_batch` on the driver's connection: the statements SQLAlchemy compiled
    once, executed by pysqlite itself, which keeps them prepared.

    The listener's whole CPU budget per mail is about a millisecond; SQLAlchemy's execution
    layer (parameter processing, result objects) cost 0.2–0.3 ms of it per commit (measured
    with bench/smtp.py's load). Same rows, same transaction semantics, same replies.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        dialect = engine.dialect
        keys = [k for k in row_of(IncomingMail(b"", "sample"), datetime.now(UTC)) if k != "raw"]  # row_of's columns
        compiled = insert_statement("sqlite").compile(dialect=dialect, column_keys=keys)
        self._sql = str(compiled)
        self._order = list(compiled.positiontup or ())
        convert = {c.key: c.type.dialect_impl(dialect).bind_processor(dialect) for c in T.columns}
        self._convert = [(key, convert.get(key)) for key in self._order]
        raw = insert(RAW).compile(dialect=dialect, column_keys=["inbound_id", "raw"])
        self._raw_sql, self._raw_order = str(raw), list(raw.positiontup or ())
        self._find_sql = str(select(T.c.id).where(T.c.dedup_key == bindparam("key")).compile(dialect=dialect))
        self._many: dict[int, str] = {}

    def run(self, rows: list[dict[str, Any]]) -> list[Accepted]:
        pooled = self._engine.raw_connection()  # checked out per commit, as by engine.begin()
        try:
            conn: Any = pooled.driver_connection
            try:
                result = self._insert(conn, rows)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return result
        finally:
            pooled.close()

    def _insert(self, conn: Any, rows: list[dict[str, Any]]) -> list[Accepted]:
        first = list({row["dedup_key"]: row for row in reversed(rows)}.values())[::-1]  # twice in a batch: once
        ids: dict[str, int] = {}
        for start in range(0, len(first), MAX_ROWS_PER_INSERT):  # one statement for many rows
            part = first[start:start + MAX_ROWS_PER_INSERT]
            params = [fn(row[k]) if fn else row[k] for row in part for k, fn in self._convert]
            ids.update((key, int(new_id)) for new_id, key in conn.execute(self._sql_for(len(part)), params))
        raws = {row["dedup_key"]: row["raw"] for row in first}
        conn.executemany(self._raw_sql, [[{"inbound_id": new_id, "raw": raws[key]}[k] for k in self._raw_order]
                                         for key, new_id in ids.items()])
        fresh = set(ids)
        result = []
        for row in rows:
            key = row["dedup_key"]
            if key not in ids:  # ON CONFLICT DO NOTHING: we have it already
                ids[key] = int(conn.execute(self._find_sql, (key,)).fetchone()[0])
            result.append(Accepted(ids[key], key not in fresh))
            fresh.discard(key)  # its second copy in this batch is a duplicate
        return result

    def _sql_for(self, count: int) -> str:
        """The compiled single-row INSERT with `count` groups of values (VALUES (…), (…), …)."""
        sql = self._many.get(count)
        if sql is None:
            head, rest = self._sql.split(" VALUES ", 1)
            group = rest[:rest.index(")") + 1]
            sql = self._many[count] = f"{head} VALUES {', '.join([group] * count)}{rest[len(group):]}"
        return sql


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

