"""The async engine: SQLite through aiosqlite by default, PostgreSQL through asyncpg.

SQLite runs in WAL mode with synchronous=FULL, so a commit is durable (catalogue 31), with
foreign keys on and a busy timeout; `check_durability` verifies that at start-up. Every
connection has `secure_delete` on: what a transaction deletes or overwrites is zeroed in the
file, not left in free pages, so erased and expired data is gone from the database file once
the WAL is checkpointed (store/sqlite/wal.py: `truncate_wal`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.errors import ConfigError
from store.faults import store_errors

# The store's handles as the rest of the code names them (it never imports SQLAlchemy itself).
Database = AsyncEngine
Sessions = async_sessionmaker[AsyncSession]
OpenSession = AsyncSession  # one session of `Sessions`, inside `store.transact.transaction`


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def resolve_url(url: str, base_dir: str | Path) -> str:
    """Make a relative SQLite path relative to the base directory (nothing is created here:
    only `gateway db upgrade` and `gateway run` make a store, see `store.migrate.prepare`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return url
    path = Path(parsed.database)
    if not path.is_absolute():
        path = Path(base_dir) / path
    return parsed.set(database=str(path)).render_as_string(hide_password=False)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite store; None for PostgreSQL or an in-memory database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database))


def describe(url: str) -> str:
    """Where the store is, for a message: the SQLite file, or the URL without its password."""
    path = sqlite_file(url)
    return str(path) if path is not None else make_url(url).render_as_string(hide_password=True)


def make_engine(url: str, busy_timeout_ms: int = 5000, echo: bool = False) -> AsyncEngine:
    kwargs: dict[str, Any] = {"echo": echo}
    if is_sqlite(url):
        kwargs["connect_args"] = {"timeout": busy_timeout_ms / 1000}
    else:
        kwargs.update(pool_size=10, max_overflow=10)
    engine = create_async_engine(url, **kwargs)
    if is_sqlite(url):
        _sqlite_pragmas(engine, busy_timeout_ms)
    return engine


def _sqlite_pragmas(engine: AsyncEngine | Engine, busy_timeout_ms: int) -> None:
    target = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(target, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()


def sync_sqlite_engine(url: str, busy_timeout_ms: int) -> Engine:
    """A plain pysqlite engine on the same file as the async engine, for one thread's use.

    Same durability (WAL, synchronous=FULL) and foreign keys. Transactions begin the driver's
    way: reads before the first write run outside it, and BEGIN comes with the first write, so
    the write lock is held from there to the commit only. (BEGIN IMMEDIATE would hold it for
    the whole transaction; in the niced worker process that starves the SMTP listener's
    commits.)
    """
    sync_url = make_url(url).set(drivername="sqlite+pysqlite")
    engine = create_engine(sync_url, poolclass=StaticPool,
                           connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000})
    _sqlite_pragmas(engine, busy_timeout_ms)
    return engine


def defer_fsync(engine: Engine) -> None:
    """synchronous=NORMAL on this engine's connections: the inbox worker's own transactions.
    On PostgreSQL the same with `synchronous_commit=off`: a commit's WAL record is flushed by
    the WAL writer or by the next commit that waits for its own flush, which flushes all WAL
    before it; the argument below holds as it is.

    Their commits are written to the WAL without an fsync of their own. They become durable
    with the next commit that has one: every other connection stays synchronous=FULL (the SMTP
    writer's 250s, the sender's claim of a notification before it sends it, the API), and an
    fsync of the WAL file covers every frame written before it. So nothing leaves the gateway
    (a receipt, an answer) while the case it tells of could still be lost, and a power cut can
    only take back outcomes that nobody has seen outside: their mails are still `processing`
    (or, with the claim taken back too, `pending`) in the durable inbox and are processed again.
    A crash of the process loses nothing (SQLite's WAL survives it either way). The fsync is
    a large part of the worker's time on a burst.
    """
    if engine.dialect.name == "postgresql":
        @event.listens_for(engine, "connect")
        def _on_pg_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.autocommit = True  # a SET outside any transaction, for the whole session
            dbapi_conn.execute("SET synchronous_commit TO off")
            dbapi_conn.autocommit = False

        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")  # after _sqlite_pragmas' FULL: listeners run in order

    with engine.connect() as conn:  # the pool's connection, if it was made before
        conn.exec_driver_sql("PRAGMA synchronous=NORMAL")


def sync_pg_engine(url: str, threads: int) -> Engine:
    """A psycopg 3 engine on the same PostgreSQL as the async engine, for the transaction
    threads of `store.transact.Transactor`: a transaction in one hop to a thread, its
    statements there without an event loop or a greenlet in between, and the hot ones run by
    psycopg itself, prepared (store/pg/driver.py). bench/smtp.py and docs/benchmarks.md ("PostgreSQL
    as fast as SQLite") measured it against asyncpg through the async session."""
    from store.pg.driver import install

    engine = create_engine(make_url(url).set(drivername="postgresql+psycopg"), pool_size=threads,
                           max_overflow=threads)
    install(engine)
    return engine


def is_postgresql(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def is_file_sqlite(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")


async def check_durability(engine: AsyncEngine) -> None:
    """Refuse to run when a commit would not survive a power loss."""
    with store_errors("opening the store"):
        await _check_durability(engine)


async def _check_durability(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
            sync = (await conn.execute(text("PRAGMA synchronous"))).scalar()
            if str(journal).lower() not in ("wal", "delete") or int(sync or 0) < 2:
                raise ConfigError(f"SQLite is not durable: journal_mode={journal}, synchronous={sync}")
        elif engine.dialect.name == "postgresql":
            value = (await conn.execute(text("SHOW synchronous_commit"))).scalar()
            if str(value).lower() not in ("on", "remote_write", "remote_apply"):
                raise ConfigError(f"PostgreSQL synchronous_commit={value}: commits are not durable")


async def ping(engine: AsyncEngine) -> None:
    """One round trip to the store; `StoreUnavailable` when it does not answer."""
    with store_errors():
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
