"""`gateway cases …`: list, show, save an attachment, act on a case (gateway/lifecycle.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import EX_OK, output, output_page
from gateway.errors import NoInput, UsageError
from gateway.settings import Settings
from store.transact import in_session


async def cmd_cases(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import open_app
    from store import queries

    async with open_app(settings) as app:
        if args.cases_command == "attachment":
            return await _save_attachment(app, args)
        if args.cases_command == "list":
            before = _case_cursor(args.before)
            user = await _known_user(app, args.user)
            output_page(await in_session(app.sessions, queries.cases_page, args.status, user, args.limit, before),
                        args.json)
            return EX_OK
        if args.cases_command == "show":
            _show(await in_session(app.sessions, queries.case_detail, args.number), args.json)
            return EX_OK
        from gateway.lifecycle import run_cli_action

        output(await run_cli_action(app.desk, args), args.json)
    return EX_OK


def _case_cursor(text: str | None) -> Any:
    from store.queries import parse_case_cursor

    if text is None:
        return None
    try:
        return parse_case_cursor(text)
    except ValueError as exc:
        raise UsageError(f"--before: {exc}") from None


async def _known_user(app: Any, email: str | None) -> str | None:
    """The `--user` filter's address, which must be a registered user."""
    from gateway.addresses import canonical
    from store import users

    if email is None:
        return None
    address = canonical(email)
    if address is None:
        raise UsageError(f"--user: not an e-mail address: {email!r}")
    if await in_session(app.sessions, users.find, address) is None:
        raise UsageError(f"--user: no user {address}")
    return address


def _show(case: dict[str, Any], as_json: bool) -> None:
    from gateway.case_text import render_case

    if as_json:
        output(case, True)
    else:
        sys.stdout.write(render_case(case))


async def _save_attachment(app: Any, args: argparse.Namespace) -> int:
    """`gateway cases attachment NUMBER ID --out FILE`: whole or not at all (written beside, then renamed)."""
    import shutil

    from gateway.attachments import open_attachment

    found = await open_attachment(app.sessions, app.blobs, args.number, args.id, requester=None)
    if args.out == "-":
        with found.path.open("rb") as source:
            shutil.copyfileobj(source, sys.stdout.buffer)
        sys.stdout.flush()
        return EX_OK
    target = Path(args.out)
    part = target.with_name(f".{target.name}.part")
    try:
        shutil.copyfile(found.path, part)
        os.replace(part, target)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise NoInput(f"cannot write {args.out}: {exc.strerror or exc}") from None
    from gateway.case_text import clean

    print(f"saved attachment {found.id} ({clean(found.name)}, {found.size} bytes) to {args.out}")
    return EX_OK
