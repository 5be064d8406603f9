"""The mail commands: `ingest` (the MTA pipe), `inbox list`, `reprocess`, `outbox list|retry`,
`render` (a sample notification) and `imap check`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import EX_OK, EX_TEMPFAIL, output, output_page
from gateway.errors import NoInput, NotFound, Refused, UnusableMail, UsageError
from gateway.settings import Settings
from store.transact import in_session


async def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import open_app
    from store import queries
    from store.inbox import IncomingMail

    raw = sys.stdin.buffer.read() if args.file == "-" else _read_input(args.file)
    if not raw.strip():
        raise UnusableMail("empty input")
    recipients = tuple(args.recipient) or settings.mail.addresses[:1]
    async with open_app(settings, subprocess_parse=False) as app:
        accepted, result = await app.ingest_now(IncomingMail(raw, args.source, args.sender, recipients))
        if result is None:
            found = await in_session(app.sessions, queries.inbound_case, accepted.inbound_id)
            output(_duplicate(accepted.inbound_id, *found), args.json)
            return EX_OK
    output({"action": result.action.value, "case": result.case, "reason": result.reason,
            "inbound_id": accepted.inbound_id}, args.json)
    if result is not None and result.retry:
        return EX_TEMPFAIL
    return EX_OK


def _read_input(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise NoInput(f"cannot read {path}: {exc.strerror or exc}") from None


def _duplicate(inbound_id: int, state: str | None, number: str | None) -> dict[str, Any]:
    """`ingest` of a mail the inbox has already: which one, and the case it belongs to."""
    where = f", case {number}" if number else f" ({state}, no case)" if state else ""
    return {"action": "duplicate", "case": number, "reason": f"same mail as inbound {inbound_id}{where}",
            "inbound_id": inbound_id}


def _id_cursor(text: str | None) -> int | None:
    if text is not None and not text.isdigit():
        raise UsageError(f"--before: expected an id, not {text!r}")
    return int(text) if text is not None else None


async def cmd_outbox(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import open_app
    from store import queries

    async with open_app(settings) as app:
        if args.outbox_command == "list":
            output_page(await in_session(app.sessions, queries.outbox_page, args.state, args.limit,
                                         _id_cursor(args.before)), args.json)
        else:
            if args.id is None and not args.failed:
                raise Refused("name a notification id or --failed")
            count = await app.outbox.retry(args.id, app.clock.now())
            if args.id is not None and count == 0:
                raise NotFound(f"no failed or held notification {args.id}")
            print(f"{count} notification(s) queued again")
    return EX_OK


async def cmd_inbox(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import open_app
    from store import queries

    async with open_app(settings) as app:
        output_page(await in_session(app.sessions, queries.inbox_page, args.state, args.limit,
                                     _id_cursor(args.before)), args.json)
    return EX_OK


async def cmd_reprocess(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import open_app

    if args.id is None and not args.quarantined:
        raise Refused("name an inbound id or --quarantined")
    async with open_app(settings, subprocess_parse=False) as app:
        count = await app.inbox.reprocess(args.id, args.quarantined)
        if args.id is not None and count == 0:
            raise NotFound(f"no inbound mail {args.id}")
        results = []
        while batch := await app.worker.run_once():
            results.extend(batch)
            if all(r.retry for r in batch):
                break
    for r in results:
        print(f"inbound {r.inbound_id}: {r.action.value} {r.case or ''} {r.reason}".rstrip())
    print(f"{count} mail(s) reprocessed")
    return EX_OK


async def cmd_render(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.notify.compose import render_sample

    print(render_sample(args.event, args.lang, settings))
    return EX_OK


async def cmd_imap(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.ingest.imap_check import check_accounts

    return await check_accounts(settings)
