"""Timed jobs (rules §3 rule 4, §8, §10): cases in `udfoert` for `policy.close_after_days` are
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
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.clock import Clock
from gateway.datastore import DataStore
from gateway.errors import StoreRejected, StoreUnavailable
from gateway.model import Status
from gateway.retention import run_retention
from gateway.settings import RetentionSettings
from store import cases, portal
from store.engine import Database, Sessions
from store.lease import Lease
from store.transact import Transactor, in_session

log = logging.getLogger("gateway.jobs")


@dataclass(frozen=True)
class JobDesk:
    """What the timed jobs work with, built once by the root (`gateway.app`)."""

    sessions: Sessions
    tx: Transactor
    engine: Database  # for the lease that lets one node at a time run them
    clock: Clock
    close_after_days: int  # `policy.close_after_days`
    interval_s: float  # `daemon.maintenance_interval_s`
    language: str  # `policy.language`
    message_id_domain: str
    send_due: Callable[[], Awaitable[int]]  # one round of the sender: what is due, sent; how many
    retention: RetentionSettings
    data: DataStore  # what the retention jobs delete in, and the WAL they cut


async def close_done_cases(desk: JobDesk, dry_run: bool = False) -> list[dict[str, Any]]:
    """Rule 4: `udfoert` for `policy.close_after_days` → `lukket`, by "system".

    Safe to run twice and on several nodes at once: each case is closed by a conditional UPDATE
    that only one runner can win; the loser changes no row and writes nothing.
    """
    now = desk.clock.now()
    days = desk.close_after_days
    cutoff = now - timedelta(days=days)
    due = await in_session(desk.sessions, cases.done_before, cutoff)
    done = []
    for case_id, number, since in due:
        closed = False if dry_run else await _close_one(desk, case_id, cutoff, now, days)
        if dry_run or closed:
            done.append({"job": "close_done_cases", "case": number, "from": Status.UDFOERT.value,
                         "to": Status.LUKKET.value, "udfoert_since": since.isoformat(), "done": closed})
    return done


async def _close_one(desk: JobDesk, case_id: int, cutoff: datetime, now: datetime, days: int) -> bool:
    closed = await in_session(desk.sessions, cases.close_done, case_id, cutoff, now, days, desk.language,
                              desk.message_id_domain)
    if closed:
        log.info("case.auto_closed", extra={"case_id": case_id})
    return closed


async def run_timed_jobs(desk: JobDesk, dry_run: bool = False, deliver: bool = False) -> list[dict[str, Any]]:
    """Every timed job once. `deliver` also sends the notifications that are due (cron set-ups
    without a running daemon have no sender loop)."""
    actions = await close_done_cases(desk, dry_run)
    if not dry_run and (purged := await desk.tx.run(portal.purge, desk.clock.now())):
        actions.append({"job": "purge_portal", "count": purged, "done": True})
    actions += await run_retention(desk.data, desk.retention, dry_run)
    if deliver and not dry_run:
        sent = 0
        while count := await desk.send_due():
            sent += count
        if sent:
            actions.append({"job": "deliver_notifications", "count": sent, "done": True})
    return actions


async def take_lease(desk: JobDesk, name: str, holder: str, seconds: float) -> bool:
    """One node per interval: take the lease, or renew our own (store/lease.py)."""
    return await Lease(desk.engine, name, holder, desk.clock.now, seconds).acquire()


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def maintenance_loop(desk: JobDesk, stop: asyncio.Event) -> None:
    """The daemon's timed jobs: every `daemon.maintenance_interval_s`, on one node at a time."""
    interval = max(1.0, desk.interval_s)
    holder = _holder()
    while not stop.is_set():
        try:
            if await take_lease(desk, "maintenance", holder, interval):
                actions = await run_timed_jobs(desk)
                if actions:
                    log.info("maintenance.done", extra={"actions": len(actions)})
        except (StoreUnavailable, StoreRejected) as exc:  # the store hiccuped: next time
            # (uncaught, a locked or absent store ended this loop, and with it the whole daemon)
            log.warning("maintenance.store_error", extra={"error": type(exc).__name__})
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
