"""One group transaction of several mails (gateway.apply.handle_all) reads what it can for the
whole group at once (store/group.py) and, on PostgreSQL, sends its writes in pipelines
(store/pg/driver.py). The later mails of a group must still see what the earlier ones wrote,
and a lost claim must still roll the whole group back. On SQLite and PostgreSQL alike."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import text

from gateway.app import App
from gateway.apply import Steps, handle_all
from gateway.errors import LostClaim
from store.inbox import Claim, IncomingMail, claim_mails
from tests.conftest import ADDRESS, MailBuilder


async def _group(app: App, raws: list[bytes], claims: list[Claim | None] | None = None) -> list[Any]:
    accepted = await app.accept_many([IncomingMail(raw, "test", None, (ADDRESS,)) for raw in raws])
    parsed = [await app.parser.parse(raw, None, (ADDRESS,)) for raw in raws]
    work = [(a.inbound_id, (claims or [None] * len(raws))[i], p) for i, (a, p) in enumerate(zip(accepted, parsed,
                                                                                               strict=True))]
    return await app.tx.run(handle_all, Steps.from_settings(app.settings), work, app.clock.now())


async def _count(app: App, sql: str) -> int:
    async with app.engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar() or 0)


async def test_the_later_mails_of_a_group_see_what_the_earlier_wrote(app: App, mail: MailBuilder) -> None:
    """A new sender opens a case, answers it by Message-ID and names it in a subject, and opens
    another, all in one transaction: one user, two cases, two comments on the first."""
    sender = "ny.afsender@borger.example"
    results = await _group(app, [
        mail(sender=sender, subject="Første", message_id="<g1@borger.example>"),
        mail(sender=sender, subject="Re: Første", in_reply_to="<g1@borger.example>", message_id="<g2@borger.example>"),
        mail(sender=sender, subject="SV: [SAG-000001] Første", message_id="<g3@borger.example>"),
        mail(sender=sender, subject="Noget andet", message_id="<g4@borger.example>"),
    ])
    assert [r.action.value for r in results] == ["created", "commented", "commented", "created"]
    assert [r.case for r in results] == ["SAG-000001", "SAG-000001", "SAG-000001", "SAG-000002"]
    assert await _count(app, f"SELECT count(*) FROM app_user WHERE email = '{sender}'") == 1
    assert await _count(app, "SELECT count(*) FROM comment") == 4
    assert await _count(app, "SELECT count(*) FROM inbound_mail WHERE state = 'done'") == 4
    assert await _count(app, "SELECT count(*) FROM message_index WHERE NOT ours") == 4


async def test_a_lost_claim_rolls_the_whole_group_back(app: App, mail: MailBuilder) -> None:
    """The claim check of the last mail runs on the pipeline's answer, at the commit on
    PostgreSQL: nothing of the group is left."""
    raws = [mail(subject=f"Tabt {i}") for i in range(3)]
    await app.accept_many([IncomingMail(raw, "test", None, (ADDRESS,)) for raw in raws])
    claimed = await app.tx.run_now(claim_mails, 3, "node-a", app.clock.now(), 60.0)
    parsed = [await app.parser.parse(raw, None, (ADDRESS,)) for raw in raws]
    claims = [Claim("node-a", m.attempts) for m in claimed[:2]] + [Claim("node-b", 1)]  # the last one lost
    work = [(m.id, c, p) for m, c, p in zip(claimed, claims, parsed, strict=True)]
    with pytest.raises(LostClaim):
        await app.tx.run(handle_all, Steps.from_settings(app.settings), work, app.clock.now())
    assert await _count(app, "SELECT count(*) FROM support_case") == 0
    assert await _count(app, "SELECT count(*) FROM outbox") == 0
    assert await _count(app, "SELECT count(*) FROM inbound_mail WHERE state = 'processing'") == 3


async def test_a_group_opens_its_cases_without_a_round_trip_each(app: App, mail: MailBuilder,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL the group reserves its cases' ids with its first reads, so a new case is a
    write like the others: eight new cases from one sender are a handful of round trips, not
    one or more each, and rows of one kind that nothing else refers to go in one statement. Their numbers come from the number sequence without a gap, and every
    receipt names its own case's number (taken from the case's row as it is written)."""
    await _group(app, [mail(sender="kendt@borger.example", subject="Først")])  # a known sender
    trips = {"n": 0}
    histories: list[str] = []
    receipts: list[str] = []
    cases: list[str] = []
    if app.engine.dialect.name == "postgresql":
        import psycopg

        execute, pipeline = psycopg.Connection.execute, psycopg.Connection.pipeline
        depth = {"n": 0}

        def counted_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
            trips["n"] += 0 if depth["n"] else 1
            if str(args[0]).startswith("INSERT INTO status_change"):
                histories.append(str(args[0]))
            if str(args[0]).startswith("INSERT INTO outbox"):
                receipts.append(str(args[0]))
            if str(args[0]).startswith("INSERT INTO support_case"):
                cases.append(str(args[0]))
            return execute(self, *args, **kwargs)

        import contextlib

        @contextlib.contextmanager
        def counted_pipeline(self: Any) -> Any:
            trips["n"] += 0 if depth["n"] else 1
            depth["n"] += 1
            try:
                with pipeline(self) as p:
                    yield p
            finally:
                depth["n"] -= 1

        monkeypatch.setattr(psycopg.Connection, "execute", counted_execute)
        monkeypatch.setattr(psycopg.Connection, "pipeline", counted_pipeline)
    results = await _group(app, [mail(sender="kendt@borger.example", subject=f"Sag {i}") for i in range(8)]
                           + [mail(sender="kendt@borger.example", subject="SV: [SAG-000009] Sag 7")])
    assert [r.case for r in results] == [f"SAG-{i:06d}" for i in range(2, 10)] + ["SAG-000009"]
    assert [r.action.value for r in results] == ["created"] * 8 + ["commented"]
    async with app.engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT o.context, c.number FROM outbox o JOIN support_case c ON c.id = o.case_id"))).all()
    contexts = [(json.loads(c) if isinstance(c, str) else c, number) for c, number in rows]  # SQLite: text
    assert len(rows) == 9 and all(context["case_number"] == number for context, number in contexts)
    if app.engine.dialect.name == "postgresql":
        # the group's reads; the last mail's reads of the case it names (the waiting writes first,
        # then the case and its parties); the writes left at the end: none for each case
        assert trips["n"] == 4, trips
        # the eight cases' history rows (rows nothing else waiting refers to): four to an INSERT
        assert len(histories) == 2 and all(h.count("), (") == 3 for h in histories), histories
        # the eight receipts, each numbered from its case's row, four to an INSERT; the reply's none
        assert len(receipts) == 2 and all(r.count("), (") == 3 for r in receipts), receipts
        # the eight cases, numbered in the order they were opened, four to an INSERT
        assert len(cases) == 2 and all(c.count("), (") == 3 for c in cases), cases


async def test_the_sender_is_woken_once_a_group_and_only_for_what_it_can_send(app: App, mail: MailBuilder) -> None:
    """A group's receipts wake the sender once, after its commit; a group whose receipts are all
    held (the sender's daily cap of automatic answers reached) does not wake it at all."""
    import dataclasses

    from tests.conftest import worker_of

    worker = worker_of(app)
    steps = worker._steps
    worker._steps = dataclasses.replace(steps, apply=dataclasses.replace(
        steps.apply, limits=dataclasses.replace(steps.apply.limits, auto_answers_per_day=3)))
    nudges: list[int] = []
    worker.on_processed = lambda: nudges.append(1)

    async def group_of(subjects: list[str]) -> list[Any]:
        raws = [mail(sender="travl@borger.example", subject=s) for s in subjects]
        await app.accept_many([IncomingMail(raw, "test", None, (ADDRESS,)) for raw in raws])
        return await worker.run_once()

    first = await group_of([f"Først {i}" for i in range(3)])
    assert [bool(r.notifications) for r in first] == [True] * 3 and len(nudges) == 1
    held = await group_of([f"Siden {i}" for i in range(3)])
    assert [r.action.value for r in held] == ["created"] * 3 and not any(r.notifications for r in held)
    assert len(nudges) == 1, "the sender was woken for receipts it may not send"
    async with app.engine.connect() as conn:
        states = (await conn.execute(text("SELECT state, count(*) FROM outbox GROUP BY state ORDER BY 1"))).all()
    assert [tuple(s) for s in states] == [("held", 3), ("pending", 3)]
