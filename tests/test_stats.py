"""`/metrics` from the store (store/stats.py): totals that only grow, counted once each however
often it is scraped and in whatever order the rows commit, and each later scrape reading only
what was stamped since, through an index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, update

from gateway.app import App
from gateway.clock import FrozenClock
from gateway.metrics import StoreMetrics
from store import stats
from store.engine import sync_sqlite_engine
from store.inbox import IncomingMail
from store.models import InboundMail
from tests.conftest import ADDRESS, MailBuilder, database_url

T = InboundMail.__table__  # type: ignore[attr-defined]


async def scrape(metrics: StoreMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (await metrics.render()).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def processed(figures: dict, outcome: str) -> float:  # type: ignore[type-arg]
    return figures.get(("gateway_mails_processed_total", (("outcome", outcome),)), 0.0)


async def test_each_mail_is_counted_once_however_late_its_row_commits(app: App, clock: FrozenClock,
                                                                     mail: MailBuilder) -> None:
    metrics = StoreMetrics(app.engine)
    for i in range(3):
        await app.accept(IncomingMail(mail(sender=f"k{i}@borger.example"), "smtp", None, (ADDRESS,)))
        clock.advance(seconds=2)  # two seconds in the queue each
        await app.worker.run_once()
    first = await scrape(metrics)
    assert processed(first, "created") == 3 and await scrape(metrics) == first  # a scrape counts nothing twice
    assert first[("gateway_processing_seconds_bucket", (("le", "2.5"),))] == 3
    assert first[("gateway_processing_seconds_bucket", (("le", "1.0"),))] == 0
    assert first[("gateway_processing_seconds_sum", ())] == pytest.approx(6.0)

    # a worker's transaction that commits after the scrape, its row stamped before the newest
    late = await app.accept(IncomingMail(mail(sender="sen@borger.example"), "smtp", None, (ADDRESS,)))
    async with app.engine.begin() as conn:
        await conn.execute(update(T).where(T.c.id == late.inbound_id).values(
            state="done", outcome="ignored", processed_at=clock.now() - timedelta(seconds=5)))
    second = await scrape(metrics)
    assert processed(second, "ignored") == 1 and processed(second, "created") == 3
    assert second[("gateway_mails_received_total", (("source", "smtp"),))] == 4

    # a mail processed again counts again: the counter is of processings
    await app.inbox.reprocess(late.inbound_id)
    clock.advance(seconds=1)
    await app.worker.run_once()
    third = await scrape(metrics)
    assert processed(third, "ignored") + processed(third, "created") == 5
    assert third[("gateway_processing_seconds_count", ())] == 5
    assert await scrape(metrics) == third


async def test_a_fresh_scraper_counts_the_history_once(app: App, clock: FrozenClock, mail: MailBuilder) -> None:
    """After a restart the first scrape counts everything so far (a counter that does not reset),
    and what a scraper adds up a slice at a time equals that full count."""
    kept = StoreMetrics(app.engine)
    for i in range(4):
        await app.ingest_now(IncomingMail(mail(sender=f"h{i}@borger.example"), "pipe", None, (ADDRESS,)))
        clock.advance(minutes=10)  # older than the settle time: the first read's GROUP BY counts them
        assert processed(await scrape(kept), "created") == i + 1
    await app.ingest_now(IncomingMail(mail(sender="ny@borger.example"), "pipe", None, (ADDRESS,)))
    assert await scrape(kept) == await scrape(StoreMetrics(app.engine))
    assert processed(await scrape(kept), "created") == 5


@pytest.mark.sqlite_only
def test_a_later_scrape_reads_only_the_new_rows_through_an_index(tmp_path: Path) -> None:
    engine = sync_sqlite_engine(database_url(tmp_path), 1000)
    statements: list[tuple[str, Any]] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _k, sql, params, *_: statements.append((sql, params)))
    at = datetime(2026, 1, 5, tzinfo=UTC)
    with engine.connect() as conn:
        stats.PROCESSED.after(conn, at)
        stats.SENT.after(conn, at)
        stats.read_now(conn)
        plans = [" ".join(row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))
                 for sql, params in list(statements)]
    engine.dispose()
    processed, sent, inbox, outbox, failed, closed, _imap = plans
    assert "ix_inbound_processed" in processed and "ix_outbox_sent" in sent, plans
    # the depths count by state: any index that starts with the state will do (ix_outbox_due,
    # or the retention job's ix_outbox_prune_due)
    assert "ix_inbound_claim" in inbox and "INDEX ix_outbox_" in outbox and "INDEX ix_outbox_" in failed, plans
    assert "ix_status_change_system" in closed, plans
