"""Prometheus metrics, all named `gateway_*`, in one registry of our own (SPEC §8).

Counters and the latency histogram are incremented where things happen, through the small
`record_*` functions below; the depths and the IMAP fetch times are read from the store when
`/metrics` is scraped, so every node reports what the shared store holds right now.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: N811 - re-exported
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select

from store.models import ImapFolderState, InboundMail

if TYPE_CHECKING:
    from gateway.app import App

REGISTRY = CollectorRegistry(auto_describe=True)

MAILS_RECEIVED = Counter("gateway_mails_received", "Mails committed to the inbox, by ingestion path.",
                         ["source"], registry=REGISTRY)
MAILS_PROCESSED = Counter("gateway_mails_processed", "Inbound mails processed, by outcome.",
                          ["outcome"], registry=REGISTRY)
MAILS_QUARANTINED = Counter("gateway_mails_quarantined", "Inbound mails set aside for an operator.",
                            registry=REGISTRY)
NOTIFICATIONS_SENT = Counter("gateway_notifications_sent", "Notifications handed to the relay, by event.",
                             ["event"], registry=REGISTRY)
NOTIFICATIONS_FAILED = Counter("gateway_notifications_failed", "Notifications given up on, by event.",
                               ["event"], registry=REGISTRY)
CASE_ACTIONS = Counter("gateway_case_actions", "Agent and requester actions on cases (CLI and API).",
                       ["action"], registry=REGISTRY)
CASES_AUTO_CLOSED = Counter("gateway_cases_auto_closed", "Cases closed by the timed job.", registry=REGISTRY)
PROCESSING_SECONDS = Histogram("gateway_processing_seconds", "Time to process one inbound mail.",
                               registry=REGISTRY,
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
INBOX_DEPTH = Gauge("gateway_inbox_depth", "Inbound mails by state.", ["state"], registry=REGISTRY)
OUTBOX_DEPTH = Gauge("gateway_outbox_depth", "Notifications by state.", ["state"], registry=REGISTRY)
# The worker and the sender may run in child processes whose counters this process cannot see;
# these totals come from the store on every scrape, whichever process did the work.
INBOX_OUTCOMES = Gauge("gateway_inbox_outcomes", "Inbound mails ever processed, by recorded outcome (from the store).",
                       ["outcome"], registry=REGISTRY)
IMAP_LAST_FETCH = Gauge("gateway_imap_last_fetch_timestamp_seconds",
                        "Unix time of the last successful fetch, by IMAP account and folder.",
                        ["account", "folder"], registry=REGISTRY)

_INBOX_STATES = ("pending", "processing", "done", "quarantined")
_OUTBOX_STATES = ("pending", "sending", "sent", "failed", "held")

__all__ = ["CONTENT_TYPE", "REGISTRY", "record_received", "record_outcome", "record_notification", "render"]


def record_received(source: str, count: int = 1) -> None:
    """One or more mails committed to the inbox (`source`: smtp, imap:<account>, pipe…)."""
    MAILS_RECEIVED.labels(source=source.split(":", 1)[0]).inc(count)


def record_outcome(outcome: str, seconds: float) -> None:
    """One inbound mail processed: the worker calls this once per mail."""
    MAILS_PROCESSED.labels(outcome=outcome).inc()
    PROCESSING_SECONDS.observe(max(0.0, seconds))
    if outcome == "quarantined":
        MAILS_QUARANTINED.inc()


def record_notification(event: str, sent: bool) -> None:
    (NOTIFICATIONS_SENT if sent else NOTIFICATIONS_FAILED).labels(event=event).inc()


def record_action(action: str) -> None:
    CASE_ACTIONS.labels(action=action).inc()


async def refresh_from_store(app: App) -> None:
    """Set the gauges from the store just before a scrape."""
    inbox = await app.inbox.depth()
    outbox = await app.outbox.depth()
    for state in {*_INBOX_STATES, *inbox}:
        INBOX_DEPTH.labels(state=state).set(inbox.get(state, 0))
    for state in {*_OUTBOX_STATES, *outbox}:
        OUTBOX_DEPTH.labels(state=state).set(outbox.get(state, 0))
    async with app.engine.connect() as conn:
        inbound = InboundMail.__table__  # type: ignore[attr-defined]
        outcomes = (await conn.execute(select(inbound.c.outcome, func.count())  # type: ignore[call-overload]
                                       .where(inbound.c.outcome.is_not(None)).group_by(inbound.c.outcome))).all()
        for outcome, count in outcomes:
            INBOX_OUTCOMES.labels(outcome=outcome).set(count)
        rows = (await conn.execute(select(ImapFolderState.account, ImapFolderState.folder,  # type: ignore[call-overload]
                                          ImapFolderState.last_fetch_at))).all()
    for account, folder, at in rows:
        if at is not None:
            IMAP_LAST_FETCH.labels(account=account, folder=folder).set(at.timestamp())


async def render(app: App) -> bytes:
    await refresh_from_store(app)
    return generate_latest(REGISTRY)
