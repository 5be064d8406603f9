"""The `gateway` command. Every listing has `--json`; exit codes follow sysexits (`_EXITS`):
64 a usage error, 65 unusable input, 66 an input file missing, 67 no such case or user,
71 a port taken, 75 try again later, 78 configuration (or no store, or another schema).

No `sys.exit` below this module: commands return an exit code, errors are GatewayError.
The parser is in `parser`, each group of commands in a module of its own (`cases`, `users`,
`tokens`, `mail`, `ops`), what they share in `common`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from gateway.cli.cases import cmd_cases
from gateway.cli.common import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOINPUT,
    EX_NOUSER,
    EX_OK,
    EX_OSERR,
    EX_PIPE,
    EX_REFUSED,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_USAGE,
    Handler,
)
from gateway.cli.mail import cmd_imap, cmd_inbox, cmd_ingest, cmd_outbox, cmd_render, cmd_reprocess
from gateway.cli.ops import cmd_db, cmd_maintenance, cmd_run, maintenance
from gateway.cli.parser import build_parser
from gateway.cli.tokens import cmd_tokens
from gateway.cli.users import cmd_audit, cmd_users
from gateway.errors import (
    CannotListen,
    ConfigError,
    GatewayError,
    InvalidInput,
    NoInput,
    NotFound,
    StoreNotReady,
    TemporaryFailure,
    UnusableMail,
    UsageError,
)
from gateway.settings import load_settings

__all__ = ["COMMANDS", "EX_CONFIG", "EX_DATAERR", "EX_NOINPUT", "EX_NOUSER", "EX_OK", "EX_OSERR", "EX_PIPE",
           "EX_REFUSED", "EX_SOFTWARE", "EX_TEMPFAIL", "EX_USAGE", "build_parser", "main", "maintenance"]

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
