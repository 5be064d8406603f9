"""The store speaks the project's errors (issue 18): whichever way in, a driver error comes out
of store/ as `StoreUnavailable` (the store does not answer) or `StoreRejected` (it refused the
statement), never as SQLAlchemy's or the driver's own, so nothing above the store catches one.
Against the real store (SQLite, and PostgreSQL where the suite runs there).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.app import App, open_app
from gateway.clock import FrozenClock
from gateway.errors import StoreRejected, StoreUnavailable
from gateway.model import Role, UserKind
from store import stats, users
from store.engine import ping
from store.lease import Lease
from store.transact import in_session, run_in, transaction
from tests.conftest import free_port, make_settings

JENS = "jens@kunde.example"


async def _add(app: App, email: str = JENS) -> None:
    await in_session(app.sessions, users.add, email, "Jens", "Kunde A/S", UserKind.PERSON, Role.CUSTOMER,
                     app.clock.now())


async def _add_in_transaction(app: App) -> None:
    async with transaction(app.sessions) as session:
        await run_in(session, users.add, JENS, "Jens", None, UserKind.PERSON, Role.CUSTOMER, app.clock.now())


async def _add_through_the_transactor(app: App) -> None:
    await app.tx.run(users.add, JENS, "Jens", None, UserKind.PERSON, Role.CUSTOMER, app.clock.now())


WRITES: dict[str, Callable[[App], Awaitable[Any]]] = {
    "in_session": _add,
    "transaction": _add_in_transaction,
    "transactor": _add_through_the_transactor,
    "outbox": lambda app: app.outbox.retry(None, app.clock.now()),
    "inbox": lambda app: app.inbox.reprocess(quarantined=True),
    "lease": lambda app: Lease(app.engine, "maintenance", "node-a", app.clock.now, 30).acquire(),
}


@pytest.mark.parametrize("way", ["in_session", "transaction", "transactor"])
async def test_a_refused_statement_is_store_rejected(app: App, way: str) -> None:
    await _add(app)
    with pytest.raises(StoreRejected, match=r"refused the statement \(IntegrityError\)") as caught:
        await WRITES[way](app)
    assert JENS not in str(caught.value)  # a driver's message can quote the values: not ours


@contextmanager
def locked(app: App) -> Iterator[None]:
    """Another connection holds SQLite's write lock."""
    lock = sqlite3.connect(str(app.engine.url.database), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        lock.execute("ROLLBACK")
        lock.close()


@pytest.mark.sqlite_only
@pytest.mark.parametrize("way", sorted(WRITES))
async def test_a_locked_store_is_store_unavailable(tmp_path: Path, way: str) -> None:
    settings = make_settings(tmp_path, database={"busy_timeout_ms": 50})
    async with open_app(settings, clock=FrozenClock()) as app:
        with locked(app), pytest.raises(StoreUnavailable, match=r"does not answer \(OperationalError\)"):
            await WRITES[way](app)


@pytest.mark.parametrize("read", ["ping", "metrics"])
async def test_a_store_that_is_gone_is_store_unavailable(read: str) -> None:
    """A PostgreSQL server that is not there: nothing listens on the port."""
    gone = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/postgres")
    try:
        with pytest.raises(StoreUnavailable):
            await (ping(gone) if read == "ping" else stats.StoreFigures().read(gone))
    finally:
        await gone.dispose()
