"""Leases in `job_lease`: one node at a time runs a timed job or reads an IMAP account.

A lease is a row (name, holder, until). Taking it succeeds when nobody holds it, when its
time ran out (its node died), or when we hold it already (renewal). Works the same on SQLite
and PostgreSQL: a conditional UPDATE, else an INSERT that loses quietly to a concurrent one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from store.faults import store_errors
from store.models import JobLease

JL = JobLease.__table__  # type: ignore[attr-defined]


class LeaseLost(Exception):
    """Another node took the lease: stop the work it guards."""


def _insert(engine: AsyncEngine) -> Any:
    return (postgresql if engine.dialect.name == "postgresql" else sqlite).insert


class Lease:
    """One row in job_lease: held by us while `until` is in the future and we renew it."""

    def __init__(self, engine: AsyncEngine, name: str, holder: str, now: Callable[[], datetime],
                 ttl_s: float = 30.0) -> None:
        self._engine, self.name, self.holder, self._now, self._ttl = engine, name, holder[:100], now, ttl_s
        self._renewed = 0.0

    async def acquire(self) -> bool:
        now = self._now()
        until = now + timedelta(seconds=self._ttl)
        mine_or_expired = and_(JL.c.name == self.name, or_(JL.c.holder == self.holder, JL.c.until < now))
        with store_errors(f"lease {self.name}"):
            async with self._engine.begin() as conn:
                taken = (await conn.execute(update(JL).where(mine_or_expired)
                                            .values(holder=self.holder, until=until))).rowcount
                if not taken:
                    insert = _insert(self._engine)(JL).values(name=self.name, holder=self.holder, until=until)
                    taken = (await conn.execute(insert.on_conflict_do_nothing(index_elements=["name"]))).rowcount
        if taken:
            self._renewed = time.monotonic()
        return bool(taken)

    async def renew(self) -> None:
        if not await self.acquire():
            raise LeaseLost(self.name)

    async def renew_if_due(self) -> None:
        if time.monotonic() - self._renewed >= self._ttl / 3:
            await self.renew()

    async def release(self) -> None:
        with store_errors(f"lease {self.name}"):
            async with self._engine.begin() as conn:
                await conn.execute(delete(JL).where(JL.c.name == self.name, JL.c.holder == self.holder))
