"""Structured logs: one JSON object per line, dotted event names, ids bound, never mail bodies.

Every line has `ts`, `level`, `event` and `logger`; a call's `extra` adds fields but can never
replace those four (an `extra={"event": …}` once turned every `notify.sent` into `receipt`).
Our own events are listed in README.md ("Log events"); tests/test_operations.py holds the code
and a daemon's whole story to that list. A library's own message (uvicorn, alembic…) is the
event `library.message`, its text in `message`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
RESERVED = ("ts", "level", "event", "logger")
OWN_LOGGERS = ("gateway", "store")
LIBRARY_EVENT = "library.message"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The call's `extra`; a field named like one of RESERVED is kept as `extra_<name>`."""
    return {(f"extra_{k}" if k in RESERVED else k): v for k, v in vars(record).items() if k not in _STANDARD}


def _own(record: logging.LogRecord) -> bool:
    return record.name.split(".", 1)[0] in OWN_LOGGERS


def event_of(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """The event name and, for a library's record, its text as a field."""
    if _own(record):
        return record.getMessage(), {}
    return LIBRARY_EVENT, {"message": record.getMessage()[:500]}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event, text = event_of(record)
        entry = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "event": event, "logger": record.name}
        entry.update({**_fields(record), **text})
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event, text = event_of(record)
        extra = " ".join(f"{k}={v}" for k, v in {**_fields(record), **text}.items())
        return f"{record.levelname.lower():7} {event} {extra}".rstrip()


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("mail.log", "mailparser", "mailparser_reply", "aiosqlite", "sqlalchemy.engine", "alembic",
                  "asyncio", "uvicorn", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
