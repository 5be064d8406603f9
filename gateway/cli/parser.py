"""The command line: every command, its options and its help (`gateway --help`)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

from gateway.cli.common import EX_USAGE
from gateway.model import Event, Status

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
