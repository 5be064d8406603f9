"""The retention jobs (rules §10, GDPR art. 5(1)(e)): personal data is kept no longer than
`[retention]` says. Run by the daemon's timed jobs (gateway/jobs.py, once across nodes under
the maintenance lease) and by `gateway maintenance` (`--dry-run` lists what would go).

The jobs, in order (each a period in days; 0 turns it off):

    closed_case_days      a closed case → its skeleton: number, dates, statuses, the case it
                          follows. Comments, attachments, parties, names, subjects, its mails'
                          raw bytes and what was read from them, its notifications' contents go.
    raw_mail_days         the raw bytes of a closed case's mails (the comments stay).
    set_aside_mail_days   quarantined, ignored and rejected mail: raw bytes and what was read.
    sent_mail_days        what a sent notification said (subject, names, a reason).

Then the attachment files no row names any longer (`sweep_blobs`). Each item is done by one
runner only, however many run at once (store/retention.py), and every run that deleted
something leaves one audit row (actor "system").
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from gateway.datastore import DataStore
from gateway.settings import RetentionSettings
from store import audit
from store import retention as store
from store.lease import Lease

log = logging.getLogger("gateway.retention")

PAGE = 100
# A temporary blob file (`.tmp-` of a `put`, `.gc-` of a sweep's set-aside) lives milliseconds;
# one this much older in real time is a crash's leftover. Real time, not the run's cut-off: a
# `maintenance --at` in the future must not take another process's file in progress.
LEFTOVER_S = 3600.0
Action = dict[str, Any]


@dataclass
class Run:
    """One run of the jobs: what it did, and the blobs whose last row it may have removed."""

    data: DataStore
    now: datetime
    dry_run: bool
    actions: list[Action]
    released: set[str]
    skeletons: set[int]  # cases made skeletons in this run (a dry run's raw-mail list leaves them out)


JobFn = Callable[[Run, datetime], Awaitable[None]]


async def anonymise_closed_cases(run: Run, cutoff: datetime) -> None:
    async for case_id, number, closed in _pages(run, store.closed_cases_due, "anonymised_at", cutoff):
        done = None if run.dry_run else await run.data.tx.run(store.anonymise_case, case_id, run.now)
        if run.dry_run or done is not None:
            removed, shas = done if done is not None else ({}, [])
            run.released.update(shas)
            run.skeletons.add(case_id)
            run.actions.append({"job": "closed_cases", "case": number, "closed_at": closed.isoformat(),
                                **removed, "done": done is not None})


async def delete_raw_mail(run: Run, cutoff: datetime) -> None:
    async for case_id, number, closed in _pages(run, store.closed_cases_due, "raw_deleted_at", cutoff):
        ids = None if run.dry_run else await run.data.tx.run(store.delete_case_raw, case_id, run.now)
        if (run.dry_run and case_id not in run.skeletons) or ids is not None:
            run.actions.append({"job": "raw_mail", "case": number, "closed_at": closed.isoformat(),
                                "inbound_ids": ids or [], "done": ids is not None})


async def expire_set_aside_mail(run: Run, cutoff: datetime) -> None:
    await _batched(run, store.set_aside_due, store.expire_set_aside, cutoff, "set_aside_mail", "inbound_id")


async def prune_sent_mail(run: Run, cutoff: datetime) -> None:
    await _batched(run, store.sent_due, lambda s, ids: store.prune_sent(s, ids, run.now), cutoff,
                   "sent_mail", "outbox_id")


# In this order: a case reduced to its skeleton needs no raw-mail job of its own.
JOBS: tuple[tuple[str, JobFn], ...] = (
    ("closed_case_days", anonymise_closed_cases),
    ("raw_mail_days", delete_raw_mail),
    ("set_aside_mail_days", expire_set_aside_mail),
    ("sent_mail_days", prune_sent_mail),
)


async def run_retention(data: DataStore, cfg: RetentionSettings, dry_run: bool = False) -> list[Action]:
    now = data.clock.now()
    run = Run(data, now, dry_run, [], set(), set())
    for key, job in JOBS:
        days = getattr(cfg, key)
        if days > 0:
            before = len(run.actions)
            await job(run, now - timedelta(days=days))
            log.debug("retention.job", extra={"job": job.__name__, "days": days, "items": len(run.actions) - before,
                                              "dry_run": dry_run})
    cutoff = time.time() - cfg.blob_grace_s
    run.actions += await sweep_blobs(data, sorted(run.released), cutoff, dry_run)
    if await _full_sweep_due(data, cfg, dry_run):
        run.actions += await sweep_blobs(data, None, cutoff, dry_run)
    if not dry_run and run.actions:
        await _record(data, now, run.actions)
    return run.actions


async def _record(data: DataStore, now: datetime, actions: list[Action]) -> None:
    counts: dict[str, int] = {}
    for action in actions:
        counts[action["job"]] = counts.get(action["job"], 0) + 1
    await data.tx.run(audit.record, now, "system", "retention", None, "retention periods ([retention])", counts)
    wal = await data.cut_wal(patient=False)
    log.info("retention.done", extra={"counts": counts, "wal_truncated": wal})


async def _full_sweep_due(data: DataStore, cfg: RetentionSettings, dry_run: bool) -> bool:
    """The whole attachment folder is walked once per `blob_sweep_hours` across every node
    (a lease nobody renews: taken only once the last one ran out); a dry run always looks."""
    if dry_run:
        return True
    ttl = cfg.blob_sweep_hours * 3600
    if ttl <= 0:
        return True
    return await Lease(data.engine, "retention.blob_sweep", uuid.uuid4().hex, data.clock.now, ttl).acquire()


# --- paging ------------------------------------------------------------------------------------


async def _pages(run: Run, due: Callable[..., list[tuple[int, str, datetime]]],
                 *args: Any) -> AsyncIterator[tuple[int, str, datetime]]:
    """The due items page by page (by id), read again after each page was done."""
    after = 0
    while True:
        page = await run.data.tx.read(due, *args, after, PAGE)
        for item in page:
            yield item
        if len(page) < PAGE:
            return
        after = page[-1][0]


async def _batched(run: Run, due: Callable[..., list[tuple[int, str, datetime]]],
                   apply: Callable[[Any, list[int]], list[int]], cutoff: datetime, job: str, key: str) -> None:
    after = 0
    while True:
        page = await run.data.tx.read(due, cutoff, after, PAGE)
        if not page:
            return
        won = set() if run.dry_run else set(await run.data.tx.run(apply, [i for i, _, _ in page]))
        for item_id, kind, since in page:
            if run.dry_run or item_id in won:
                run.actions.append({"job": job, key: item_id, "kind": kind, "since": since.isoformat(),
                                    "done": item_id in won})
        after = page[-1][0]


# --- attachment files -------------------------------------------------------------------------------


async def sweep_blobs(data: DataStore, shas: Iterable[str] | None, cutoff_ts: float,
                      dry_run: bool = False) -> list[Action]:
    """Delete the attachment files no row names, untouched since `cutoff_ts` (a wall-clock
    time: the files' own). `shas`: just these; None: the whole folder.

    A blob being stored by a concurrent ingest is safe: `put` touches an existing file (so it
    is newer than the cut-off), and a file is moved aside before it is deleted and put back
    when it was touched or named meanwhile (a `put` after the move writes a new file)."""
    blobs = data.blobs
    source: Iterator[tuple[str, float | None]] = (
        blobs.keys() if shas is None else ((sha, blobs.mtime(sha)) for sha in shas))
    actions: list[Action] = []
    while chunk := await asyncio.to_thread(lambda: list(islice(source, 500))):
        stale = [sha for sha, mtime in chunk if mtime is not None and mtime < cutoff_ts]
        unnamed = sorted(set(stale) - await data.tx.read(store.referenced, stale))
        if dry_run:
            actions += [{"job": "blob_files", "sha256": sha, "done": False} for sha in unnamed]
            continue
        aside = {sha: path for sha in unnamed if (path := blobs.set_aside(sha)) is not None}
        named = await data.tx.read(store.referenced, list(aside))
        for sha, path in aside.items():
            try:
                touched = path.stat().st_mtime >= cutoff_ts
            except FileNotFoundError:  # another node's sweep took it: not ours to decide
                continue
            if sha in named or touched:
                blobs.put_back(path, sha)
            else:
                path.unlink()
                actions.append({"job": "blob_files", "sha256": sha, "done": True})
    if shas is None and not dry_run:
        for leftover in blobs.stale_temporaries(min(cutoff_ts, time.time() - LEFTOVER_S)):
            leftover.unlink(missing_ok=True)
    return actions
