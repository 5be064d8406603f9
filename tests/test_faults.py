"""After a store fault or a restart, every claimed mail is done within seconds, not after a lease.

Issue 24 items 1 and 2. The worker here runs in the test's process on the real store (SQLite
or PostgreSQL) with the default lease of 300 s and a frozen clock: a lease never runs out
during a test, so a claim that is not given back stays stranded and the test fails.

The store outage is a seam passed into the worker (`OutageStore`): the worker's transactor and
inbox, wrapped, raise the driver's own OperationalError ("database is locked") from the chosen
step of the worker's flow on, at every step, until the test says the store is back. The
claim's outage strikes after its transaction committed (the answer lost on its way back, as
when a PostgreSQL connection drops after COMMIT): the worker cannot know what it holds.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import OperationalError

from gateway.app import App, start_node_run
from gateway.apply import handle_all
from gateway.worker import InboxWorker
from store.inbox import IncomingMail, claim_mails
from store.node_run import begin_run
from store.outbox import T as OUTBOX
from tests.conftest import MailBuilder, add_user, worker_of

STEPS = ("claim", "raw_read", "group", "single", "record", "release")


class Outage:
    """The store stops answering when the worker reaches `step`, until `recover`."""

    def __init__(self, step: str) -> None:
        self.step = step
        self.down = False
        self.hits: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.struck = asyncio.Event()
        self.after_claim: Callable[[], None] = lambda: None

    def check(self, step: str) -> None:
        self.hits[step] += 1
        if step == self.step and not self.struck.is_set():
            self.down = True
            self.struck.set()
        if self.down:
            self.failed[step] += 1
            raise OperationalError("(fault injected)", {}, sqlite3.OperationalError("database is locked"))

    def recover(self) -> None:
        self.down = False


class OutageTransactor:
    """The worker's transactor (store.transact.Transactor), failing while the outage lasts."""

    def __init__(self, real: Any, outage: Outage) -> None:
        self._real, self._outage = real, outage

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if fn is handle_all:
            self._outage.check("group" if len(args[1]) > 1 else "single")
        return await self._real.run(fn, *args, **kwargs)

    async def run_now(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._outage.down:
            self._outage.check("claim")
        result = await self._real.run_now(fn, *args, **kwargs)
        if fn is claim_mails and result:
            self._outage.after_claim()
            self._outage.check("claim")  # committed, and then the answer is lost
        return result

    async def read(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self._outage.check("raw_read")
        return await self._real.read(fn, *args, **kwargs)


class OutageInbox:
    """The worker's inbox (store.inbox.Inbox), failing while the outage lasts."""

    def __init__(self, real: Any, outage: Outage) -> None:
        self._real, self._outage = real, outage

    async def failed(self, *args: Any, **kwargs: Any) -> str:
        self._outage.check("record")
        return str(await self._real.failed(*args, **kwargs))

    async def release(self, *args: Any, **kwargs: Any) -> None:
        self._outage.check("release")
        await self._real.release(*args, **kwargs)

    async def release_stranded(self, *args: Any, **kwargs: Any) -> int:
        self._outage.check("give_back")
        return int(await self._real.release_stranded(*args, **kwargs))


def worker_on(app: App, outage: Outage, holder: str) -> InboxWorker:
    return worker_of(app, holder, tx=OutageTransactor(app.tx, outage), inbox=OutageInbox(app.inbox, outage))


async def states(app: App) -> list[tuple[str, str | None, int]]:
    async with app.engine.connect() as conn:
        rows = await conn.execute(text("SELECT state, outcome, attempts FROM inbound_mail ORDER BY id"))
        return [(str(s), o, int(a)) for s, o, a in rows]


async def all_done(app: App, expected: int, timeout: float) -> float:
    """Seconds until every mail is done or quarantined; fails after `timeout`."""
    started = time.monotonic()
    while True:
        rows = await states(app)
        if len(rows) == expected and all(state in ("done", "quarantined") for state, _, _ in rows):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not done {timeout} s after the store came back: {Counter(r[0] for r in rows)}")
        await asyncio.sleep(0.05)


def unusable(mail: MailBuilder) -> bytes:
    """A mail the parser refuses (a header line over the cap): it is quarantined, and that is
    the worker recording a failure."""
    return mail(subject="Ubrugelig").replace(b"Subject:", b"X-Long: " + b"a" * 9000 + b"\nSubject:", 1)


def mails_for(step: str, mail: MailBuilder) -> list[bytes]:
    if step in ("single", "raw_read"):
        return [mail(subject="Alene")]  # one mail: read on its own, applied on its own
    if step == "record":
        return [unusable(mail), mail(subject="Efter den ubrugelige")]
    return [mail(subject=f"Sag {i}") for i in range(12)]


@pytest.mark.parametrize("step", STEPS)
async def test_issue24_item1_a_store_outage_at_any_step_of_the_worker_strands_no_claim(
        app: App, mail: MailBuilder, step: str) -> None:
    """The store fails at `step` and stays down for a second: once it answers again, every
    mail is done within seconds (their lease is 300 s and the clock stands still), and a mail
    the outage cut off has not had a try counted against it."""
    raws = mails_for(step, mail)
    for raw in raws:
        await app.accept(IncomingMail(raw, "test"))
    outage = Outage(step)
    holder = await start_node_run(app.engine, app.settings, app.clock)
    stop = asyncio.Event()
    if step == "release":
        outage.after_claim = stop.set  # a SIGTERM right after the claim: the mails go back unprocessed
    worker = worker_on(app, outage, holder)
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(outage.struck.wait(), 30)
        assert outage.failed[step] >= 1, outage.hits
        await asyncio.sleep(1.0)  # down for a second: every step fails meanwhile
        if step == "release":
            await asyncio.wait_for(running, 30)  # stopped, with the mails stranded
            assert {s for s, _, _ in await states(app)} == {"processing"}
            outage.recover()
            # the node starts again: its earlier run's claims come back at once
            holder = await start_node_run(app.engine, app.settings, app.clock)
            stop = asyncio.Event()
            running = asyncio.create_task(worker_on(app, outage, holder).run(stop))
        else:
            outage.recover()
        took = await all_done(app, len(raws), timeout=5.0)
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
    rows = await states(app)
    expected = [("quarantined", "quarantined") if raw.startswith(b"X-Long") or b"\nX-Long" in raw
                else ("done", "created") for raw in raws]
    assert [(s, o) for s, o, _ in rows] == expected
    assert {a for _, _, a in rows} == {1}, "a try was counted for a store outage"
    assert took < 5.0


# --- item 2: a restarted node takes back its own claims, and only those -----------------------


async def test_issue24_item2_a_restarted_node_takes_back_its_own_claims_and_leaves_the_others(
        app: App, mail: MailBuilder) -> None:
    """Two nodes on one store each hold claims (inbox mails and outbox rows); node A restarts:
    its earlier run's claims are back in the queue at once, their try not counted, node B's
    still wait for their lease. A's new run then makes their cases."""
    await add_user(app, "agent@statens-adm.example", agent=True)
    for i in range(6):
        await app.accept(IncomingMail(mail(subject=f"Node {i}"), "test"))
    a1, _, _ = await begin_run(app.engine, "node-a", app.clock.now())
    b1, _, _ = await begin_run(app.engine, "node-b", app.clock.now())
    assert (a1, b1) == ("node-a:1", "node-b:1")
    held_a = await app.tx.run_now(claim_mails, 3, a1, app.clock.now(), 300)
    held_b = await app.tx.run_now(claim_mails, 3, b1, app.clock.now(), 300)
    await _queue_notifications(app, 4)
    sending_a = await app.outbox.claim(2, app.clock.now(), 300, a1)
    sending_b = await app.outbox.claim(2, app.clock.now(), 300, b1)
    assert len(held_a) == len(held_b) == 3 and len(sending_a) == len(sending_b) == 2

    a2, mails, notices = await begin_run(app.engine, "node-a", app.clock.now())
    assert (a2, mails, notices) == ("node-a:2", 3, 2)
    inbox = await _rows(app, "SELECT id, state, claimed_by, attempts FROM inbound_mail ORDER BY id")
    assert {r[0]: r[1:] for r in inbox} == {
        **{m.id: ("pending", a1, 0) for m in held_a}, **{m.id: ("processing", b1, 1) for m in held_b}}
    outbox = await _rows(app, "SELECT id, state, claimed_by, attempts FROM outbox WHERE state <> 'pending'")
    assert {r[0]: r[1:] for r in outbox} == {d.id: ("sending", b1, 1) for d in sending_b}

    worker = worker_of(app, a2)
    done = await worker.run_once()
    assert sorted(r.inbound_id for r in done) == sorted(m.id for m in held_a)
    # B's claims are B's until their lease runs out
    app.clock.advance(seconds=301)
    assert len(await worker.run_once()) == 3


async def _queue_notifications(app: App, n: int) -> None:
    now = app.clock.now()
    async with app.engine.begin() as conn:
        await conn.execute(insert(OUTBOX), [
            {"created_at": now, "event": "receipt", "recipient": f"r{i}@borger.example", "recipient_name": "",
             "language": "da", "message_id": f"<n{i}@gw.example>", "context": {}, "state": "pending", "attempts": 0,
             "next_attempt_at": now} for i in range(n)])


async def _rows(app: App, sql: str) -> list[tuple[Any, ...]]:
    async with app.engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql))]


async def test_issue24_item2_the_run_number_survives_and_the_node_id_is_stable(app: App) -> None:
    from gateway.app import node_id

    first = await start_node_run(app.engine, app.settings, app.clock)
    second = await start_node_run(app.engine, app.settings, app.clock)
    node = node_id(app.settings)
    assert (first, second) == (f"{node}:1", f"{node}:2")
    assert node == node_id(app.settings) and ":" not in node
    other_dir = app.settings.replace(base_dir="/srv/elsewhere")
    assert node_id(other_dir) != node  # another installation on this host is another node
    named = app.settings.replace(daemon=app.settings.daemon.__class__(node_id="mx1"))
    assert node_id(named) == "mx1"
