"""`gateway users …` and `gateway audit list`: users, their tokens, and a person's data
(export, erase, allow: gateway/privacy.py)."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli.common import EX_OK, output, parse_time
from gateway.errors import Refused
from gateway.settings import Settings
from store.transact import in_session


async def cmd_users(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import open_app
    from store import queries

    if args.users_command in ("unbounce", "revoke-tokens"):
        return await _user_action(settings, args)
    if args.users_command in ("export", "erase", "allow"):
        return await _privacy_action(settings, args)
    async with open_app(settings) as app:
        if args.users_command == "add":
            await _add_user(app, args)
        elif args.users_command == "list":
            output(await in_session(app.sessions, queries.list_users), args.json)
        else:
            from gateway.lifecycle import search_users

            output(await search_users(app.desk, args.text, args.org), args.json)
    return EX_OK


async def _add_user(app: Any, args: argparse.Namespace) -> None:
    from gateway.addresses import canonical
    from gateway.model import Role, UserKind
    from store import users
    from store.transact import run_in, transaction

    email = canonical(args.email)
    if email is None:
        raise Refused(f"not a valid address: {args.email}")
    kind = UserKind.SHARED_MAILBOX if args.shared_mailbox else UserKind.PERSON
    role = Role.AGENT if args.agent else Role.CUSTOMER
    from store.person import address_blocked

    if await app.tx.read(address_blocked, email):
        raise Refused(f"{email} was erased and is blocked; `gateway users allow {email} --reason …` first")
    async with transaction(app.sessions) as session:
        if await run_in(session, users.find, email):
            raise Refused(f"user {email} exists already")
        await run_in(session, users.add, email, args.name, args.org, kind, role, app.clock.now(), args.language)
    print(f"added {email}")


async def _user_action(settings: Settings, args: argparse.Namespace) -> int:
    from gateway import credentials, lifecycle
    from gateway.app import open_app

    async with open_app(settings) as app:
        if args.users_command == "unbounce":
            output(await lifecycle.unbounce(app.desk, args.email), args.json)
        else:
            output(await credentials.revoke_requester_tokens(app.tokens, args.email), args.json)
    return EX_OK


def _operator(args: argparse.Namespace) -> str:
    import getpass

    return str(args.actor or f"cli:{getpass.getuser()}")


async def _privacy_action(settings: Settings, args: argparse.Namespace) -> int:
    from gateway import privacy
    from gateway.app import open_app

    async with open_app(settings) as app:
        data = app.data_store()
        if args.users_command == "export":
            out = await privacy.export_person(data, args.email, args.out, _operator(args), args.reason,
                                              internal=args.internal)
        elif args.users_command == "erase":
            out = await privacy.erase_person(data, args.email, _operator(args), args.reason, args.dry_run)
        else:
            out = await privacy.allow_address(data, args.email, _operator(args), args.reason)
    output(out, args.json)
    return EX_OK


async def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    from gateway import privacy
    from gateway.app import open_app

    before = parse_time(args.before, "--before") if args.before else None
    async with open_app(settings) as app:
        output(await privacy.audit_list(app.data_store(), args.limit, before), args.json)
    return EX_OK
