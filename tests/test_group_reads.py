"""One group transaction of several mails (gateway.apply.handle_all) reads what it can for the
whole group at once (store/group.py) and, on PostgreSQL, sends its writes in pipelines
(store/pg/driver.py). The later mails of a group must still see what the earlier ones wrote,
and a lost claim must still roll the whole group back. On SQLite and PostgreSQL alike."""

from __future__ import annotations

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
