"""Run a store transaction — a plain function over a sync `Session` — in one hop.

The writes of the store (`store.writes`, `store.outbox`, `store.queries`) are synchronous
functions. Through an async session on aiosqlite every statement is a round trip between the
event loop and the driver's thread (a new case is about 140 of them); here:

- SQLite (a file): the whole transaction runs on one thread of ours with its own pysqlite
  connection, one hop per transaction (`store.engine.sync_sqlite_engine`: the write lock is
  taken at the first write, as through aiosqlite).
- PostgreSQL: the same, on a few threads of ours with psycopg 3 connections
  (`store.engine.sync_pg_engine`): asyncpg through the async session's greenlet made every
  statement a trip through the event loop, SQLAlchemy's execution layer and the greenlet.
- In-memory SQLite: the function runs in the async session's greenlet (`AsyncSession.run_sync`).

The function must not await and must not keep ORM objects past the transaction; it returns
plain values.

The use-cases of agents and customers (`gateway.lifecycle`, the API's reads, the CLI) run on
the async engine's own sessions instead, beside the transactor's thread: `in_session` for one
store function, `transaction` for several that share a transaction (`run_in`). Every way in
here raises the project's own errors, never the driver's (`store.faults.store_errors`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from store.engine import (
    OpenSession,
    Sessions,
    is_file_sqlite,
    is_postgresql,
    sync_pg_engine,
    sync_sqlite_engine,
)
from store.faults import store_errors

P = ParamSpec("P")
PG_THREADS = 4  # PostgreSQL transactions of one process at once (the HTTP API's run side by side)
R = TypeVar("R")

# What a store function receives, as the callers that hand one over name it.
TxSession = Session  # `Transactor.run`, `in_session`, `run_in`: a sync ORM session in a transaction
ReadConnection = Connection  # `Transactor.read`: a Core connection, for reads only


class Transactor:
    def __init__(self, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession],
                 busy_timeout_ms: int = 5000, before_write: Callable[[], Awaitable[None]] | None = None) -> None:
        self._sessions = sessions
        self._engine = engine
        url = engine.url.render_as_string(hide_password=False)
        self.sync_engine: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._read_engine: Engine | None = None
        self._read_thread: ThreadPoolExecutor | None = None
        self._tx_engine: Engine | None = None  # where `run` runs: SQLite's file or PostgreSQL via psycopg
        if is_file_sqlite(url):
            self.sync_engine = self._tx_engine = sync_sqlite_engine(url, busy_timeout_ms)
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-tx")
            # Reads have a connection and a thread of their own: never queued behind a write
            # transaction that waits for SQLite's lock or for the SMTP commits to pause.
            self._read_engine = sync_sqlite_engine(url, busy_timeout_ms)
            self._read_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-read")
        elif is_postgresql(url):
            self._tx_engine = sync_pg_engine(url, PG_THREADS)
            self._thread = ThreadPoolExecutor(max_workers=PG_THREADS, thread_name_prefix="store-tx")
        # Awaited before each `run` (not `run_now`): in the worker and sender processes, until the
        # SMTP commits pause (store.sqlite.writer.smtp_pause). It waits on the event loop, not on
        # the transaction thread, so a `run_now` (a claim) is never queued behind the wait.
        self.before_write = before_write

    async def run(self, fn: Callable[Concatenate[Session, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`fn(session, *args, **kwargs)` in one transaction: committed when it returns,
        rolled back when it raises."""
        if self.before_write is not None:
            await self.before_write()
        return await self.run_now(fn, *args, **kwargs)

    async def run_now(self, fn: Callable[Concatenate[Session, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`run` without `before_write`: for a short transaction the others depend on (the
        worker's claims). On SQLite it takes its turn on the same thread as every other write
        of this process, so the two never wait on each other's lock."""
        with store_errors():
            if self._thread is None:
                async with self._sessions() as session, session.begin():
                    return await session.run_sync(fn, *args, **kwargs)  # type: ignore[arg-type]
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._thread,
                                              lambda: self._run_here(self._tx_engine, fn, args, kwargs))

    async def read(self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`fn(connection, …)` for reads only: a Core connection, no ORM session, and it never
        waits for SMTP commits (`before_write`): in WAL mode a reader takes no write lock. On
        SQLite it runs on a thread and connection
        of its own, beside a write transaction in progress."""
        with store_errors():
            if self._read_thread is None:
                async with self._engine.connect() as conn:
                    return await conn.run_sync(fn, *args, **kwargs)
            return await asyncio.get_running_loop().run_in_executor(self._read_thread, self._read_here, fn, args,
                                                                    kwargs)

    def _read_here(self, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        assert self._read_engine is not None
        with self._read_engine.connect() as conn:
            return fn(conn, *args, **kwargs)

    @property
    def pg_engine(self) -> Engine | None:
        """The psycopg engine of the transaction threads on PostgreSQL (None elsewhere)."""
        return self._tx_engine if self.sync_engine is None else None

    @staticmethod
    def _run_here(engine: Engine | None, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            return fn(session, *args, **kwargs)

    def close(self) -> None:
        for thread in (self._thread, self._read_thread):
            if thread is not None:
                thread.shutdown(wait=True)
        for engine in (self._tx_engine, self._read_engine):
            if engine is not None:
                engine.dispose()


async def in_session(sessions: Sessions, fn: Callable[Concatenate[Session, P], R], *args: P.args,
                     **kwargs: P.kwargs) -> R:
    """`fn(sync_session, …)` in one transaction of a new session: committed when it returns,
    rolled back when it raises."""
    with store_errors():
        async with sessions() as session, session.begin():
            return await session.run_sync(fn, *args, **kwargs)  # type: ignore[arg-type]


@asynccontextmanager
async def transaction(sessions: Sessions) -> AsyncIterator[OpenSession]:
    """One transaction that several store functions share (`run_in`): committed when the block
    ends, rolled back when it raises; the commit's driver errors translated too."""
    with store_errors():
        async with sessions() as session, session.begin():
            yield session


async def run_in(session: AsyncSession, fn: Callable[Concatenate[Session, P], R], *args: P.args,
                 **kwargs: P.kwargs) -> R:
    """`fn(sync_session, …)` inside an async session's open transaction (its greenlet).

    SQLModel's async session hands `fn` SQLModel's own sync `Session` (with `exec`);
    SQLAlchemy's annotation only knows its base class."""
    with store_errors():
        return await session.run_sync(fn, *args, **kwargs)  # type: ignore[arg-type]
