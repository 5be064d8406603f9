"""Stock aiosmtpd and our listener give the same replies to the same protocol probes (issue 18).

Three servers on 127.0.0.1, each with the same handler (`InboxHandler` over an in-memory store)
and the same protocol options (`protocol_options`: size, line, command-size and call limits):

  stock     aiosmtpd's own `SMTP` (or `LMTP`), its handler with the plain `dir()`
  fast      our listener (`SmtpListener`) with the adapter's fast paths
  fallback  our listener on aiosmtpd's own protocol, as when aiosmtpd is outside the verified range

A probe is a script of bytes written to a raw socket at once (pipelined), usually ending in
QUIT; its transcript is every byte the server sent until it closed. `fast` and `fallback` must
send the same bytes, and `stock` the same bytes once the intended differences below are
applied to its transcript (`intended`). The store names each accepted mail by a hash of what
it stored (raw bytes and envelope), so equal replies mean equal mails; the stores are compared
as well. The listener's own policy answers that come from the handler (550 for a foreign
recipient, 452 for too many, 451 when the store fails, 554 for a mail loop) are given by
both servers, through the same handler; only what the listener's protocol class adds differs:

| when                        | stock aiosmtpd                                    | our listener                        |
|-----------------------------|---------------------------------------------------|-------------------------------------|
| mail over the size limit    | 552 Error: Too much mail data                     | 552 5.3.4 Message too big           |
| MAIL … SIZE= over the limit | 552 Error: message size exceeds fixed maximum …   | 552 5.3.4 Message size exceeds …    |
| AUTH, in any state          | 503 send EHLO first / 500 not recognized / 538 …  | 502 5.5.1 AUTH not available        |
| HELP, HELP AUTH             | lists AUTH; 250 Syntax: AUTH <mechanism>          | AUTH not listed; 501 (not offered)  |
| the 10th reply 500-509      | the session goes on                               | 421 4.7.0 Too many errors, closed   |
| connection caps, session deadline, shutdown | nothing                           | 421 (test_smtp.py: item19, stop_accepting) |

The last row is not a reply to a probe; tests/test_smtp.py covers it. The address fast path
is compared with aiosmtpd's parser directly, by hypothesis, in tests/test_smtp_connection.py,
and the DATA reader with aiosmtpd's line rule in any chunking in tests/test_smtp_data.py.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import hashlib
import re
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosmtpd.lmtp
import aiosmtpd.smtp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ingest import smtp_adapter
from gateway.ingest.smtp import (
    MAX_COMMAND_ERRORS,
    NO_AUTH,
    TEMP_ERRORS,
    TOO_BIG,
    TOO_BIG_DECLARED,
    InboxHandler,
    SmtpListener,
    protocol_options,
)
from gateway.settings import SmtpSettings
from store.inbox import Accepted, IncomingMail
from tests.smtp_probes import ADDRESS, END_OF_DATA_VARIANTS, dot_stuff, message, smuggle_payload

ROOT = Path(__file__).resolve().parent.parent
CFG = SmtpSettings(port=0, max_message_size=20_000, max_recipients=3, command_call_limit=20, store_timeout_s=5.0)
HELP_OURS = b"DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY"

# (stock aiosmtpd's reply line, ours): the table in the docstring, applied to stock's transcript.
INTENDED = {
    b"552 Error: Too much mail data": TOO_BIG.encode(),
    b"552 Error: message size exceeds fixed maximum message size": TOO_BIG_DECLARED.encode(),
    b"503 Error: send EHLO first": NO_AUTH.encode(),  # AUTH before EHLO (only AUTH asks for EHLO)
    b"500 Error: command 'AUTH' not recognized": NO_AUTH.encode(),  # AUTH after HELO
    b"538 5.7.11 Encryption required for requested authentication mechanism": NO_AUTH.encode(),
    b"250 Syntax: AUTH <mechanism>": b"501 Supported commands: " + HELP_OURS,
}


def intended(stock: bytes) -> bytes:
    """Stock aiosmtpd's transcript as our listener should send it (the table above)."""
    out: list[bytes] = []
    errors, first = 0, b""
    for line in stock.split(b"\r\n")[:-1]:
        line = INTENDED.get(line, line).replace(b"Supported commands: AUTH ", b"Supported commands: ")
        out.append(line)
        first = first or line
        if line[3:4] == b"-":
            continue
        errors += first[:2] == b"50"
        first = b""
        if errors == MAX_COMMAND_ERRORS:
            out.append(TEMP_ERRORS.encode())
            break
    return b"".join(line + b"\r\n" for line in out)


class HashingStore:
    """Keeps each mail and names it by a hash of what it kept; b"X-Probe: fail" in a mail makes
    it fail (451 from the handler), b"X-Probe: full" fail as a full disk (452)."""

    def __init__(self) -> None:
        self.mails: list[IncomingMail] = []

    async def __call__(self, mail: IncomingMail) -> Accepted:
        if b"X-Probe: fail" in mail.raw:
            raise OSError("the store is down")
        if b"X-Probe: full" in mail.raw:
            raise OSError("database or disk is full")
        digest = hashlib.sha256(repr((mail.raw, mail.envelope_from, mail.envelope_to)).encode()).digest()
        ident = int.from_bytes(digest[:6], "big")
        duplicate = any(m == mail for m in self.mails)
        self.mails.append(mail)
        return Accepted(ident, duplicate)


class StockHandler(InboxHandler):
    """The same hooks, listed by the `dir()` aiosmtpd expects (the adapter's is a fast path)."""

    def __dir__(self) -> list[str]:
        return list(object.__dir__(self))


@dataclasses.dataclass
class Server:
    name: str
    port: int
    store: HashingStore


@asynccontextmanager
async def servers(cfg: SmtpSettings = CFG) -> AsyncIterator[list[Server]]:
    """stock, fast and fallback, as the module docstring says."""
    loop = asyncio.get_running_loop()
    stores = [HashingStore() for _ in range(3)]
    stock_class = aiosmtpd.lmtp.LMTP if cfg.lmtp else aiosmtpd.smtp.SMTP
    stock_handler = StockHandler(stores[0], cfg, (ADDRESS,))
    options = protocol_options(cfg, loop)
    stock = await loop.create_server(lambda: stock_class(stock_handler, **options), "127.0.0.1", 0)
    ours = [SmtpListener(InboxHandler(store, cfg, (ADDRESS,)), cfg, fast=fast) for store, fast in
            ((stores[1], True), (stores[2], False))]
    try:
        ports = [stock.sockets[0].getsockname()[1], *[await listener.start() for listener in ours]]
        yield [Server(name, port, store) for name, port, store in zip(("stock", "fast", "fallback"), ports, stores, strict=True)]
    finally:
        stock.close()
        for listener in ours:
            await listener.close(1.0)
        await stock.wait_closed()


async def transcript(port: int, script: bytes, chunk: int = 0) -> bytes:
    """Everything the server sends until it closes, while `script` is written (in pieces of
    `chunk` octets when given); without a QUIT at its end the client closes its side."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received: list[bytes] = []

    async def read() -> None:
        try:
            while data := await reader.read(65536):
                received.append(data)
        except ConnectionError:  # closed with unread pipelined commands: a reset, after the replies
            pass

    reading = asyncio.ensure_future(read())
    try:
        for start in range(0, len(script), chunk or len(script) or 1):
            writer.write(script[start:start + (chunk or len(script))])
            await writer.drain()
            if chunk:
                await asyncio.sleep(0.001)
        if not script.endswith(b"QUIT\r\n"):
            writer.write_eof()
    except ConnectionError:
        pass
    try:
        await asyncio.wait_for(reading, 20)
    finally:
        writer.close()
    return b"".join(received)


async def compare(script: bytes, cfg: SmtpSettings = CFG, chunk: int = 0) -> list[IncomingMail]:
    """Run `script` against the three servers; the replies and the stored mails must agree."""
    async with servers(cfg) as (stock, fast, fallback):
        said = {s.name: await transcript(s.port, script, chunk) for s in (stock, fast, fallback)}
        assert said["fast"] == said["fallback"]
        assert said["fast"] == intended(said["stock"]), said["stock"].decode(errors="replace")
        assert fast.store.mails == fallback.store.mails == stock.store.mails
        return fast.store.mails


# --- the probes ---------------------------------------------------------------------------------

EHLO = b"EHLO probe.example\r\n"
QUIT = b"QUIT\r\n"


def lines(*commands: str | bytes) -> bytes:
    return b"".join((c.encode() if isinstance(c, str) else c) + b"\r\n" for c in commands)


def mail(raw: bytes, sender: str = "anna@borger.example", recipients: tuple[str, ...] = (ADDRESS,),
         stuff: bool = True) -> bytes:
    """MAIL, RCPT…, DATA, the data (dot-stuffed unless told), the end of data."""
    data = dot_stuff(raw) if stuff else raw
    data += b"" if not data or data.endswith(b"\r\n") else b"\r\n"
    return lines(f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in recipients), "DATA") + data + b".\r\n"


def body(text: str | bytes, subject: str = "probe", extra: str = "") -> bytes:
    raw = message(subject, body="", message_id=f"<{subject.replace(' ', '-')}@borger.example>", extra_headers=extra)
    return raw + (text.encode() if isinstance(text, str) else text)


def sized(n: int) -> bytes:
    """A mail of exactly n octets of data (headers, then lines of 78 octets with the CRLF)."""
    head = body("", f"sized {n}")
    rest = n - len(head)
    return head + b"".join(b"x" * 76 + b"\r\n" for _ in range(rest // 78)) + b"y" * (rest % 78 - 2) + b"\r\n"


def with_line(length: int, before: int, limit_fill: int = 0) -> bytes:
    """Data with `before` octets of short lines, a line of `length` octets (CRLF included), and
    `limit_fill` octets of short lines after it (to push the mail over the size limit)."""
    return short_lines(before) + b"L" * (length - 2) + b"\r\n" + short_lines(limit_fill)


def short_lines(octets: int) -> bytes:
    return b"".join(b"s" * 48 + b"\r\n" for _ in range(octets // 50))


SESSION = {
    "ehlo-quit": EHLO + QUIT,
    "helo-then-mail": lines("HELO probe.example") + mail(body("Hej.\r\n")) + QUIT,
    "greeting-without-a-name": lines("EHLO", "HELO", "EHLO  ", "EHLO probe") + QUIT,
    "commands-before-helo": lines("MAIL FROM:<anna@borger.example>", f"RCPT TO:<{ADDRESS}>", "DATA",
                                  "VRFY anna", "NOOP", "RSET", "HELP") + QUIT,
    "lower-case-verbs": lines("ehlo probe", "mail from:<anna@borger.example>", f"rcpt to:<{ADDRESS}>", "data")
    + dot_stuff(body("Hej.\r\n", "lower case")) + b".\r\n" + lines("quit"),
    "ehlo-twice-then-a-long-mail-line": EHLO + EHLO
    + lines("MAIL FROM:<anna@borger.example> " + "X" * 500, "RSET", "MAIL FROM:<anna@borger.example>") + QUIT,
    "unknown-verbs-until-goodbye": EHLO + lines("FOO", "XCLIENT ADDR=192.0.2.1", "BDAT 10 LAST", "EXPN list",
                                                "TURN", "ETRN example", "NOOP") + QUIT,
    "empty-and-blank-lines": EHLO + lines("", " ", "\t", "NOOP") + QUIT,
    "help": EHLO + lines("HELP", "HELP MAIL", "HELP RCPT", "HELP DATA", "HELP FOO", "HELP AUTH",
                         "HELP STARTTLS") + QUIT,
    "noop-and-rset": EHLO + lines("NOOP", "NOOP hello there", "RSET", "RSET now", "MAIL FROM:<a@b.example>",
                                  "RSET", "MAIL FROM:<a@b.example>") + QUIT,
    "vrfy-expn": EHLO + lines(f"VRFY <{ADDRESS}>", "VRFY", "VRFY <bad", "VRFY anna", "EXPN staff") + QUIT,
    "starttls-absent": EHLO + lines("STARTTLS", "STARTTLS now", "NOOP") + QUIT,
    "auth-in-each-state": lines("AUTH PLAIN AGFAYgo=", "HELO probe", "AUTH LOGIN", "EHLO probe",
                                "AUTH PLAIN AGFAYgo=", "AUTH") + QUIT,
    "quit-with-an-argument": EHLO + lines("QUIT now") + QUIT,
    "http-on-the-smtp-port": b"GET / HTTP/1.1\r\nHost: gateway\r\nUser-Agent: probe\r\n\r\n" + QUIT,
    "non-ascii-commands": EHLO + b"N\xc3\x98OP\r\nMAIL FROM:<j\xf8ns@borger.example>\r\n"
    + "MAIL FROM:<jøns@borger.example> SMTPUTF8\r\n".encode() + QUIT,
    "command-lines-over-the-limits": EHLO + lines("NOOP " + "x" * 600, "MAIL FROM:<a@b.example> " + "Y" * 531,
                                                  "RSET", "NOOP " + "z" * 995, "NOOP " + "z" * 996,
                                                  "NOOP " + "z" * 3000) + mail(body("after")) + QUIT,
    "noop-flood-hits-the-call-limit": EHLO + lines(*["NOOP"] * 25) + QUIT,
    "error-budget": EHLO + lines(*["RSET x"] * 12) + QUIT,
    "nothing-after-the-greeting": b"",
}

MAIL_ARGS = [
    "<anna@borger.example>", "anna@borger.example", " <anna@borger.example>", "<>", "<anna@borger.example> SIZE=100",
    "<anna@borger.example>  SIZE=100  BODY=8BITMIME", "<anna@borger.example>\tSIZE=100", "<anna@borger.example>SIZE=1",
    "<anna@borger.example> SIZE=abc", "<anna@borger.example> SIZE=", "<anna@borger.example> SIZE=99999999",
    "<anna@borger.example> BODY=BINARYMIME", "<anna@borger.example> FOO=bar", "<anna@borger.example> SMTPUTF8",
    "<anna@borger.example> (a comment)", "<(comment)anna@borger.example>", "anna@borger.example (Anna)",
    '<"anna hansen"@borger.example>', '<"a\\"b"@borger.example>', "<@relay.example:anna@borger.example>",
    "<@a.example,@b.example:anna@borger.example>", "<anna@[192.0.2.1]>", "<anna@[IPv6:2001:db8::1]>",
    "<anna@xn--brger-kua.example>", "<anna..hansen@borger.example>", "<.anna@borger.example>",
    "<anna@-borger.example>", "<anna@borger-.example>", "<anna@borger.example.>", "<anna@borger>", "<anna>",
    "<@borger.example>", "<anna@>", "<anna@borger.example", "anna@borger.example>", "<<anna@borger.example>>",
    "<anna@borger.example> <x@y.example>", "<" + "a" * 70 + "@borger.example>", "<anna.hansen+k-42@borger.example>",
    "<ANNA@BORGER.EXAMPLE>", "<anna@borger.example>x", "<anna @borger.example>", "<anna@ borger.example>",
    "<anna@bor_ger.example>", "<anna@" + "a" * 64 + ".example>", "<anna@borger.example>\t(c)", "<(",
    "<anna@borger.example> SIZE=10 SIZE=20", "<anna@borger.example> size=10", '"anna"@borger.example',
]

RCPT_ARGS = [f"<{ADDRESS}>", ADDRESS, "<kundebetjening+k-42@statens-adm.example>", "<KUNDEBETJENING@STATENS-ADM.EXAMPLE>",
             "<nobody@statens-adm.example>", "<someone@elsewhere.example>", f"<{ADDRESS}> NOTIFY=NEVER",
             "<@relay.example:kundebetjening@statens-adm.example>", '<"kundebetjening"@statens-adm.example>',
             f"<{ADDRESS}> (comment)", "<postmaster>", "<>", "<kundebetjening@[192.0.2.1]>"]

ENVELOPE = {
    **{f"mail {arg!r}": EHLO + lines("MAIL FROM:" + arg, f"RCPT TO:<{ADDRESS}>", "RSET", "MAIL FROM: " + arg)
       + QUIT for arg in MAIL_ARGS},
    **{f"rcpt {arg!r}": EHLO + lines("MAIL FROM:<anna@borger.example>", "RCPT TO:" + arg, "RCPT TO: " + arg)
       + QUIT for arg in RCPT_ARGS},
    "mail-without-from": EHLO + lines("MAIL", "MAIL TO:<a@b.example>", "MAIL FROM:", "MAIL FROM <a@b.example>") + QUIT,
    "rcpt-without-to": EHLO + lines("MAIL FROM:<a@b.example>", "RCPT", "RCPT TO:", "RCPT FROM:<a@b.example>") + QUIT,
    "rcpt-before-mail": EHLO + lines(f"RCPT TO:<{ADDRESS}>") + QUIT,
    "nested-mail": EHLO + lines("MAIL FROM:<a@b.example>", "MAIL FROM:<c@d.example>") + QUIT,
    "helo-then-parameters": lines("HELO probe", "MAIL FROM:<a@b.example> SIZE=10", "MAIL FROM:<a@b.example>",
                                  f"RCPT TO:<{ADDRESS}> NOTIFY=NEVER") + QUIT,
    "too-many-recipients": EHLO + lines("MAIL FROM:<a@b.example>", *[f"RCPT TO:<{ADDRESS}>"] * 2,
                                        "RCPT TO:<kundebetjening+x@statens-adm.example>",
                                        "RCPT TO:<kundebetjening+y@statens-adm.example>", "DATA")
    + dot_stuff(body("Hej.\r\n", "many")) + b".\r\n" + QUIT,
}

SMUGGLING = {f"smuggling {v!r}": EHLO + lines("MAIL FROM:<outer@borger.example>", f"RCPT TO:<{ADDRESS}>", "DATA")
             + smuggle_payload(v) + b"\r\n.\r\n" + QUIT for v in END_OF_DATA_VARIANTS}

DATA = {
    "dot-stuffing": EHLO + mail(body(".\r\n..\r\n. dot\r\n.. two\r\nend.\r\n.x\r\n", "dots")) + QUIT,
    "already-stuffed-sent-raw": EHLO + mail(b"..\r\n...\r\nHej\r\n", stuff=False) + QUIT,
    "empty-data": EHLO + lines("MAIL FROM:<a@b.example>", f"RCPT TO:<{ADDRESS}>", "DATA", ".") + QUIT,
    "data-with-an-argument": EHLO + lines("MAIL FROM:<a@b.example>", f"RCPT TO:<{ADDRESS}>", "DATA now") + QUIT,
    "data-without-rcpt": EHLO + lines("DATA", "MAIL FROM:<a@b.example>", "DATA") + QUIT,
    "data-after-a-refused-rcpt": EHLO + lines("MAIL FROM:<a@b.example>", "RCPT TO:<x@elsewhere.example>", "DATA")
    + QUIT,
    "bare-cr-and-lf": EHLO + mail(body(b"one\ntwo\rthree\r\n\n.\n\r.\r\nfour\r\r\n\n\r\n", "bare")) + QUIT,
    "no-header-at-all": EHLO + mail(b"just text\r\n") + QUIT,
    "two-mails-pipelined": EHLO + mail(body("first\r\n", "first")) + mail(body("second\r\n", "second"))
    + QUIT,
    "the-same-mail-twice": EHLO + mail(body("again\r\n", "twice")) + mail(body("again\r\n", "twice")) + QUIT,
    "rset-inside-a-transaction": EHLO + lines("MAIL FROM:<a@b.example>", f"RCPT TO:<{ADDRESS}>", "RSET")
    + mail(body("after rset\r\n", "rset")) + QUIT,
    "store-fails-451": EHLO + mail(body("Hej\r\n", "fails", "X-Probe: fail\r\n")) + mail(body("ok\r\n", "ok"))
    + QUIT,
    "store-full-452": EHLO + mail(body("Hej\r\n", "full", "X-Probe: full\r\n")) + QUIT,
    "mail-loop-554": EHLO + mail(body("loop\r\n", "loop", "Received: from x by y\r\n" * 51)) + QUIT,
    "eight-bit-data": EHLO + mail(body("Hej Søren, æøå\r\n".encode("latin-1") + "Grüße\r\n".encode(), "8bit"))
    + QUIT,
    "dropped-inside-data": EHLO + lines("MAIL FROM:<a@b.example>", f"RCPT TO:<{ADDRESS}>", "DATA")
    + b"Subject: cut\r\n\r\nhalf a mail",
    **{f"line-of-{n}-octets": EHLO + mail(body(b"y" * (n - 2) + b"\r\nafter\r\n", f"line {n}")) + mail(body("next"))
       + QUIT for n in (1000, 1001, 1002, 1003, 1004, 1005, 5002)},
    "stuffed-line-of-1001": EHLO + mail(body(b"." + b"y" * 998 + b"\r\n", "stuffed long")) + QUIT,
    **{f"size-{n}": EHLO + mail(sized(n)) + mail(body("next", "next")) + QUIT
       for n in (19_999, 20_000, 20_001, 25_000, 60_000)},
    # Over the size limit and a line too long: the first that aiosmtpd meets decides.
    **{f"long-line-{length}-at-{before}-then-over-the-size": EHLO
       + mail(with_line(length, before, 21_000), stuff=False) + QUIT
       for length in (1002, 1003, 1004, 5000) for before in (0, 18_950, 19_000, 19_950, 20_000)},
    "over-the-size-then-a-long-line": EHLO + mail(with_line(5000, 25_000), stuff=False) + QUIT,
    "size-parameter-over-the-limit": EHLO + lines("MAIL FROM:<a@b.example> SIZE=20001", "MAIL FROM:<a@b.example> SIZE=20000",
                                                  f"RCPT TO:<{ADDRESS}>") + QUIT,
}


@pytest.mark.parametrize("script", list(SESSION.values()), ids=list(SESSION))
async def test_session_probes(script: bytes) -> None:
    await compare(script)


@pytest.mark.parametrize("script", list(ENVELOPE.values()), ids=list(ENVELOPE))
async def test_envelope_probes(script: bytes) -> None:
    await compare(script)


@pytest.mark.parametrize("script", list(SMUGGLING.values()), ids=list(SMUGGLING))
async def test_smuggling_probes_store_the_outer_mail_only(script: bytes) -> None:
    [stored] = await compare(script)
    assert b"SMUGGLED" in stored.raw  # the smuggled transaction is the outer mail's text


@pytest.mark.parametrize("script", list(DATA.values()), ids=list(DATA))
async def test_data_probes(script: bytes) -> None:
    await compare(script)


async def test_a_mail_sent_a_few_octets_at_a_time() -> None:
    script = EHLO + mail(body(".\r\n..\r\nx\r\n" + "y" * 1200 + "\r\nend\r\n", "trickle")) + mail(body("two")) + QUIT
    assert len(await compare(script, chunk=7)) == 1  # the 1200-octet line refuses the first


LMTP = {
    "lhlo-and-the-smtp-greetings": lines("EHLO probe", "HELO probe", "LHLO probe", "HELP") + QUIT,
    "one-reply-per-recipient": lines("LHLO probe") + mail(body("Hej\r\n", "lmtp"), recipients=(
        ADDRESS, "kundebetjening+k-1@statens-adm.example")) + QUIT,
    "a-refused-recipient-gets-no-data-reply": lines("LHLO probe", "MAIL FROM:<a@b.example>", f"RCPT TO:<{ADDRESS}>",
                                                    "RCPT TO:<x@elsewhere.example>", "DATA")
    + dot_stuff(body("Hej\r\n", "lmtp refused")) + b".\r\n" + QUIT,
    "over-the-size": lines("LHLO probe") + mail(sized(25_000), recipients=(ADDRESS, ADDRESS)) + QUIT,
    "store-fails": lines("LHLO probe") + mail(body("Hej\r\n", "lmtp fails", "X-Probe: fail\r\n"),
                                              recipients=(ADDRESS, ADDRESS)) + QUIT,
}


@pytest.mark.parametrize("script", list(LMTP.values()), ids=list(LMTP))
async def test_lmtp_probes(script: bytes) -> None:
    await compare(script, dataclasses.replace(CFG, lmtp=True))


PIECES = st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b".\r\n", b"\r\n.\r\n", b"\n.\r\n", b"\r\n.\n", b"x",
                          b"NOOP\r\n", b"QUIT", b" ", b"y" * 400, b"z" * 997, b"w" * 1000, b"v" * 1001, b"u" * 1002])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(PIECES, max_size=30), size_limit=st.sampled_from([1500, 3000, 20_000]))
def test_any_data_gets_the_same_replies(data: list[bytes], size_limit: int) -> None:
    """Random data, sent raw: where it ends early, the rest is read as commands by both."""
    script = EHLO + mail(b"".join(data), stuff=False) + lines("NOOP") + QUIT
    asyncio.run(compare(script, dataclasses.replace(CFG, max_message_size=size_limit)))


def test_intended_applies_the_table_and_the_error_budget() -> None:
    stock = b"220 x\r\n250-x\r\n250 HELP\r\n552 Error: Too much mail data\r\n" + b"501 Syntax: RSET\r\n" * 12
    assert intended(stock) == (b"220 x\r\n250-x\r\n250 HELP\r\n552 5.3.4 Message too big\r\n"
                               + b"501 Syntax: RSET\r\n" * 10 + TEMP_ERRORS.encode() + b"\r\n")


# --- the adapter: one module, its private names listed, its version pinned ----------------------

def aiosmtpd_private_names() -> set[str]:
    """The single-underscore names aiosmtpd's protocol modules define or use on their objects."""
    names: set[str] = set()
    for module in (aiosmtpd.smtp, aiosmtpd.lmtp):
        for node in ast.walk(ast.parse(Path(str(module.__file__)).read_text(encoding="utf-8"))):
            name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "name", None)
            if isinstance(name, str) and name.startswith("_") and not name.startswith("__"):
                names.add(name)
    return names


def names_used(path: Path) -> set[str]:
    """Attributes read or written and functions defined in a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | {
        n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


ADAPTER = ROOT / "gateway" / "ingest" / "smtp_adapter.py"


def test_only_the_adapter_imports_aiosmtpd() -> None:
    from tests.test_layers import imports_of

    importing = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gateway").rglob("*.py")
                 if any(name.split(".")[0] == "aiosmtpd" for name in imports_of(p))}
    assert importing == {"gateway/ingest/smtp_adapter.py"}


def test_only_the_adapter_touches_aiosmtpds_private_names_and_its_docstring_lists_them() -> None:
    private = aiosmtpd_private_names()
    assert {"_reader", "_getaddr", "_smtp_methods"} <= private  # the walk sees them
    for path in (ROOT / "gateway" / "ingest").glob("smtp*.py"):
        if path != ADAPTER:
            assert not names_used(path) & private, path.name
    listed = set(re.findall(r"^- `(_[a-z]\w*)`", smtp_adapter.__doc__ or "", re.MULTILINE))
    assert names_used(ADAPTER) & private == listed


def test_the_verified_range_is_the_pin_in_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    [pin] = [d for d in project["dependencies"] if re.match(r"aiosmtpd\b", d)]
    assert pin.replace(" ", "") == "aiosmtpd" + smtp_adapter.VERIFIED_RANGE
    assert smtp_adapter.fast_paths(), f"the installed aiosmtpd {smtp_adapter.AIOSMTPD_VERSION} is not verified"


@pytest.mark.parametrize(("version", "verified"), [
    ("1.4.6", True), ("1.4.7", True), ("1.4.99", True), ("1.4.6.post1", True), ("1.4.5", False), ("1.4.4a3", False),
    ("1.5.0", False), ("1.5.0a1", False), ("1.4.7rc1", False), ("2.0", False), ("", False), ("unknown", False),
])
def test_verified_versions(version: str, verified: bool) -> None:
    assert smtp_adapter.verified(version) is verified


FAKE_VERSION = """
import asyncio, logging, aiosmtpd
aiosmtpd.__version__ = "1.5.0"  # as if another aiosmtpd were installed
from gateway.ingest import smtp_adapter
from gateway.ingest.smtp import Gate, ConnectionLimits, InboxHandler, SmtpListener, protocol_class
from gateway.settings import SmtpSettings

class Events(logging.Handler):
    def emit(self, record):
        print("event", record.getMessage(), getattr(record, "fast_paths", ""))

logging.getLogger("gateway.smtp").addHandler(Events())
logging.getLogger("gateway.smtp").setLevel(logging.INFO)
print("fast paths", smtp_adapter.fast_paths())
cls = protocol_class(False, Gate(ConnectionLimits(1, 1), 1.0))
print("stock protocol", smtp_adapter.FastSMTP not in cls.__mro__ and aiosmtpd.smtp.SMTP in cls.__mro__)
handler = InboxHandler(None, SmtpSettings(), ())
print("stock dir", "__init__" in dir(handler))  # aiosmtpd's own dir(), not the adapter's shorter one

async def main():
    listener = SmtpListener(handler, SmtpSettings(port=0))
    await listener.start()
    await listener.close(0.1)

asyncio.run(main())
"""


def test_outside_the_verified_range_the_listener_runs_stock_aiosmtpd_and_warns() -> None:
    done = subprocess.run([sys.executable, "-c", FAKE_VERSION], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:3] == ["fast paths False", "stock protocol True", "stock dir True"]
    assert "event smtp.aiosmtpd_unverified " in done.stdout
    assert "event smtp.listening False" in done.stdout


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
async def test_the_adapters_tables_are_the_ones_aiosmtpd_builds(lmtp: bool) -> None:
    """The adapter builds a session's verb, hook and AUTH tables and the EHLO hook's form from
    what it found for the classes once; aiosmtpd's own `SMTP.__init__`, with the full `dir()`,
    builds the same (the verbs as the same functions, the hooks bound to the same handler)."""
    from aiosmtpd.smtp import SMTP as StockSMTP

    from gateway.ingest.smtp import ConnectionLimits, Gate, InboxHandler, protocol_class
    from gateway.settings import SmtpSettings

    handler = InboxHandler(None, SmtpSettings(), ())  # type: ignore[arg-type]
    cls = protocol_class(lmtp, Gate(ConnectionLimits(1, 1), 1.0))
    assert smtp_adapter.FastSMTP in cls.__mro__

    class Stock(cls):  # type: ignore[valid-type, misc]
        def __init__(self, handler: Any) -> None:
            StockSMTP.__init__(self, handler, decode_data=False)  # dir() never emptied

        def __dir__(self) -> list[str]:
            return list(object.__dir__(self))

    fast, stock = cls(handler), Stock(handler)
    assert {k: v.__func__ for k, v in fast._smtp_methods.items()} == \
        {k: v.__func__ for k, v in stock._smtp_methods.items()}
    assert len(fast._smtp_methods) > 10
    assert fast._handle_hooks == stock._handle_hooks and "DATA" in fast._handle_hooks
    assert {k: (v.method.__func__, v.is_builtin) for k, v in fast._auth_methods.items()} == \
        {k: (v.method.__func__, v.is_builtin) for k, v in stock._auth_methods.items()}
    assert set(fast._auth_methods) == {"LOGIN", "PLAIN"}
    assert fast._ehlo_hook_ver == stock._ehlo_hook_ver == "new"
