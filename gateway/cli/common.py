"""What every command shares: the exit codes (sysexits), printing a listing (`--json` or
`key=value` lines) a page at a time, and reading a time from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from gateway.errors import InvalidInput
from gateway.settings import Settings

EX_OK, EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_NOUSER, EX_SOFTWARE, EX_OSERR = 0, 64, 65, 66, 67, 70, 71
EX_TEMPFAIL, EX_CONFIG = 75, 78
EX_REFUSED = 1
EX_PIPE = 141  # as a shell reports a command ended by SIGPIPE (`seq 1000000 | head -1`)

Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def output(data: Any, as_json: bool) -> None:
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


def output_page(page: Any, as_json: bool) -> None:
    """A list a page at a time; when there is more, a line on stderr says how to get it."""
    output(page.items, as_json)
    if page.next is not None:
        sys.stdout.flush()
        print(f"more: --before {page.next}", file=sys.stderr)


def parse_time(value: str, option: str = "--at") -> datetime:
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(f"{option}: not an ISO 8601 time: {value!r}") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
