"""The figures `/metrics` reports, read from the store when it is scraped (gateway/metrics.py
says why the store and not the processes' own counters).

Totals that only grow (mails received, mails processed and their times, notifications sent)
are kept by a `Tally`: its first read counts the table with one GROUP BY, every later read
only the rows stamped since, so a scrape costs what arrived since the last one, not the whole
history. The
states of now (queue depths, failed notifications, timed closes, IMAP fetch times) are counted
each time over indexes that hold only those rows or only the state (migration 0007).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, literal, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from store.faults import store_errors
from store.models import ImapFolderState, InboundMail, Outbox, StatusChange

_IN = InboundMail.__table__  # type: ignore[attr-defined]
_OUT = Outbox.__table__  # type: ignore[attr-defined]
_SC = StatusChange.__table__  # type: ignore[attr-defined]
_IMAP = ImapFolderState.__table__  # type: ignore[attr-defined]

# Upper bounds of the processing-time buckets, seconds (the last, +Inf, is implied).
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)

# How long before its commit a row may be stamped (a worker's transaction of eight mails, a
# SQLite busy wait), and how many ids may be handed out before an earlier one commits (a
# PostgreSQL sequence): rows that late are still counted, once.
SETTLE_TIME = timedelta(seconds=30)
SETTLE_IDS = 2000

Key = tuple[str, ...]
Row = tuple[int, Any, Key, float]  # (id, stamp, key, seconds)


@dataclass(frozen=True)
class Stream:
    """Rows of one table that, once stamped, are never changed: how to read them by stamp."""

    newest: Callable[[Connection], Any]  # the highest stamp now (None: no rows)
    upto: Callable[[Connection, Any], dict[Key, tuple[int, float]]]  # totals of the rows stamped ≤ a stamp
    after: Callable[[Connection, Any], list[Row]]  # the rows stamped > a stamp
    settle: Any


@dataclass
class Tally:
    """Totals by key of a `Stream`, read a slice at a time (a counter that only grows)."""

    stream: Stream
    counts: dict[Key, list[float]] = field(default_factory=dict)  # key → [count, seconds]
    floor: Any = None  # every row stamped ≤ floor is counted
    seen: dict[tuple[int, Any], Any] = field(default_factory=dict)  # rows above the floor counted already

    def read(self, conn: Connection) -> None:
        if self.floor is None:
            newest = self.stream.newest(conn)
            if newest is None:
                return
            self.floor = newest - self.stream.settle
            for key, (count, seconds) in self.stream.upto(conn, self.floor).items():
                self._add(key, count, seconds)
        for id_, stamp, key, seconds in self.stream.after(conn, self.floor):
            if (id_, stamp) not in self.seen:
                self.seen[(id_, stamp)] = stamp
                self._add(key, 1, seconds)
        if self.seen:
            self.floor = max(self.floor, max(self.seen.values()) - self.stream.settle)
            self.seen = {row: stamp for row, stamp in self.seen.items() if stamp > self.floor}

    def _add(self, key: Key, count: int, seconds: float) -> None:
        total = self.counts.setdefault(key, [0, 0.0])
        total[0] += count
        total[1] += seconds


def bucket_of(seconds: float) -> int:
    return next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))


# --- the streams ---------------------------------------------------------------------------


def _received_newest(conn: Connection) -> Any:
    return conn.execute(select(func.max(_IN.c.id))).scalar()


def _received_upto(conn: Connection, floor: int) -> dict[Key, tuple[int, float]]:
    rows = conn.execute(select(_IN.c.source, func.count()).where(_IN.c.id <= floor).group_by(_IN.c.source))
    totals: dict[Key, tuple[int, float]] = {}
    for source, count in rows:
        key = (_edge(source),)
        totals[key] = (totals.get(key, (0, 0.0))[0] + int(count), 0.0)
    return totals


def _received_after(conn: Connection, floor: int) -> list[Row]:
    rows = conn.execute(select(_IN.c.id, _IN.c.source).where(_IN.c.id > floor))
    return [(id_, id_, (_edge(source),), 0.0) for id_, source in rows]


def _edge(source: str) -> str:
    return str(source).split(":", 1)[0]  # imap:<account> → imap


def _processed_newest(conn: Connection) -> Any:
    return conn.execute(select(func.max(_IN.c.processed_at)).where(_IN.c.processed_at.is_not(None))).scalar()


def _seconds(dialect: str) -> Any:
    """processed_at − received_at in seconds, in the dialect's own date arithmetic."""
    if dialect == "sqlite":
        return (func.julianday(_IN.c.processed_at) - func.julianday(_IN.c.received_at)) * 86400.0
    return func.extract("epoch", _IN.c.processed_at - _IN.c.received_at)


def _processed_upto(conn: Connection, floor: datetime) -> dict[Key, tuple[int, float]]:
    # Materialised, so that the subtraction is computed once a row and not in every CASE branch
    # (SQLite inlines a plain subquery: 0.5 s instead of 0.2 s for 300,000 rows).
    times = (select(_IN.c.outcome.label("outcome"), _seconds(conn.dialect.name).label("s"))
             .where(_IN.c.processed_at.is_not(None), _IN.c.processed_at <= floor)
             .cte("times").prefix_with("MATERIALIZED"))
    bucket = case(*((times.c.s <= bound, literal(i)) for i, bound in enumerate(BUCKETS)), else_=literal(len(BUCKETS)))
    rows = conn.execute(select(times.c.outcome, bucket, func.count(), func.sum(times.c.s))
                        .group_by(times.c.outcome, bucket))
    return {(str(outcome), str(index)): (int(count), max(0.0, float(total or 0)))
            for outcome, index, count, total in rows}


def _processed_after(conn: Connection, floor: datetime) -> list[Row]:
    rows = conn.execute(select(_IN.c.id, _IN.c.processed_at, _IN.c.outcome, _IN.c.received_at)
                        .where(_IN.c.processed_at.is_not(None), _IN.c.processed_at > floor))
    out: list[Row] = []
    for id_, at, outcome, received in rows:
        seconds = max(0.0, (at - received).total_seconds())
        out.append((id_, at, (str(outcome), str(bucket_of(seconds))), seconds))
    return out


def _sent_newest(conn: Connection) -> Any:
    return conn.execute(select(func.max(_OUT.c.sent_at)).where(_OUT.c.sent_at.is_not(None))).scalar()


def _sent_upto(conn: Connection, floor: datetime) -> dict[Key, tuple[int, float]]:
    rows = conn.execute(select(_OUT.c.event, func.count()).where(_OUT.c.sent_at.is_not(None), _OUT.c.sent_at <= floor)
                        .group_by(_OUT.c.event))
    return {(str(event),): (int(count), 0.0) for event, count in rows}


def _sent_after(conn: Connection, floor: datetime) -> list[Row]:
    rows = conn.execute(select(_OUT.c.id, _OUT.c.sent_at, _OUT.c.event)
                        .where(_OUT.c.sent_at.is_not(None), _OUT.c.sent_at > floor))
    return [(id_, at, (str(event),), 0.0) for id_, at, event in rows]


RECEIVED = Stream(_received_newest, _received_upto, _received_after, SETTLE_IDS)  # key: (edge,)
PROCESSED = Stream(_processed_newest, _processed_upto, _processed_after, SETTLE_TIME)  # key: (outcome, bucket)
SENT = Stream(_sent_newest, _sent_upto, _sent_after, SETTLE_TIME)  # key: (event,)


# --- one scrape ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Now:
    """What the store holds right now."""

    inbox: dict[str, int]  # state (INBOX_QUEUED) → mails
    outbox: dict[str, int]  # state (OUTBOX_QUEUED) → notifications
    failed: dict[str, int]  # event → notifications given up on
    auto_closed: int
    imap_fetched: dict[tuple[str, str], datetime]  # (account, folder) → last fetch


# The queues' states; the final ones (done, sent) are the tallies above. Counting only these
# reads only the mails and notifications still in the queue, through the state indexes.
INBOX_QUEUED = ("pending", "processing", "quarantined")
OUTBOX_QUEUED = ("pending", "sending", "failed", "held")


def read_now(conn: Connection) -> Now:
    inbox = conn.execute(select(_IN.c.state, func.count()).where(_IN.c.state.in_(INBOX_QUEUED))
                         .group_by(_IN.c.state))
    outbox = conn.execute(select(_OUT.c.state, func.count()).where(_OUT.c.state.in_(OUTBOX_QUEUED))
                          .group_by(_OUT.c.state))
    failed = conn.execute(select(_OUT.c.event, func.count()).where(_OUT.c.state == "failed").group_by(_OUT.c.event))
    # "system" is store.cases.SYSTEM: only the timed job closes a case as the system
    closed = conn.execute(select(func.count()).where(_SC.c.by_label == "system", _SC.c.to_status == "lukket"))
    fetched = conn.execute(select(_IMAP.c.account, _IMAP.c.folder, _IMAP.c.last_fetch_at)
                           .where(_IMAP.c.last_fetch_at.is_not(None)))
    return Now({str(s): int(n) for s, n in inbox}, {str(s): int(n) for s, n in outbox},
               {str(e): int(n) for e, n in failed}, int(closed.scalar() or 0),
               {(str(a), str(f)): at for a, f, at in fetched})


@dataclass
class StoreFigures:
    """The tallies of one store, kept between scrapes, and what it holds now."""

    received: Tally = field(default_factory=lambda: Tally(RECEIVED))
    processed: Tally = field(default_factory=lambda: Tally(PROCESSED))
    sent: Tally = field(default_factory=lambda: Tally(SENT))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # two scrapes at once must not count twice

    def _read(self, conn: Connection) -> Now:
        for tally in (self.received, self.processed, self.sent):
            tally.read(conn)
        return read_now(conn)

    async def read(self, engine: AsyncEngine) -> Now:
        with store_errors("metrics"):
            async with self.lock, engine.connect() as conn:
                return await conn.run_sync(self._read)
