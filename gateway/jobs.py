"""Timed jobs (SPEC §3 rule 4, §8, §10): cases in `udfoert` for `policy.close_after_days` are
closed by "system"; the portal's ended sessions, old links and quiet attempt counters go; then
the retention periods are enforced (gateway/retention.py). The daemon runs them every
`daemon.maintenance_interval_s` on one node at a time (`maintenance_loop`, under a lease);
`gateway maintenance` runs them once, for cron.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import col, select

from gateway.clock import FrozenClock, SystemClock
from gateway.errors import StoreUnavailable
from gateway.lifecycle import SYSTEM, InvalidInput
from gateway.model import Event, Status
from gateway.retention import run_retention
from gateway.settings import Settings
from store import outbox, portal
from store.lease import Lease
from store.models import StatusChange, SupportCase
from store.transact import run_in

if TYPE_CHECKING:
    from gateway.app import App

log = logging.getLogger("gateway.jobs")


async def close_done_cases(app: App, dry_run: bool = False) -> list[dict[str, Any]]:
    """Rule 4: `udfoert` for `policy.close_after_days` → `lukket`, by "system".

    Safe to run twice and on several nodes at once: each case is closed by a conditional UPDATE
    that only one runner can win; the loser changes no row and writes nothing.
    """
    now = app.clock.now()
    days = app.settings.policy.close_after_days
    cutoff = now - timedelta(days=days)
    async with app.sessions() as session:
        due = (await session.exec(select(SupportCase.id, SupportCase.number, SupportCase.status_changed_at).where(
            SupportCase.status == Status.UDFOERT.value, col(SupportCase.status_changed_at) < cutoff,
        ).order_by(col(SupportCase.id)))).all()
    done = []
    for case_id, number, since in due:
        assert case_id is not None
        closed = False if dry_run else await _close_one(app, case_id, cutoff, now, days)
        if dry_run or closed:
            done.append({"job": "close_done_cases", "case": number, "from": Status.UDFOERT.value,
                         "to": Status.LUKKET.value, "udfoert_since": since.isoformat(), "done": closed})
    return done


async def _close_one(app: App, case_id: int, cutoff: datetime, now: datetime, days: int) -> bool:
    async with app.sessions() as session, session.begin():
        won = await session.exec(update(SupportCase).where(  # type: ignore[call-overload]
            col(SupportCase.id) == case_id, col(SupportCase.status) == Status.UDFOERT.value,
            col(SupportCase.status_changed_at) < cutoff,
        ).values(status=Status.LUKKET.value, updated_at=now, status_changed_at=now))
        if won.rowcount != 1:
            return False
        session.add(StatusChange(case_id=case_id, at=now, by_id=None, by_label=SYSTEM,
                                 from_status=Status.UDFOERT.value, to_status=Status.LUKKET.value,
                                 reason=f"{days} days in udfoert"))
        case = await session.get(SupportCase, case_id)
        assert case is not None
        recipients = await run_in(session, outbox.recipients_for, case, None, app.settings.policy.language)
        await run_in(session, outbox.enqueue, case, Event.STATUS, recipients, now, app.settings.mail.message_id_domain,
                             {"previous_status": Status.UDFOERT.value, "actor_name": ""})
    log.info("case.auto_closed", extra={"case_id": case_id})
    return True


async def run_timed_jobs(app: App, dry_run: bool = False, deliver: bool = False) -> list[dict[str, Any]]:
    """Every timed job once. `deliver` also sends the notifications that are due (cron set-ups
    without a running daemon have no sender loop)."""
    actions = await close_done_cases(app, dry_run)
    if not dry_run and (purged := await app.tx.run(portal.purge, app.clock.now())):
        actions.append({"job": "purge_portal", "count": purged, "done": True})
    actions += await run_retention(app.data_store(), app.settings.retention, dry_run)
    if deliver and not dry_run:
        app.sender.wakeup.clear()
        sent = 0
        while count := await app.sender.run_once():
            sent += count
        if sent:
            actions.append({"job": "deliver_notifications", "count": sent, "done": True})
    return actions


async def take_lease(app: App, name: str, holder: str, seconds: float) -> bool:
    """One node per interval: take the lease, or renew our own (store/lease.py)."""
    return await Lease(app.engine, name, holder, app.clock.now, seconds).acquire()


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def maintenance_loop(app: App, stop: asyncio.Event) -> None:
    """The daemon's timed jobs: every `daemon.maintenance_interval_s`, on one node at a time."""
    interval = max(1.0, app.settings.daemon.maintenance_interval_s)
    holder = _holder()
    while not stop.is_set():
        try:
            if await take_lease(app, "maintenance", holder, interval):
                actions = await run_timed_jobs(app)
                if actions:
                    log.info("maintenance.done", extra={"actions": len(actions)})
        except (OperationalError, DBAPIError, OSError, StoreUnavailable) as exc:  # the store hiccuped: next time
            # (the lease reports a locked or absent store as StoreUnavailable: uncaught, it ended
            # this loop, and with it the whole daemon)
            log.warning("maintenance.store_error", extra={"error": type(exc).__name__})
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def parse_at(value: str, option: str = "--at") -> datetime:
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(f"{option}: not an ISO 8601 time: {value!r}") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


async def run_maintenance_cli(settings: Settings, at: str | None, dry_run: bool) -> list[dict[str, Any]]:
    """`gateway maintenance [--at ISO-TIME] [--dry-run]`, for cron (SPEC §8)."""
    from gateway.app import open_app

    clock = FrozenClock(parse_at(at)) if at else SystemClock()
    async with open_app(settings, clock=clock, subprocess_parse=False) as app:
        return await run_timed_jobs(app, dry_run=dry_run, deliver=True)
