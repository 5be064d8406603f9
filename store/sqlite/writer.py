"""The inbox writer's commits on SQLite (the writer process is store/writer.py's; on PostgreSQL
store/pg/writer.py commits), and how the daemon's other processes share SQLite's one write lock
with them (`smtp_pause`, `smtp_quiet`).

SQLite's own busy handler is off: it sleeps 1, 2, 5, 10 … 100 ms between tries and keeps
missing the moments the worker process releases the write lock, so the writer tries again
every millisecond instead, for at most the configured busy timeout. The connection has the
same durability as the engine's (WAL, synchronous=FULL).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, bindparam, event, insert, select

from gateway.errors import StoreUnavailable
from store.engine import sync_sqlite_engine
from store.inbox import (
    RAW,
    Accepted,
    IncomingMail,
    T,
    accepted_in_order,
    first_of_each_key,
    insert_statement,
    row_of,
)

RETRY_EVERY_S = 0.001
MAX_ROWS_PER_INSERT = 200  # 13 values a row, far below SQLite's 32766 variables
MAX_YIELD_S = 0.5  # the longest a worker transaction waits for the SMTP commits to pause
QUIET_S = 0.05  # a pause this long between SMTP commits lets the worker in
PAUSE_POLL_S = 0.005  # how often a waiting worker looks while an SMTP commit runs
BUSY = float("inf")  # `busy_until` while a commit waits or runs
WRITER_AUTOCHECKPOINT_PAGES = 8000


def _checkpoint_later(dbapi_conn: Any, _record: Any) -> None:
    """The commit that takes the WAL past `wal_autocheckpoint` pages also copies the WAL into
    the database file and fsyncs it. At SQLite's default (1000 pages, 4 MB) that would be
    every batch of 200 IMAP mails of 20 KB, on the edge's path; hence 8000 here. The
    other connections keep the default, so in `gateway run` the worker's commits do the
    checkpoints, off the path of the 250s; the writer still does one when the WAL reaches
    32 MB (an idle worker)."""
    dbapi_conn.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}")


class Committer:
    """One batch of mails, one transaction, retried every millisecond while the file is locked."""

    def __init__(self, url: str, busy_timeout_s: float, busy_until: Any) -> None:
        self._engine = sync_sqlite_engine(url, busy_timeout_ms=0)
        event.listen(self._engine, "connect", _checkpoint_later)
        self._insert = DriverInsert(self._engine)
        self._busy_timeout_s = busy_timeout_s
        self._busy_until = busy_until

    @staticmethod
    def rows(mails: list[IncomingMail], now: datetime) -> list[dict[str, Any]]:
        return [row_of(mail, now) for mail in mails]

    def commit(self, rows: list[dict[str, Any]], more: bool = False) -> list[Accepted]:
        """`more`: another batch is queued behind this one (the flag stays up for it)."""
        give_up = time.monotonic() + self._busy_timeout_s
        self._busy_until.value = BUSY
        try:
            while True:
                try:
                    return self._insert.run(rows)
                except (sqlite3.Error, OSError) as exc:
                    if not (_busy(exc) and time.monotonic() < give_up):
                        raise StoreUnavailable(f"inbox commit failed: {type(exc).__name__}") from exc
                time.sleep(RETRY_EVERY_S)
        finally:
            if not more:
                self._busy_until.value = time.monotonic() + QUIET_S

    def close(self) -> None:
        self._engine.dispose()


class DriverInsert:
    """`store.inbox.insert_batch` on the driver's connection: the statements SQLAlchemy compiled
    once, executed by pysqlite itself, which keeps them prepared.

    The listener's whole CPU budget per mail is about a millisecond; SQLAlchemy's execution
    layer (parameter processing, result objects) would take a good part of it per commit.
    Same rows, same transaction semantics, same replies.
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
        assert list(raw.positiontup or ()) == ["inbound_id", "raw"]
        self._raw_sql = str(raw)
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
        first = first_of_each_key(rows)
        ids: dict[str, int] = {}
        for start in range(0, len(first), MAX_ROWS_PER_INSERT):  # one statement for many rows
            part = first[start:start + MAX_ROWS_PER_INSERT]
            params = [fn(row[k]) if fn else row[k] for row in part for k, fn in self._convert]
            ids.update((key, int(new_id)) for new_id, key in conn.execute(self._sql_for(len(part)), params))
        conn.executemany(self._raw_sql, [(ids[row["dedup_key"]], row["raw"]) for row in first
                                         if row["dedup_key"] in ids])
        fresh = set(ids)
        for row in first:
            if row["dedup_key"] not in ids:  # ON CONFLICT DO NOTHING: we have it already
                ids[row["dedup_key"]] = int(conn.execute(self._find_sql, (row["dedup_key"],)).fetchone()[0])
        return accepted_in_order(rows, ids, fresh)

    def _sql_for(self, count: int) -> str:
        """The compiled single-row INSERT with `count` groups of values (VALUES (…), (…), …)."""
        sql = self._many.get(count)
        if sql is None:
            head, rest = self._sql.split(" VALUES ", 1)
            group = rest[:rest.index(")") + 1]
            sql = self._many[count] = f"{head} VALUES {', '.join([group] * count)}{rest[len(group):]}"
        return sql


def smtp_quiet(busy_until: Any) -> bool:
    """No SMTP commit runs or waits, and none came in the last QUIET_S."""
    return time.monotonic() >= busy_until.value


async def smtp_pause(busy_until: Any, max_wait_s: float = MAX_YIELD_S) -> None:
    """In another process on the same SQLite file (the worker, the sender): before each write
    transaction (`Transactor.before_write`), keep out of the way of the inbox writer's commits
    while they come.

    SQLite has one write lock per database. A worker transaction holds it for its whole
    length, and the 250s of every session on the listener wait behind it; a niced worker
    that loses its core while it holds the lock makes them wait longer still. So while SMTP
    commits follow each other (`busy_until`: until QUIET_S after the last one), the worker
    waits: during a burst the cases come a moment later, right after it (its work is the
    same, done later). Bounded: a flood that never pauses slows the worker
    to a transaction per `max_wait_s`, never stops it. It waits on the event loop, a few
    wake-ups per commit, not on the transaction thread (a claim goes on meanwhile).
    """
    give_up = time.monotonic() + max_wait_s
    while (now := time.monotonic()) < (until := busy_until.value) and now < give_up:
        await asyncio.sleep(min(until, give_up) - now if until != BUSY else PAUSE_POLL_S)


def _busy(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text

