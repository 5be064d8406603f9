#!/usr/bin/env python3
"""What a `/metrics` scrape costs on a store with a long history (issue 17, item 6).

    .venv/bin/python bench/metrics.py --n 300000
    .venv/bin/python bench/metrics.py --write-cost 400     # what migration 0007's indexes cost the worker

Fills a fresh SQLite store with N processed mails (a second apart, from three edges) and N sent
notifications, then times: the first scrape of a new `StoreMetrics` (counts the whole history
once), later scrapes with nothing new, later scrapes after 100 more mails, and for comparison
a full recount (the GROUP BYs over every row that a scrape without tallies would run).

`--write-cost N` instead has the inbox worker (parsing inline) make N cases from N mails in a
fresh store with migration 0007's indexes and in one without them, three rounds alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from gateway.metrics import StoreMetrics  # noqa: E402
from store import stats  # noqa: E402
from store.engine import make_engine  # noqa: E402
from store.migrate import upgrade  # noqa: E402

_INSERT_MAIL = ("INSERT INTO inbound_mail (received_at, source, envelope_to, size, sha256, dedup_key, state, "
                "attempts, outcome, processed_at) VALUES (:r, :src, '[]', 1, 'x', :k, 'done', 1, :o, :p)")
_INSERT_SENT = ("INSERT INTO outbox (created_at, event, recipient, recipient_name, language, message_id, context, "
                "state, attempts, next_attempt_at, sent_at) SELECT received_at, 'receipt', 'a@b.example', '', 'da', "
                "'m' || id, '{}', 'sent', 1, received_at, processed_at FROM inbound_mail WHERE id > :after")


def _rows(start: datetime, first: int, n: int) -> list[dict[str, object]]:
    rows = []
    for i in range(first, first + n):
        received = start + timedelta(seconds=i)
        rows.append({"r": received.replace(tzinfo=None).isoformat(sep=" "), "k": f"{i:064d}",
                     "p": (received + timedelta(seconds=random.random() * 3)).replace(tzinfo=None).isoformat(sep=" "),
                     "src": random.choice(["smtp", "imap:kb", "pipe"]), "o": random.choice(["created", "commented"])})
    return rows


async def _add(engine: object, start: datetime, first: int, n: int) -> None:
    async with engine.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(text(_INSERT_MAIL), _rows(start, first, n))
        await conn.execute(text(_INSERT_SENT), {"after": first})


async def _timed(fn: object, times: int) -> list[float]:
    spent = []
    for _ in range(times):
        t = time.perf_counter()
        await fn()  # type: ignore[operator]
        spent.append((time.perf_counter() - t) * 1000)
    return spent


async def main(n: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="gw-bench-metrics-"))
    engine = make_engine(f"sqlite+aiosqlite:///{folder}/bench.db")
    await upgrade(engine)
    start = datetime.now(UTC) - timedelta(seconds=n + 200)
    for first in range(0, n, 50_000):
        await _add(engine, start, first, min(50_000, n - first))
    scraper = StoreMetrics(engine)
    [first_ms] = await _timed(scraper.render, 1)
    idle = await _timed(scraper.render, 10)
    grown = []
    for round_ in range(10):
        await _add(engine, start, n + round_ * 100, 100)
        grown += await _timed(scraper.render, 1)

    async def recount() -> None:
        async with engine.connect() as conn:
            await conn.run_sync(lambda c: (stats.PROCESSED.upto(c, datetime.now(UTC)), stats.RECEIVED.upto(c, 10**12),
                                           stats.SENT.upto(c, datetime.now(UTC)), stats.read_now(c)))

    full = await _timed(recount, 3)
    await engine.dispose()
    print(f"n={n} mails and notifications")
    print(f"first scrape (counts the history):     {first_ms:8.1f} ms")
    print(f"later scrape, nothing new (median):    {statistics.median(idle):8.1f} ms")
    print(f"later scrape, 100 new mails (median):  {statistics.median(grown):8.1f} ms")
    print(f"full recount, every row (median):      {statistics.median(full):8.1f} ms")


_INDEXES_0007 = ("ix_case_updated", "ix_inbound_processed", "ix_outbox_sent", "ix_status_change_system")


async def _worker_run(n: int, with_indexes: bool) -> float:
    from gateway.app import open_app
    from store.inbox import IncomingMail
    from tests.conftest import ADDRESS, build_mail, make_settings

    folder = Path(tempfile.mkdtemp(prefix="gw-bench-write-"))
    settings = make_settings(folder)
    mails = [IncomingMail(build_mail(sender=f"k{i}@borger.example", subject=f"Sag {i}"), "smtp", None, (ADDRESS,))
             for i in range(n)]
    async with open_app(settings, subprocess_parse=False) as app:
        if not with_indexes:
            async with app.engine.begin() as conn:
                for name in _INDEXES_0007:
                    await conn.execute(text(f"DROP INDEX {name}"))
        await app.inbox.accept_many(mails, app.clock.now())
        t = time.perf_counter()
        while await app.worker.run_once():
            pass
        return n / (time.perf_counter() - t)


async def write_cost(n: int) -> None:
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(3):
        for with_indexes in (False, True):
            rates[with_indexes].append(await _worker_run(n, with_indexes))
    for with_indexes, label in ((False, "without 0007's indexes"), (True, "with 0007's indexes")):
        print(f"worker, {label}: {', '.join(f'{r:.0f}' for r in rates[with_indexes])} mails/s "
              f"(median {statistics.median(rates[with_indexes]):.0f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--write-cost", type=int, default=0, metavar="N")
    args = parser.parse_args()
    asyncio.run(write_cost(args.write_cost) if args.write_cost else main(args.n))
