"""The queues' claims read the rows still due, not every row the queue has had since VACUUM.

On PostgreSQL each version of a row leaves an entry in an index until VACUUM (and this machine's
server runs no autovacuum). The inbox's and the outbox's claims once found the due rows by
bitmap scans of (state, …) indexes, which visit every such entry at every claim: a mail's
pending and processing versions stayed in the claim's way until the next VACUUM. Now a claim
reads `ix_inbound_due` / `ix_outbox_queued` in id order, a plain index scan, which marks the
entries of rows no longer due as dead and skips them from then on (store/models.py: INBOX_DUE).
Measured in heap blocks the claim's transaction fetched (`pg_stat_get_xact_blocks_fetched`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from gateway.app import App
from store.inbox import claim_mails
from store.outbox import claim_due

ROUNDS, PER_ROUND = 40, 100  # 4,000 rows through their states, as the inbox and the sender leave them
FEW_BLOCKS = 80  # a claim of 5 due rows, its UPDATE included: ~40 here; by bitmap scans ~200


def _postgresql_only(app: App) -> None:
    if app.engine.dialect.name != "postgresql":
        pytest.skip("SQLite keeps no entries of a row's earlier versions")


async def _run(app: App, *statements: str) -> None:
    async with app.engine.begin() as conn:
        for sql in statements:
            await conn.execute(text(sql))


_NEW_MAILS = ("INSERT INTO inbound_mail (received_at, source, envelope_to, size, sha256, dedup_key, state, attempts) "
              "SELECT now(), 'test', '[]', 1, 'x', '{tag}-' || g, 'pending', 0 FROM generate_series(1, {n}) g")
_NEW_NOTIFICATIONS = (
    "INSERT INTO outbox (created_at, event, recipient, recipient_name, language, message_id, context, state, "
    "attempts, next_attempt_at) SELECT now(), 'receipt', 'r' || g || '@borger.example', '', 'da', "
    "'<{tag}-' || g || '@gw.example>', '{{}}', 'pending', 0, '{due}' FROM generate_series(1, {n}) g")


async def test_on_postgresql_the_inbox_claim_skips_the_mails_done_since_vacuum(app: App) -> None:
    _postgresql_only(app)
    for r in range(ROUNDS):
        await _run(app, _NEW_MAILS.format(tag=f"done{r}", n=PER_ROUND),
                   "UPDATE inbound_mail SET state = 'processing', claimed_until = now(), claimed_by = 'old', "
                   "attempts = 1 WHERE state = 'pending'",
                   "UPDATE inbound_mail SET state = 'done', outcome = 'created', processed_at = now(), "
                   "claimed_until = NULL WHERE state = 'processing'")

    def claim(session: Any, holder: str) -> tuple[int, int]:
        conn = session.connection()
        fetched = "SELECT pg_stat_get_xact_blocks_fetched('inbound_mail'::regclass)"
        before = conn.exec_driver_sql(fetched).scalar()
        claimed = claim_mails(session, 10, holder, app.clock.now(), 60.0)
        return len(claimed), conn.exec_driver_sql(fetched).scalar() - before

    await _run(app, _NEW_MAILS.format(tag="due1", n=5))
    assert (await app.tx.run_now(claim, "node-a"))[0] == 5  # the first claim after them marks them dead
    await _run(app, _NEW_MAILS.format(tag="due2", n=5))
    claimed, blocks = await app.tx.run_now(claim, "node-a")
    assert claimed == 5
    assert blocks < FEW_BLOCKS, f"the claim fetched {blocks} heap blocks for 5 due mails"


async def test_on_postgresql_the_sender_claim_skips_the_notifications_sent_since_vacuum(app: App) -> None:
    _postgresql_only(app)
    due = (app.clock.now() - timedelta(minutes=1)).isoformat()  # the test's clock stands still
    for r in range(ROUNDS):
        await _run(app, _NEW_NOTIFICATIONS.format(tag=f"sent{r}", n=PER_ROUND, due=due),
                   "UPDATE outbox SET state = 'sending', claimed_until = now(), attempts = 1 WHERE state = 'pending'",
                   "UPDATE outbox SET state = 'sent', sent_at = now(), claimed_until = NULL WHERE state = 'sending'")

    async def claim() -> tuple[int, int]:
        async with app.engine.begin() as conn:
            fetched = text("SELECT pg_stat_get_xact_blocks_fetched('outbox'::regclass)")
            before = (await conn.execute(fetched)).scalar()
            claimed = await claim_due(conn, 10, app.clock.now(), 60.0, "node-a")
            return len(claimed), (await conn.execute(fetched)).scalar() - before

    await _run(app, _NEW_NOTIFICATIONS.format(tag="due1", n=5, due=due))
    assert (await claim())[0] == 5
    await _run(app, _NEW_NOTIFICATIONS.format(tag="due2", n=5, due=due))
    claimed, blocks = await claim()
    assert claimed == 5
    assert blocks < FEW_BLOCKS, f"the claim fetched {blocks} heap blocks for 5 due notifications"
