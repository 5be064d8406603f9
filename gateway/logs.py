"""Structured logs: one JSON object per line, dotted event names, ids bound, never mail bodies.

Every line has `ts`, `level`, `event` and `logger`; a call's `extra` adds fields but can never
replace those four (an `extra={"event": …}` once turned every `notify.sent` into `receipt`).
Our own events are listed in docs/operations.md ("Log events"); tests/test_operations.py holds the code
and a daemon's whole story to that list. A library's own message (uvicorn, alembic…) is the
event `library.message`, its text in `message`.

The mail in hand is bound once where it is handled (`with bound(inbound_id=…, case=…)`): every
line logged inside, by our code or a library's, carries those fields, and the binding ends with
the block, so the next mail's lines never carry them. A ContextVar: each asyncio task and each
`asyncio.to_thread` call sees its own, a `run_in_executor` thread sees none. The record is
stamped when it is made (a log record factory), so every handler sees the fields as attributes
(`record.inbound_id`), whenever and wherever it formats the line.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
RESERVED = ("ts", "level", "event", "logger")
OWN_LOGGERS = ("gateway", "store")
LIBRARY_EVENT = "library.message"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Never changed in place: a binding sets a new dict, so a task or thread that copied the context
# keeps what it saw.
_bound: ContextVar[dict[str, Any]] = ContextVar("gateway_log_bound", default={})  # noqa: B039


class bound:
    """`with bound(inbound_id=…, case=…):` every line logged inside carries these fields (None
    too: `mail.processed` of a mail that made no case says `"case": null`); a call's own `extra`
    wins over them. Blocks nest; leaving one restores what was bound before it. (A class, not a
    generator: it is entered once per mail and more.)"""

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: Any) -> None:
        self._fields = fields

    def __enter__(self) -> None:
        self._token = _bound.set(_merged(self._fields))

    def __exit__(self, *exc: object) -> None:
        _bound.reset(self._token)


def current() -> dict[str, Any]:
    """What is bound here."""
    return dict(_bound.get())


def _merged(fields: dict[str, Any]) -> dict[str, Any]:
    return {**_bound.get(), **fields}


class _BoundRecord(logging.LogRecord):
    """A record with the fields bound when it was made. They are kept beside its attributes, not
    among them: a call's own `extra` is set after the record is made and must win over them
    (logging refuses an `extra` key the record has already)."""

    def __getattr__(self, name: str) -> Any:  # only for names the record itself lacks
        try:
            return self.__dict__[BOUND_ATTR][name]
        except KeyError:
            raise AttributeError(name) from None


BOUND_ATTR = "gateway_bound"
_make_record = logging.getLogRecordFactory()


def _record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _make_record(*args, **kwargs)
    fields = _bound.get()
    if fields:
        record.__dict__[BOUND_ATTR] = fields  # never changed in place (see `_bound`)
        if type(record) is logging.LogRecord:
            record.__class__ = _BoundRecord
    return record


logging.setLogRecordFactory(_record)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields bound when the record was made and the call's `extra` over them; a field named
    like one of RESERVED is kept as `extra_<name>`."""
    own = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    context = own.pop(BOUND_ATTR, None)
    merged = {**context, **own} if context else own
    return {(f"extra_{k}" if k in RESERVED else k): v for k, v in merged.items()}


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
