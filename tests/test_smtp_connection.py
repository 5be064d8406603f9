"""The adapter's connection fast paths (gateway/ingest/smtp_adapter.py): aiosmtpd's per-connection
tables and its address parser, made cheaper, give the answers aiosmtpd gives. The same fast
paths under whole sessions, against stock aiosmtpd: tests/test_smtp_conformance.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.ingest.smtp import ConnectionLimits, Gate, InboxHandler, protocol_class
from gateway.ingest.smtp_adapter import FastSMTP as Plain

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
NOISE = ATEXT + ' .@<>()[]\\"\t\r\nø:,;'
local = st.text(ATEXT + ".", min_size=0, max_size=12)
domain = st.text("abz09-._[]", min_size=0, max_size=12)
rest = st.text(NOISE + "SIZE=0", max_size=12)


def both(arg: str, limit: int = 0) -> tuple[object, object]:
    ours, theirs = Plain.__new__(Plain), SMTP.__new__(SMTP)  # _getaddr reads local_part_limit only
    ours.local_part_limit = theirs.local_part_limit = limit
    return outcome(ours._getaddr, arg), outcome(theirs._getaddr, arg)


def outcome(getaddr: Callable[[str], object], arg: str) -> object:
    try:
        return getaddr(arg)
    except Exception as exc:  # aiosmtpd's parser raises IndexError on some arguments ("<(")
        return type(exc)


@settings(max_examples=600, deadline=None)
@given(local, domain, rest, st.sampled_from(["", " ", "  ", "\t"]), st.sampled_from([0, 5]))
@example("a", "b.dk", "SIZE=100", " ", 0)
@example("a", "b.dk", "(comment) SIZE=1", " ", 0)
@example("a..b", "c.dk", "", "", 0)
@example("a", "-b.dk", "", "", 0)
@example("a", "b.dk.", "", "", 0)
@example("toolongpart", "b.dk", "", "", 5)
def test_a_plain_address_is_read_as_aiosmtpd_reads_it(lp: str, dom: str, tail: str, gap: str, limit: int) -> None:
    ours, theirs = both(f"<{lp}@{dom}>{gap}{tail}", limit)
    assert ours == theirs


@settings(max_examples=400, deadline=None)
@given(st.text(NOISE, max_size=30))
@example("<>")
@example("")
@example("a@b.dk")
@example(" <a@b.dk>")
def test_any_argument_is_read_as_aiosmtpd_reads_it(arg: str) -> None:
    ours, theirs = both(arg)
    assert ours == theirs


def test_the_connection_tables_are_the_ones_aiosmtpd_builds_from_the_full_dir() -> None:
    """Verbs, hooks and AUTH mechanisms: the same keys as from a protocol without the mixin."""

    async def tables() -> None:
        handler = InboxHandler.__new__(InboxHandler)
        for lmtp in (False, True):
            ours = protocol_class(lmtp, Gate(ConnectionLimits(10, 10), 60.0))(handler, hostname="x", ident="x")
            base = LMTP if lmtp else SMTP

            class Full(base):  # type: ignore[valid-type, misc]
                smtp_DATA = ours.__class__.smtp_DATA
                smtp_AUTH = ours.__class__.smtp_AUTH

            class FullHandler(InboxHandler):
                def __dir__(self) -> list[str]:
                    return object.__dir__(self)

            theirs = Full(FullHandler.__new__(FullHandler), hostname="x", ident="x")
            assert sorted(ours._smtp_methods) == sorted(theirs._smtp_methods)
            assert sorted(ours._handle_hooks) == sorted(theirs._handle_hooks)
            assert sorted(ours._auth_methods) == sorted(theirs._auth_methods)
            assert ours._smtp_methods["DATA"].__func__ is ours.__class__.smtp_DATA

    asyncio.run(tables())


def test_a_plain_address_does_not_reach_the_header_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: object, arg: str) -> None:
        raise AssertionError(f"parsed by aiosmtpd: {arg}")

    monkeypatch.setattr(SMTP, "_getaddr", refuse)
    plain = Plain.__new__(Plain)
    assert plain._getaddr("<loadgen@example.org>") == ("loadgen@example.org", "")
    assert plain._getaddr("<Jens.Hansen+k-42@borger.example.dk> SIZE=20000 BODY=8BITMIME") == (
        "Jens.Hansen+k-42@borger.example.dk", "SIZE=20000 BODY=8BITMIME")
    with pytest.raises(AssertionError, match="parsed by aiosmtpd"):
        plain._getaddr('<"quoted local"@borger.example>')
