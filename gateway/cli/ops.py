"""Running the gateway: `run` (the daemon), `db upgrade`, `maintenance` (the timed jobs once, for cron)."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli.common import EX_OK, output, parse_time
from gateway.settings import Settings


async def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import open_app
    from store.migrate import HEAD

    async with open_app(settings, migrate=True):
        print(f"the store is at the newest schema ({HEAD})")
    return EX_OK


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.ingest.oauth import token_sources
    from gateway.runtime.daemon import run_daemon

    token_sources(settings.imap.accounts)  # an unset client secret stops the start, naming the key
    return await run_daemon(settings)


async def cmd_maintenance(settings: Settings, args: argparse.Namespace) -> int:
    output(await maintenance(settings, args.at, args.dry_run), args.json)
    return EX_OK


async def maintenance(settings: Settings, at: str | None, dry_run: bool) -> list[dict[str, Any]]:
    """`gateway maintenance [--at ISO-TIME] [--dry-run]`, for cron (rules §8): the timed jobs
    once, as of `at`, and the notifications they queued sent (no sender loop runs)."""
    from gateway.app import open_app
    from gateway.clock import FrozenClock, SystemClock
    from gateway.jobs import run_timed_jobs

    clock = FrozenClock(parse_time(at)) if at else SystemClock()
    async with open_app(settings, clock=clock, subprocess_parse=False) as app:
        return await run_timed_jobs(app.jobs, dry_run=dry_run, deliver=True)
