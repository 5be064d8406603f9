"""The `gateway` command. Every listing has `--json`; exit codes follow sysexits for `ingest`.

No `sys.exit` below this module: commands return an exit code, errors are GatewayError.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, GatewayError, NotFound, Refused, TemporaryFailure, UnusableMail
from gateway.settings import Settings, load_settings
from store.transact import run_in

EX_OK, EX_USAGE, EX_DATAERR, EX_NOUSER, EX_SOFTWARE, EX_TEMPFAIL, EX_CONFIG = 0, 64, 65, 67, 70, 75, 78
EX_REFUSED = 1

Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Kundebetjening email-to-case gateway")
    p.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG"), help="TOML file (or GATEWAY_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("run", help="run the daemon (SMTP, IMAP, worker, sender, timed jobs, API)")

    ing = sub.add_parser("ingest", help="store one raw mail in the inbox and process it now")
    ing.add_argument("file", nargs="?", default="-")
    ing.add_argument("--json", action="store_true")
    ing.add_argument("--source", default="pipe")
    ing.add_argument("--recipient", action="append", default=[], help="envelope recipient (repeatable)")
    ing.add_argument("--sender", default=None, help="envelope sender")

    db = sub.add_parser("db").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply the schema migrations")

    users = sub.add_parser("users").add_subparsers(dest="users_command", required=True)
    add = users.add_parser("add")
    add.add_argument("email")
    add.add_argument("--name", required=True)
    add.add_argument("--org")
    add.add_argument("--shared-mailbox", action="store_true")
    add.add_argument("--agent", action="store_true")
    add.add_argument("--language", choices=["da", "en"])
    ulist = users.add_parser("list")
    ulist.add_argument("--json", action="store_true")
    search = users.add_parser("search")
    search.add_argument("text")
    search.add_argument("--org", required=True)
    search.add_argument("--json", action="store_true")
    for name, text in (("unbounce", "clear a bouncing mark; the notifications held for it go out"),
                       ("revoke-tokens", "refuse every requester token issued to this user so far")):
        action = users.add_parser(name, help=text)
        action.add_argument("email")
        action.add_argument("--json", action="store_true")

    _privacy_commands(sub, users)

    cases = sub.add_parser("cases").add_subparsers(dest="cases_command", required=True)
    clist = cases.add_parser("list")
    clist.add_argument("--status", default="active")
    clist.add_argument("--user")
    clist.add_argument("--json", action="store_true")
    show = cases.add_parser("show")
    show.add_argument("number")
    show.add_argument("--json", action="store_true")
    _case_actions(cases)

    out = sub.add_parser("outbox").add_subparsers(dest="outbox_command", required=True)
    olist = out.add_parser("list")
    olist.add_argument("--state")
    olist.add_argument("--json", action="store_true")
    oretry = out.add_parser("retry")
    oretry.add_argument("id", nargs="?", type=int)
    oretry.add_argument("--failed", action="store_true", help="retry every failed notification")

    inbox = sub.add_parser("inbox").add_subparsers(dest="inbox_command", required=True)
    ilist = inbox.add_parser("list")
    ilist.add_argument("--state")
    ilist.add_argument("--json", action="store_true")

    rep = sub.add_parser("reprocess", help="put a quarantined or failed mail back in the queue")
    rep.add_argument("id", nargs="?", type=int)
    rep.add_argument("--quarantined", action="store_true")

    maint = sub.add_parser("maintenance", help="run the timed jobs once (for cron)")
    maint.add_argument("--at", help="ISO time to run as (default: now)")
    maint.add_argument("--dry-run", action="store_true")
    maint.add_argument("--json", action="store_true")

    render = sub.add_parser("render", help="print a sample notification")
    render.add_argument("event")
    render.add_argument("--lang", default="da", choices=["da", "en"])
    render.add_argument("--status", default=None)

    imap = sub.add_parser("imap").add_subparsers(dest="imap_command", required=True)
    imap.add_parser("check", help="test every configured IMAP account")
    _token_commands(sub)
    return p


def _token_commands(sub: Any) -> None:
    tokens = sub.add_parser("tokens", help="API tokens of agents and services (stored as hashes)").add_subparsers(
        dest="tokens_command", required=True)
    issue = tokens.add_parser("issue", help="a new token, printed this once")
    who = issue.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", metavar="EMAIL", help="acts as this agent and no one else")
    who.add_argument("--service", metavar="NAME", help="an integration that acts for the agent it names")
    issue.add_argument("--json", action="store_true")
    tlist = tokens.add_parser("list", help="every token: id, kind, holder, created, last used, revoked")
    tlist.add_argument("--json", action="store_true")
    revoke = tokens.add_parser("revoke", help="refuse a token from now on")
    revoke.add_argument("id", type=int)


def _privacy_commands(sub: Any, users: Any) -> None:
    """`users export|erase|allow` and `audit list` (gateway/privacy.py)."""
    def who(cmd: Any) -> None:
        cmd.add_argument("email")
        cmd.add_argument("--reason", required=True, help="why (kept in the audit trail)")
        cmd.add_argument("--as", dest="actor", default=os.environ.get("GATEWAY_ACTOR"),
                         help="who does it, for the audit trail (default: cli:<login name>)")
        cmd.add_argument("--json", action="store_true")

    export = users.add_parser("export", help="everything stored about a person, as a zip of JSON and files")
    who(export)
    export.add_argument("--out", required=True, metavar="FILE.zip", help="a new file (mode 0600)")
    export.add_argument("--internal", action="store_true", help="include the agents' internal notes")
    erase = users.add_parser("erase", help="erase a person's mails, files, text and name; block their address")
    who(erase)
    erase.add_argument("--dry-run", action="store_true", help="count what would go; change nothing")
    allow = users.add_parser("allow", help="let an erased person's address register again by mail")
    who(allow)
    audit = sub.add_parser("audit", help="who exported or erased whose data, and the agents' actions").add_subparsers(
        dest="audit_command", required=True)
    alist = audit.add_parser("list", help="newest first")
    alist.add_argument("--limit", type=int, default=100)
    alist.add_argument("--before", help="ISO time: only entries before it")
    alist.add_argument("--json", action="store_true")


def _case_actions(cases: Any) -> None:
    for name, args in (("status", ["status"]), ("assign", ["agent"]), ("reply", ["text"]),
                       ("note", ["text"]), ("share", ["email"]), ("close", [])):
        cmd = cases.add_parser(name)
        cmd.add_argument("number")
        for arg in args:
            cmd.add_argument(arg)
        cmd.add_argument("--as", dest="actor", default=os.environ.get("GATEWAY_ACTOR"),
                         help="the acting user's address")
        cmd.add_argument("--json", action="store_true")
        if name == "reply":
            cmd.add_argument("--attach", action="append", default=[])
        if name in ("close", "status"):
            cmd.add_argument("--reason")


def _print(data: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, ensure_ascii=False, indent=None, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    for row in rows:
        if isinstance(row, dict):
            print("  ".join(f"{k}={v}" for k, v in row.items() if not isinstance(v, list | dict)))
        else:
            print(row)


# --- commands ---------------------------------------------------------------------------


async def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import open_app
    from store.inbox import IncomingMail

    raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    if not raw.strip():
        raise UnusableMail("empty input")
    recipients = tuple(args.recipient) or settings.mail.addresses[:1]
    async with open_app(settings, subprocess_parse=False) as app:
        accepted, result = await app.ingest_now(IncomingMail(raw, args.source, args.sender, recipients))
    if result is None:
        out = {"action": "duplicate", "case": None, "reason": f"same mail as inbound {accepted.inbound_id}",
               "inbound_id": accepted.inbound_id}
    else:
        out = {"action": result.action.value, "case": result.case, "reason": result.reason,
               "inbound_id": accepted.inbound_id}
    _print(out, args.json)
    if result is not None and result.retry:
        return EX_TEMPFAIL
    return EX_OK


async def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import open_app

    async with open_app(settings, migrate=True):
        print("database is at the newest schema")
    return EX_OK


async def cmd_users(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import open_app
    from gateway.model import Role, UserKind
    from store import queries, writes

    if args.users_command in ("unbounce", "revoke-tokens"):
        return await _user_action(settings, args)
    if args.users_command in ("export", "erase", "allow"):
        return await _privacy_action(settings, args)
    async with open_app(settings) as app, app.sessions() as session:
        if args.users_command == "add":
            from gateway.addresses import canonical

            email = canonical(args.email)
            if email is None:
                raise Refused(f"not a valid address: {args.email}")
            if await run_in(session, queries.user_by_email, email):
                raise Refused(f"user {email} exists already")
            from store.person import address_blocked

            if await app.tx.read(address_blocked, email):
                raise Refused(f"{email} was erased and is blocked; `gateway users allow {email} --reason …` first")
            kind = UserKind.SHARED_MAILBOX if args.shared_mailbox else UserKind.PERSON
            role = Role.AGENT if args.agent else Role.CUSTOMER
            await run_in(session, writes.add_user, email, args.name, args.org, kind, role, app.clock.now(), args.language)
            await session.commit()
            print(f"added {email}")
        elif args.users_command == "list":
            _print(await run_in(session, queries.list_users), args.json)
        else:
            from gateway.lifecycle import search_users

            _print(await search_users(session, args.text, args.org), args.json)
    return EX_OK


async def _user_action(settings: Settings, args: argparse.Namespace) -> int:
    from gateway import credentials, lifecycle
    from gateway.app import open_app

    async with open_app(settings) as app:
        if args.users_command == "unbounce":
            _print(await lifecycle.unbounce(app, args.email), args.json)
        else:
            _print(await credentials.revoke_requester_tokens(app, args.email), args.json)
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
    _print(out, args.json)
    return EX_OK


async def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    from gateway import privacy
    from gateway.app import open_app
    from gateway.jobs import parse_at

    before = parse_at(args.before, "--before") if args.before else None
    async with open_app(settings) as app:
        _print(await privacy.audit_list(app.data_store(), args.limit, before), args.json)
    return EX_OK


async def cmd_cases(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import open_app
    from store import queries

    async with open_app(settings) as app:
        if args.cases_command in ("list", "show"):
            async with app.sessions() as session:
                if args.cases_command == "list":
                    _print(await run_in(session, queries.list_cases, args.status, args.user), args.json)
                else:
                    _print(await run_in(session, queries.case_detail, args.number), args.json)
            return EX_OK
        from gateway.lifecycle import run_cli_action

        _print(await run_cli_action(app, args), args.json)
    return EX_OK


async def cmd_outbox(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import open_app
    from store import queries

    async with open_app(settings) as app:
        if args.outbox_command == "list":
            async with app.sessions() as session:
                _print(await run_in(session, queries.list_outbox, args.state), args.json)
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

    async with open_app(settings) as app, app.sessions() as session:
        _print(await run_in(session, queries.list_inbox, args.state), args.json)
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


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.daemon import run_daemon
    from gateway.ingest.oauth import token_sources

    token_sources(settings.imap.accounts)  # an unset client secret stops the start, naming the key
    return await run_daemon(settings)


async def cmd_maintenance(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.jobs import run_maintenance_cli

    _print(await run_maintenance_cli(settings, args.at, args.dry_run), args.json)
    return EX_OK


async def cmd_render(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.notify.compose import render_sample

    print(render_sample(args.event, args.lang, settings))
    return EX_OK


async def cmd_imap(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.ingest.imap_check import check_accounts

    return await check_accounts(settings)


async def cmd_tokens(settings: Settings, args: argparse.Namespace) -> int:
    from gateway import credentials
    from gateway.app import open_app

    async with open_app(settings) as app:
        if args.tokens_command == "issue":
            issued = await credentials.issue_api_token(app, args.agent, args.service)
            if args.json:
                _print(issued, True)
            else:
                print(issued["token"])
                holder = issued["agent"] or issued["service"]
                print(f"gateway: API token {issued['id']} for {issued['kind']} {holder}; it is shown only now",
                      file=sys.stderr)
        elif args.tokens_command == "list":
            _print(await credentials.list_api_tokens(app), args.json)
        else:
            revoked = await credentials.revoke_api_token(app, args.id)
            print(f"API token {args.id} revoked" if revoked["changed"] else f"API token {args.id} was revoked already")
    return EX_OK


COMMANDS: dict[str, Handler] = {
    "ingest": cmd_ingest, "db": cmd_db, "users": cmd_users, "cases": cmd_cases, "outbox": cmd_outbox,
    "inbox": cmd_inbox, "reprocess": cmd_reprocess, "run": cmd_run, "maintenance": cmd_maintenance,
    "render": cmd_render, "imap": cmd_imap,
    "tokens": cmd_tokens, "audit": cmd_audit,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config or _default_config())
        from gateway.logs import configure_logging

        configure_logging(settings.daemon.log_format, settings.daemon.log_level)
        return asyncio.run(COMMANDS[args.command](settings, args))
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except UnusableMail as exc:
        print(f"gateway: unusable input: {exc}", file=sys.stderr)
        return EX_DATAERR
    except TemporaryFailure as exc:
        print(f"gateway: temporary failure, try again: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except NotFound as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EX_NOUSER
    except (Refused, GatewayError) as exc:
        print(f"gateway: refused: {exc}", file=sys.stderr)
        return EX_REFUSED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the store refused (locked, read-only, gone): the sender should retry
        from sqlalchemy.exc import DBAPIError, OperationalError

        if isinstance(exc, OperationalError | DBAPIError):
            print(f"gateway: temporary failure, try again: {type(exc).__name__}", file=sys.stderr)
            return EX_TEMPFAIL
        raise


def _default_config() -> str | None:
    for candidate in (Path("config/gateway.toml"),):
        if candidate.exists():
            return str(candidate)
    return None
