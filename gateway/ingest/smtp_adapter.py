"""aiosmtpd behind one seam: the only module of the gateway that imports aiosmtpd, and the only
one that touches its private parts, for two fast paths of the listener (gateway/ingest/smtp.py).

Verified with aiosmtpd `>=1.4.6,<1.5` (`VERIFIED_RANGE`, the pin in pyproject.toml; the
conformance test, tests/test_smtp_conformance.py, checks the two agree and runs the same
protocol probes against stock aiosmtpd and the listener, requiring identical replies).

The private parts used, and why (the conformance test checks this list against the code):

- `_reader`: the session's stream reader. After DATA's 354 the mail is read from it up to each
  ".<CRLF>" (smtp_data.read_data) instead of a line at a time as aiosmtpd's `smtp_DATA` does:
  a trip through the reader for every line is a large part of the listener's CPU.
- `_writer`: closed when the connection is lost inside DATA, as aiosmtpd's `smtp_DATA` does.
- `_call_handler_hook`: calls the handler's `handle_DATA` as aiosmtpd's `smtp_DATA` does.
- `_set_post_data_state`: the envelope reset after DATA, as aiosmtpd's `smtp_DATA` does.
- `_getaddr`: overridden. aiosmtpd runs the e-mail header parser over MAIL FROM and RCPT TO
  and defines a `typing.Protocol` class on every call; a plain
  `<local@domain>` with an ASCII dot-atom on both sides gets the same answer from a regular
  expression here, any other form still goes to aiosmtpd's parser.
- `__dir__` (not private, but a reliance on how `SMTP.__init__` works): it builds its verb, hook
  and AUTH tables from `dir()` and `inspect.getmembers()` of the protocol object and of the
  handler, a `getattr` of each of ~250 attributes (and `inspect.signature` of the EHLO hook) for
  every connection. While a `FastSMTP` is built, `dir()` of both lists nothing, so aiosmtpd
  builds empty tables, and the adapter fills them, as aiosmtpd builds them, from the names and
  the EHLO hook's form it found for their classes once (the conformance test's probes see the
  same replies). On smtp-source's one mail a connection they were a tenth of the listener's CPU.
- `_smtp_methods`: that table of verbs (bound methods of the protocol).
- `_handle_hooks`: that table of the handler's hooks.
- `_auth_methods`: that table of AUTH mechanisms (aiosmtpd's `_AuthMechAttr`s).
- `_ehlo_hook_ver`: the EHLO hook's form, "old" (4 arguments), "new" (5) or None.

Outside the verified range the listener runs aiosmtpd's own `SMTP`/`LMTP` with none of this
(`fast_paths() is False`) and logs `smtp.aiosmtpd_unverified` when it starts; it does not refuse
to start. The fast paths are optimisations whose stock equivalent answers the same (the
conformance test runs the listener both ways), so an aiosmtpd installed outside the pin, say
a distribution's security release, costs speed, while refusing to start would stop the MX and
leave the mail queued at the relays.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from typing import Any

import aiosmtpd
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, _AuthMechAttr, syntax
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from gateway.ingest.smtp_data import read_data

__all__ = ["AIOSMTPD_VERSION", "SMTP", "VERIFIED_RANGE", "Envelope", "FastLMTP", "FastSMTP", "HandlerNames",
           "Session", "fast_paths", "protocol_base", "syntax", "verified"]

VERIFIED_RANGE = ">=1.4.6,<1.5"
AIOSMTPD_VERSION: str = aiosmtpd.__version__


def verified(version: str) -> bool:
    """Whether this module's use of aiosmtpd's private parts was verified for `version`."""
    try:
        return SpecifierSet(VERIFIED_RANGE).contains(Version(version), prereleases=False)
    except InvalidVersion:
        return False


_VERIFIED = verified(AIOSMTPD_VERSION)


def fast_paths() -> bool:
    """True when the installed aiosmtpd is in the verified range (checked once, at import)."""
    return _VERIFIED


# The prefixes of the names aiosmtpd's `SMTP.__init__` collects from `dir()`: smtp_* (its verbs)
# and auth_* (AUTH mechanisms) of the protocol, handle_* (hooks) and auth_* of the handler.
_TABLES = ("smtp_", "auth_", "handle_")


# How many FastSMTPs are being built right now: `SMTP.__init__` is synchronous, so on the event
# loop at most one, and while it runs `dir()` of it and of its handler lists nothing.
_building = 0


def _table_names(obj: object) -> list[str]:
    """The names of `obj` that aiosmtpd's tables are built from, found once for each class."""
    cls = type(obj)
    names: tuple[str, ...] | None = cls.__dict__.get("gw_table_names")
    if names is None:
        names = tuple(n for n in object.__dir__(obj) if n.startswith(_TABLES))
        cls.gw_table_names = names  # type: ignore[attr-defined]
    return list(names)


class HandlerNames:
    """For the handler: `dir()` lists only its hooks, when the fast paths are on."""

    def __dir__(self) -> list[str]:
        if not _VERIFIED:
            return list(object.__dir__(self))
        return [] if _building else _table_names(self)


_EHLO_FORMS: dict[type, str | None] = {}  # a handler class's EHLO hook: "old" (4 arguments), "new" (5), None


def _ehlo_form(handler: Any) -> str | None:
    """aiosmtpd's `_ehlo_hook_ver` for this handler, found once for its class (aiosmtpd takes
    `inspect.signature` of the hook at every connection)."""
    cls = type(handler)
    if cls not in _EHLO_FORMS:
        hook = getattr(handler, "handle_EHLO", None)
        count = None if hook is None else len(inspect.signature(hook).parameters)
        if count not in (None, 4, 5):
            raise RuntimeError("Unsupported EHLO Hook")
        _EHLO_FORMS[cls] = None if count is None else ("old" if count == 4 else "new")
    return _EHLO_FORMS[cls]


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# After the ">": blanks, then the parameters; a comment or a line break there goes to aiosmtpd.
_PLAIN = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})*)>[ \t]*(?![ \t(])([^\r\n]*)")


class FastSMTP(SMTP):
    """aiosmtpd's SMTP with the fast paths. Content stays bytes (`decode_data=False`, the only
    mode the fast DATA has) and the handler has a `handle_DATA` hook."""

    def __init__(self, handler: Any, *, decode_data: bool = False, **options: Any) -> None:
        if decode_data:
            raise ValueError("the fast DATA keeps the mail as bytes: decode_data must be False")
        global _building
        _building += 1
        try:
            super().__init__(handler, decode_data=False, **options)
        finally:
            _building -= 1
        self._fill_tables(handler, options.get("auth_exclude_mechanism") or ())

    def __dir__(self) -> list[str]:
        return [] if _building else _table_names(self)

    def _fill_tables(self, handler: Any, excluded: Any) -> None:
        """aiosmtpd's tables of this connection, as its `SMTP.__init__` builds them from `dir()`."""
        mine, theirs = _table_names(self), _table_names(handler)
        auth: dict[str, _AuthMechAttr] = {}
        for obj, names in ((self, mine), (handler, theirs)):
            for name in sorted(names):  # inspect.getmembers' order
                if name.startswith("auth_"):
                    method = getattr(obj, name)
                    mechanism = getattr(method, "__auth_mechanism_name__", name.replace("auth_", "").replace("__", "-"))
                    auth[mechanism] = _AuthMechAttr(method, obj is self)
        for mechanism in excluded:
            auth.pop(mechanism, None)
        self._auth_methods = auth
        self._handle_hooks = {n.replace("handle_", ""): getattr(handler, n) for n in theirs if n.startswith("handle_")}
        self._ehlo_hook_ver = _ehlo_form(handler)
        self._smtp_methods = {n.replace("smtp_", ""): getattr(self, n) for n in mine if n.startswith("smtp_")}

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = _PLAIN.fullmatch(arg) if arg[:1] == "<" else None
        if plain is None:
            return super()._getaddr(arg)
        address, rest = plain.groups()
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd 1.4.6's DATA, with the mail read in pieces (smtp_data.read_data)."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content, refusal = await read_data(self._reader, self.data_size_limit, self.line_length_limit)
        except asyncio.CancelledError:  # the connection was lost during DATA
            self._writer.close()
            raise
        reply = refusal or ""
        if refusal is None:
            self.envelope.content = self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
            reply = "250 OK" if status is MISSING else status
        self._set_post_data_state()
        await self.push(reply)


class FastLMTP(FastSMTP, LMTP):
    """aiosmtpd's LMTP (LHLO, no HELO/EHLO) with the fast paths."""


def protocol_base(lmtp: bool, fast: bool = True) -> type[SMTP]:
    """The protocol class the listener builds on: the fast one when the installed aiosmtpd is
    verified, else aiosmtpd's own (also when `fast` is False: the conformance test runs both)."""
    if fast and _VERIFIED:
        return FastLMTP if lmtp else FastSMTP
    return LMTP if lmtp else SMTP
