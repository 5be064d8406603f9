"""The `gateway` command. Every listing has `--json`; exit codes follow sysexits (`_EXITS`):
64 a usage error, 65 unusable input, 66 an input file missing, 67 no such case or user,
71 a port taken, 75 try again later, 78 configuration (or no store, or another schema).

No `sys.exit` below this module: commands return an exit code, errors are GatewayError.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from gateway.errors import (
    CannotListen,
    ConfigError,
    GatewayError,
    InvalidInput,
    NoInput,
    NotFound,
    Refused,
    StoreNotReady,
    TemporaryFailure,
    UnusableMail,
    UsageError,
)
from gateway.model import Event, Status
from gateway.settings import Settings, load_settings
from store.transact import in_session

EX_OK, EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_NOUSER, EX_SOFTWARE, EX_OSERR = 0, 64, 65, 66, 67, 70, 71
EX_TEMPFAIL, EX_CONFIG = 75, 78
EX_REFUSED = 1
EX_PIPE = 141  # as a shell reports a command ended by SIGPIPE (`seq 1000000 | head -1`)

Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]

STATUSES = tuple(s.value for s in Status)
LIST_FILTERS = ("active", "done", "all", *STATUSES)
INBOX_STATES = ("pending", "processing", "done", "quarantined")
OUTBOX_STATES = ("pending", "sending", "sent", "failed", "held")
EVENTS = tuple(e.value for e in Event)
LIST_LIMIT = 100


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error's sysexits code (64) instead of its own 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def _word(value: str) -> str:
    return value.strip().lower()


def _positive(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) <= 100_000:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 100000, not {value!r}")
    return int(value)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kundebetjening-gateway")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="gateway", description="Kundebetjening email-to-case gateway",
               epilog=f"case statuses: {', '.join(STATUSES)}; notification events: {', '.join(EVENTS)}")
    p.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG"), help="TOML file (or GATEWAY_CONFIG)")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", help="run the daemon (SMTP, IMAP, worker, sender, timed jobs, API); creates or "
                               "migrates the store")

    ing = sub.add_parser("ingest", help="store one raw mail in the inbox and process it now (MTA pipe); "
                                        "exit 0 done, 65 unusable, 66 no such file, 75 try later")
    ing.add_argument("file", nargs="?", default="-", help="the mail (default: - for stdin)")
    ing.add_argument("--json", action="store_true")
    ing.add_argument("--source", default="pipe", help="the edge to record (default: pipe)")
    ing.add_argument("--recipient", action="append", default=[], help="envelope recipient (repeatable)")
    ing.add_argument("--sender", default=None, help="envelope sender")

    db = sub.add_parser("db", help="the store's schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="create the store or apply the schema migrations")

    users = sub.add_parser("users", help="customers, shared mailboxes and agents").add_subparsers(
        dest="users_command", required=True)
    _users(users)
    _privacy_commands(sub, users)
    _cases(sub.add_parser("cases", help="list, show and act on cases")
           .add_subparsers(dest="cases_command", required=True))

    out = sub.add_parser("outbox", help="notifications: list, retry").add_subparsers(dest="outbox_command",
                                                                                    required=True)
    _list_options(out.add_parser("list", help="notifications, newest first"), "--state", OUTBOX_STATES)
    oretry = out.add_parser("retry", help="queue a failed or held notification again")
    oretry.add_argument("id", nargs="?", type=int)
    oretry.add_argument("--failed", action="store_true", help="retry every failed notification")

    inbox = sub.add_parser("inbox", help="received mails: list").add_subparsers(dest="inbox_command", required=True)
    _list_options(inbox.add_parser("list", help="received mails, newest first"), "--state", INBOX_STATES)

    rep = sub.add_parser("reprocess", help="put a quarantined or failed mail back in the queue")
    rep.add_argument("id", nargs="?", type=int)
    rep.add_argument("--quarantined", action="store_true", help="every quarantined mail")

    maint = sub.add_parser("maintenance", help="run the timed jobs once (for cron)")
    maint.add_argument("--at", help="ISO time to run as (default: now)")
    maint.add_argument("--dry-run", action="store_true")
    maint.add_argument("--json", action="store_true")

    render = sub.add_parser("render", help="print a sample notification, for reviewing wording")
    render.add_argument("event", type=_word, choices=EVENTS, help=f"one of {', '.join(EVENTS)}")
    render.add_argument("--lang", default="da", choices=["da", "en"])
    render.add_argument("--status", type=_word, choices=STATUSES, default=None, help="for the status event")

    imap = sub.add_parser("imap", help="the IMAP accounts").add_subparsers(dest="imap_command", required=True)
    imap.add_parser("check", help="log in to every configured IMAP account and say what is wrong")
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


def _list_options(cmd: argparse.ArgumentParser, flag: str, choices: tuple[str, ...], before: str = "ID") -> None:
    dest = flag.lstrip("-")
    cmd.add_argument(flag, dest=dest, type=_word, choices=choices, default=None if dest == "state" else choices[0],
                     help=f"one of {', '.join(choices)}")
    cmd.add_argument("--limit", type=_positive, default=LIST_LIMIT, help=f"at most this many (default {LIST_LIMIT})")
    cmd.add_argument("--before", metavar=before, help="the page after this one: the value a \"more:\" line names")
    cmd.add_argument("--json", action="store_true")


def _users(users: Any) -> None:
    add = users.add_parser("add", help="register a customer, shared mailbox or agent")
    add.add_argument("email")
    add.add_argument("--name", required=True)
    add.add_argument("--org")
    add.add_argument("--shared-mailbox", action="store_true")
    add.add_argument("--agent", action="store_true")
    add.add_argument("--language", choices=["da", "en"])
    ulist = users.add_parser("list", help="every user")
    ulist.add_argument("--json", action="store_true")
    search = users.add_parser("search", help="users of one organisation by name or address")
    search.add_argument("text")
    search.add_argument("--org", required=True)
    search.add_argument("--json", action="store_true")
    for name, text in (("unbounce", "clear a bouncing mark; the notifications held for it go out"),
                       ("revoke-tokens", "refuse every requester token issued to this user so far")):
        action = users.add_parser(name, help=text)
        action.add_argument("email")
        action.add_argument("--json", action="store_true")


def _cases(cases: Any) -> None:
    clist = cases.add_parser("list", help="cases, the last changed first")
    _list_options(clist, "--status", LIST_FILTERS, before="CURSOR")
    clist.add_argument("--user", help="only the cases this user is requester or party of")
    show = cases.add_parser("show", help="one case: header, parties, comments, attachments, history")
    show.add_argument("number")
    show.add_argument("--json", action="store_true")
    attach = cases.add_parser("attachment", help="save one attachment of a case (ids: cases show)")
    attach.add_argument("number")
    attach.add_argument("id", type=_positive)
    attach.add_argument("--out", required=True, metavar="FILE", help="where to write it (- for stdout)")
    _case_actions(cases)


_ACTIONS: tuple[tuple[str, list[str], str], ...] = (
    ("status", ["status"], "set the status"), ("assign", ["agent"], "assign to an agent (-> tildelt)"),
    ("reply", ["text"], "answer the requester and parties by mail"),
    ("note", ["text"], "add an internal note (never mailed)"),
    ("share", ["email"], "share with a user of the requester's organisation"),
    ("close", [], "close the case (lukket)"),
)


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
    for name, args, help_text in _ACTIONS:
        cmd = cases.add_parser(name, help=help_text)
        cmd.add_argument("number")
        for arg in args:
            if arg == "status":
                cmd.add_argument(arg, type=_word, choices=STATUSES, help=f"one of {', '.join(STATUSES)}")
            else:
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
    from gateway.case_text import clean

    rows = data if isinstance(data, list) else [data]
    for row in rows:
        if isinstance(row, dict):
            print(clean("  ".join(f"{k}={v}" for k, v in row.items() if not isinstance(v, list | dict))))
        else:
            print(clean(row, keep_newlines=True))


def _print_page(page: Any, as_json: bool) -> None:
    """A list a page at a time; when there is more, a line on stderr says how to get it."""
    _print(page.items, as_json)
    if page.next is not None:
        sys.stdout.flush()
        print(f"more: --before {page.next}", file=sys.stderr)


# --- commands ---------------------------------------------------------------------------


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
            _print(_duplicate(accepted.inbound_id, *found), args.json)
            return EX_OK
    _print({"action": result.action.value, "case": result.case, "reason": result.reason,
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


async def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import open_app
    from store.migrate import HEAD

    async with open_app(settings, migrate=True):
        print(f"the store is at the newest schema ({HEAD})")
    return EX_OK


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
            _print(await in_session(app.sessions, queries.list_users), args.json)
        else:
            from gateway.lifecycle import search_users

            _print(await search_users(app.desk, args.text, args.org), args.json)
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
            _print(await lifecycle.unbounce(app.desk, args.email), args.json)
        else:
            _print(await credentials.revoke_requester_tokens(app.tokens, args.email), args.json)
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

    before = _time(args.before, "--before") if args.before else None
    async with open_app(settings) as app:
        _print(await privacy.audit_list(app.data_store(), args.limit, before), args.json)
    return EX_OK


async def cmd_cases(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import open_app
    from store import queries

    async with open_app(settings) as app:
        if args.cases_command == "attachment":
            return await _save_attachment(app, args)
        if args.cases_command == "list":
            before = _case_cursor(args.before)
            user = await _known_user(app, args.user)
            _print_page(await in_session(app.sessions, queries.cases_page, args.status, user, args.limit, before),
                        args.json)
            return EX_OK
        if args.cases_command == "show":
            _show(await in_session(app.sessions, queries.case_detail, args.number), args.json)
            return EX_OK
        from gateway.lifecycle import run_cli_action

        _print(await run_cli_action(app.desk, args), args.json)
    return EX_OK


def _case_cursor(text: str | None) -> Any:
    from store.queries import parse_case_cursor

    if text is None:
        return None
    try:
        return parse_case_cursor(text)
    except ValueError as exc:
        raise UsageError(f"--before: {exc}") from None


def _id_cursor(text: str | None) -> int | None:
    if text is not None and not text.isdigit():
        raise UsageError(f"--before: expected an id, not {text!r}")
    return int(text) if text is not None else None


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
        _print(case, True)
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


async def cmd_outbox(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import open_app
    from store import queries

    async with open_app(settings) as app:
        if args.outbox_command == "list":
            _print_page(await in_session(app.sessions, queries.outbox_page, args.state, args.limit,
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
        _print_page(await in_session(app.sessions, queries.inbox_page, args.state, args.limit,
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


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.ingest.oauth import token_sources
    from gateway.runtime.daemon import run_daemon

    token_sources(settings.imap.accounts)  # an unset client secret stops the start, naming the key
    return await run_daemon(settings)


async def cmd_maintenance(settings: Settings, args: argparse.Namespace) -> int:
    _print(await maintenance(settings, args.at, args.dry_run), args.json)
    return EX_OK


async def maintenance(settings: Settings, at: str | None, dry_run: bool) -> list[dict[str, Any]]:
    """`gateway maintenance [--at ISO-TIME] [--dry-run]`, for cron (rules §8): the timed jobs
    once, as of `at`, and the notifications they queued sent (no sender loop runs)."""
    from gateway.app import open_app
    from gateway.clock import FrozenClock, SystemClock
    from gateway.jobs import run_timed_jobs

    clock = FrozenClock(_time(at)) if at else SystemClock()
    async with open_app(settings, clock=clock, subprocess_parse=False) as app:
        return await run_timed_jobs(app.jobs, dry_run=dry_run, deliver=True)


def _time(value: str, option: str = "--at") -> datetime:
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(f"{option}: not an ISO 8601 time: {value!r}") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


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
            issued = await credentials.issue_api_token(app.tokens, args.agent, args.service)
            if args.json:
                _print(issued, True)
            else:
                print(issued["token"])
                holder = issued["agent"] or issued["service"]
                print(f"gateway: API token {issued['id']} for {issued['kind']} {holder}; it is shown only now",
                      file=sys.stderr)
        elif args.tokens_command == "list":
            _print(await credentials.list_api_tokens(app.tokens), args.json)
        else:
            revoked = await credentials.revoke_api_token(app.tokens, args.id)
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
        code = _run(args)
        sys.stdout.flush()  # here, not at exit: a reader that went away is noticed below
        return code
    except BrokenPipeError:
        # The reader stopped reading (`gateway cases list | head`): nothing to say to anyone.
        # Python would print an error when it flushes stdout at exit; send that to /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_PIPE


# What each error means to the caller: the first matching class decides (subclasses first).
_EXITS: tuple[tuple[type[Exception], int, str], ...] = (
    (StoreNotReady, EX_CONFIG, ""), (ConfigError, EX_CONFIG, "configuration error: "),
    (UsageError, EX_USAGE, "usage: "), (InvalidInput, EX_USAGE, ""), (NoInput, EX_NOINPUT, ""),
    (CannotListen, EX_OSERR, ""), (UnusableMail, EX_DATAERR, "unusable input: "),
    (TemporaryFailure, EX_TEMPFAIL, "temporary failure, try again: "), (NotFound, EX_NOUSER, ""),
    (GatewayError, EX_REFUSED, "refused: "),
)


def _run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config or _default_config())
        from gateway.logs import configure_logging

        configure_logging(settings.daemon.log_format, settings.daemon.log_level)
        return asyncio.run(COMMANDS[args.command](settings, args))
    except GatewayError as exc:
        code, prefix = next((code, prefix) for kind, code, prefix in _EXITS if isinstance(exc, kind))
        print(f"gateway: {prefix}{exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return 130


def _default_config() -> str | None:
    for candidate in (Path("config/gateway.toml"),):
        if candidate.exists():
            return str(candidate)
    return None
