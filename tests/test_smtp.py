"""The SMTP/LMTP listener on a free loopback port inside the test's event loop.

Clients: the standard library's smtplib (in a thread), swaks (a subprocess) and the raw-socket
probes of tests/smtp_probes.py for framing that well-behaved clients never send.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import smtplib
import sqlite3
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.pool import Pool

from gateway.app import App, open_app
from gateway.clock import FrozenClock
from gateway.ingest.smtp import (
    BAD_ADDRESS,
    NO_RELAY,
    NO_SUCH_USER,
    InboxHandler,
    Recipients,
    SmtpListener,
    hop_count,
)
from store.inbox import Accepted, GroupCommitter, IncomingMail
from store.models import InboundMail, InboundRaw
from store.sqlite.writer import QUIET_S
from store.writer import InboxWriter
from tests import smtp_probes as probes
from tests.conftest import ADDRESS, build_mail, make_settings
from tests.smtp_probes import RawSmtp, Reply

SWAKS = shutil.which("swaks")


@dataclass
class Server:
    app: App
    port: int
    listener: SmtpListener
    tmp_path: Path

    async def stored(self) -> list[dict[str, Any]]:
        table = InboundMail.__table__  # type: ignore[attr-defined]
        raw = InboundRaw.__table__  # type: ignore[attr-defined]
        async with self.app.engine.connect() as conn:
            rows = (await conn.execute(select(table.c.id, table.c.envelope_from, table.c.envelope_to, raw.c.raw)
                                       .join(raw, raw.c.inbound_id == table.c.id)
                                       .order_by(table.c.id))).mappings().all()
        return [dict(r) for r in rows]

    async def cases(self) -> int:
        await self.app.worker.run_once()
        async with self.app.engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM support_case"))).scalar_one())


@asynccontextmanager
async def serve(tmp_path: Path, store: Callable[[App], Callable[[IncomingMail], Awaitable[Accepted]]] | None = None,
                handler_class: type[InboxHandler] = InboxHandler, database: dict[str, Any] | None = None,
                **smtp: Any) -> AsyncIterator[Server]:
    settings = make_settings(tmp_path, smtp=smtp, database=database or {})
    async with open_app(settings, clock=FrozenClock(), migrate=True) as app:  # as `gateway run` does
        committer = GroupCommitter(app.inbox, app.clock.now)
        handler = handler_class(store(app) if store else committer.submit, settings.smtp, settings.mail.addresses)
        listener = SmtpListener(handler, settings.smtp)
        port = await listener.start()
        try:
            yield Server(app, port, listener, tmp_path)
        finally:
            await listener.close(1.0)
            await committer.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with serve(tmp_path, max_message_size=20_000, max_recipients=3) as srv:
        yield srv


def smtplib_send(port: int, raw: bytes, sender: str = "jens@borger.example",
                 recipients: tuple[str, ...] = (ADDRESS,), starttls: bool = False) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.borger.example")
        if starttls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            client.starttls(context=ctx)
            client.ehlo("client.borger.example")
        return client.sendmail(sender, list(recipients), raw)


async def swaks(port: int, *args: str) -> tuple[int, str]:
    if SWAKS is None:
        pytest.skip("swaks is not installed (make system-deps installs it)")
    proc = await asyncio.create_subprocess_exec(
        SWAKS, "--server", "127.0.0.1", "--port", str(port), "--timeout", "20", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(errors="replace")


def server_said(transcript: str) -> list[str]:
    """The server's replies in a swaks transcript (`<-` and `<**` lines)."""
    return [line[3:].strip() for line in transcript.splitlines() if line.startswith(("<- ", "<**", "<~ ", "<~*"))]


# --- pure parts -------------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "expected"), [
    (ADDRESS, None),
    ("KundeBetjening@Statens-Adm.Example", None),
    ("kundebetjening+k7Qx2@statens-adm.example", None),
    ("kundebetjening+@statens-adm.example", None),
    ("someone@statens-adm.example", NO_SUCH_USER),
    ("kundebetjening-x@statens-adm.example", NO_SUCH_USER),
    ("kundebetjening@statens-adm.example.evil.example", NO_RELAY),
    ("victim@elsewhere.example", NO_RELAY),
    ("kundebetjening@elsewhere.example", NO_RELAY),
    ("no-at-sign", BAD_ADDRESS),
    ('"kundebetjening@statens-adm.example"@evil.example', BAD_ADDRESS),
])
def test_recipients_accepts_only_our_addresses_and_tags(address: str, expected: str | None) -> None:
    assert Recipients((ADDRESS,)).check(address) == expected


@pytest.mark.parametrize(("raw", "hops"), [
    (b"Subject: x\r\n\r\nbody", 0),
    (b"Received: from a\r\nReceived: from b\r\n\tby c\r\nSubject: x\r\n\r\nbody", 2),
    (b"Subject: x\r\n\r\nReceived: from a body line\r\n", 0),
    (b"X-Received: from a\r\nreceived : b\r\nSubject: x\n\nReceived: y\n", 1),
    (b"Received: a\nReceived: b\nReceived: c", 3),
])
def test_hop_count_counts_received_in_the_header_block_only(raw: bytes, hops: int) -> None:
    assert hop_count(raw) == hops


# --- delivery ---------------------------------------------------------------------------------

async def test_smtplib_delivery_becomes_a_case_and_250_names_the_inbox_id(server: Server) -> None:
    raw = build_mail(subject="Via smtplib").replace(b"\n", b"\r\n")
    refused = await asyncio.to_thread(smtplib_send, server.port, raw)
    assert refused == {}
    [row] = await server.stored()
    assert row["raw"] == raw  # byte for byte
    assert row["envelope_from"] == "jens@borger.example" and row["envelope_to"] == [ADDRESS]
    assert await server.cases() == 1
    reply = await probes.deliver(server.port, probes.message("second"))
    assert reply.code == 250 and reply.text == f"2.0.0 Ok: queued as {row['id'] + 1}"


async def test_swaks_delivery_becomes_a_case(server: Server) -> None:
    rc, out = await swaks(server.port, "-f", "anna@borger.example", "-t", "kundebetjening+abc@statens-adm.example",
                          "--header", "Subject: swaks test", "--body", "Hej fra swaks")
    assert rc == 0, out
    assert any(r.startswith("250 2.0.0 Ok: queued as 1") for r in server_said(out)), out
    assert await server.cases() == 1


@pytest.mark.parametrize(("recipient", "reply"), [
    ("nobody@statens-adm.example", "550 5.1.1"),
    ("victim@elsewhere.example", "550 5.7.1"),
])
async def test_item03_item04_swaks_refused_recipient_gets_550_at_rcpt(server: Server, recipient: str, reply: str) -> None:
    rc, out = await swaks(server.port, "-f", "anna@borger.example", "-t", recipient)
    assert rc == 24, out  # swaks: no recipient accepted
    assert any(r.startswith(reply) for r in server_said(out)), out
    assert await server.stored() == []


async def test_item01_swaks_oversize_gets_552_after_the_dot_and_the_session_goes_on(server: Server) -> None:
    rc, out = await swaks(server.port, "-f", "anna@borger.example", "-t", ADDRESS,
                          "--body", "x" * 70 + "\n" + ("y" * 70 + "\n") * 400)
    assert rc == 26, out
    assert "552 5.3.4 Message too big" in server_said(out), out
    assert await server.stored() == []
    assert (await probes.deliver(server.port, probes.message())).code == 250


async def test_item22_swaks_null_sender_is_accepted_and_stored_as_null(server: Server) -> None:
    rc, out = await swaks(server.port, "-f", "<>", "-t", ADDRESS, "--header", "Subject: Undeliverable")
    assert rc == 0, out
    [row] = await server.stored()
    assert row["envelope_from"] == "<>"


async def test_item02_size_parameter_over_the_limit_gets_552_at_mail(server: Server) -> None:
    smtp = await RawSmtp.connect(server.port)
    try:
        ehlo = await smtp.greet()
        assert "SIZE 20000" in ehlo.text
        reply = await smtp.command("MAIL FROM:<anna@borger.example> SIZE=20001")
        assert reply.code == 552 and reply.text.startswith("5.3.4"), reply
        assert (await smtp.command("MAIL FROM:<anna@borger.example> SIZE=19000")).code == 250
    finally:
        await smtp.close()


async def test_item05_recipient_limit_answers_452_and_keeps_the_first(server: Server) -> None:
    smtp = await RawSmtp.connect(server.port)
    try:
        await smtp.greet()
        await smtp.command("MAIL FROM:<anna@borger.example>")
        replies = [await smtp.command(f"RCPT TO:<kundebetjening+{i}@statens-adm.example>") for i in range(5)]
        assert [r.code for r in replies] == [250, 250, 250, 452, 452]
        assert replies[-1].text.startswith("4.5.3")
        await smtp.command("DATA")
        await smtp.send(probes.message() + b".\r\n")
        assert (await smtp.reply()).code == 250
    finally:
        await smtp.close()
    [row] = await server.stored()
    assert len(row["envelope_to"]) == 3


async def test_item06_repeated_rcpt_is_one_stored_message_and_one_case(server: Server) -> None:
    reply = await probes.deliver(server.port, probes.message(), recipients=(ADDRESS, ADDRESS.upper(), ADDRESS))
    assert reply.code == 250
    [row] = await server.stored()
    assert row["envelope_to"] == [ADDRESS]
    assert await server.cases() == 1


async def test_item25_the_same_mail_twice_is_acknowledged_twice_and_stored_once(server: Server) -> None:
    raw = probes.message("twice")
    first = await probes.deliver(server.port, raw)
    relayed = b"Received: from mx2.borger.example by gw; Mon, 5 Jan 2026 10:00:01 +0000\r\n" + raw
    second = await probes.deliver(server.port, relayed)
    assert first.text == "2.0.0 Ok: queued as 1"
    assert second.code == 250 and second.text == "2.0.0 Ok: already have it as 1"
    assert len(await server.stored()) == 1
    assert await server.cases() == 1


async def test_item22_item24_null_sender_raw_and_vrfy_expn_auth(server: Server) -> None:
    smtp = await RawSmtp.connect(server.port)
    try:
        ehlo = await smtp.greet()
        assert "AUTH" not in ehlo.text and "STARTTLS" not in ehlo.text
        assert (await smtp.command(f"VRFY {ADDRESS}")).code == 252
        assert (await smtp.command("EXPN staff")).code == 502
        assert (await smtp.command("AUTH PLAIN AGFsaWNlAHNlY3JldA==")).code == 502
        assert (await smtp.command("MAIL FROM:<>")).code == 250
        assert (await smtp.command(f"RCPT TO:<{ADDRESS}>")).code == 250
    finally:
        await smtp.close()


# --- hostile input ----------------------------------------------------------------------------

@pytest.mark.parametrize("end_of_data", probes.END_OF_DATA_VARIANTS, ids=repr)
async def test_item09_smuggling_sequences_store_exactly_one_message(server: Server, end_of_data: bytes) -> None:
    replies = await probes.smuggle(server.port, end_of_data)
    assert [r.code for r in replies[:3]] == [250, 250, 354]
    assert sum(1 for r in replies[3:] if r.code == 250) == 1
    rows = await server.stored()
    assert len(rows) == 1
    head = rows[0]["raw"].split(b"\r\n\r\n", 1)[0]
    assert b"SMUGGLED" not in head and b"SMUGGLED" in rows[0]["raw"]


@pytest.mark.parametrize(("hops", "code"), [(49, 250), (50, 554), (80, 554)])
async def test_item23_received_headers_over_the_limit_are_a_loop(server: Server, hops: int, code: int) -> None:
    trace = "".join(f"Received: from hop{i}.example by hop{i + 1}.example; Mon, 5 Jan 2026\r\n" for i in range(hops))
    reply = await probes.deliver(server.port, probes.message(extra_headers=trace))
    assert reply.code == code, reply
    assert len(await server.stored()) == (1 if code == 250 else 0)
    if code == 554:
        assert reply.text.startswith("5.4.6")


async def test_item21_command_flood_is_cut_off_with_421(tmp_path: Path) -> None:
    async with serve(tmp_path, command_call_limit=20) as srv:
        smtp = await RawSmtp.connect(srv.port)
        try:
            await smtp.greet()
            await smtp.send(b"NOOP\r\n" * 200)
            codes = []
            while (reply := await smtp.reply()).code:
                codes.append(reply.code)
        finally:
            await smtp.close()
    assert codes == [250] * 20 + [421]


async def test_transaction_commands_have_a_larger_budget_than_noop(tmp_path: Path) -> None:
    async with serve(tmp_path, command_call_limit=5) as srv:
        smtp = await RawSmtp.connect(srv.port)
        try:
            await smtp.greet()
            replies = [await probes.transaction(smtp, probes.message(f"mail {i}")) for i in range(8)]
        finally:
            await smtp.close()
    assert [r.code for r in replies] == [250] * 8


@pytest.mark.parametrize("junk", [
    b"POST / HTTP/1.1\r\nHost: x\r\n" + b"X-Header: y\r\n" * 200 + b"\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100 + b"\r\n" * 20,
])
async def test_item20_junk_and_http_are_disconnected(server: Server, junk: bytes) -> None:
    smtp = await RawSmtp.connect(server.port)
    try:
        assert (await smtp.reply()).code == 220
        await smtp.send(junk)
        assert await smtp.closed(timeout=5)
    finally:
        await smtp.close()


async def test_item18_client_dropping_mid_data_stores_nothing(server: Server) -> None:
    smtp = await RawSmtp.connect(server.port)
    await smtp.greet()
    await smtp.command("MAIL FROM:<anna@borger.example>")
    await smtp.command(f"RCPT TO:<{ADDRESS}>")
    await smtp.command("DATA")
    await smtp.send(probes.message())  # no final dot
    await smtp.close()
    await asyncio.sleep(0.1)
    assert await server.stored() == []
    assert server.listener.sessions == 0

async def nothing_more(smtp: RawSmtp, wait: float = 0.5) -> bool:
    """True when the server sends no further reply within `wait` seconds."""
    try:
        extra = await smtp.reply(timeout=wait)
    except TimeoutError:
        return True
    return extra.code == 0  # closed, which the caller's next step then shows


@pytest.mark.parametrize("line", [
    b"NOOP " + b"x" * 508,
    b"RCPT TO:<kundebetjening+" + b"t" * 470 + b"@statens-adm.example>",
    b"EHLO " + b"h" * 600,
    b"VRFY " + b"x" * 1100 + b"\r\nMAIL FROM:<tail@borger.example>",  # the tail is a line of its own
    b"X" * 1100 + b"MAIL FROM:<evil@borger.example>",  # past the 1001-octet read buffer
    b"NOOP " + b"x" * 100_000,
], ids=["noop-513", "rcpt-513", "ehlo-605", "vrfy-1105", "tail-1131", "noop-100005"])
async def test_item07_command_line_over_512_octets_gets_500_and_the_session_goes_on(
        server: Server, line: bytes) -> None:
    assert len(line.split(b"\r\n")[0]) > 512  # octets before the CRLF
    smtp = await RawSmtp.connect(server.port)
    try:
        assert (await smtp.greet()).code == 250
        assert (await smtp.command("MAIL FROM:<anna@borger.example>")).code == 250
        await smtp.send(line + b"\r\n")  # in one write with whatever follows it
        assert await smtp.reply() == Reply(500, "Command line too long")
        if b"\r\n" in line:  # the line after the long one is read as a command again
            assert await smtp.reply() == Reply(503, "Error: nested MAIL command")
        assert await nothing_more(smtp)  # nothing inside the long line ran as a command
        assert await smtp.command("NOOP") == Reply(250, "OK")
        # the transaction begun before the long line is intact and completes
        assert (await smtp.command(f"RCPT TO:<{ADDRESS}>")).code == 250
        assert (await smtp.command("DATA")).code == 354
        await smtp.send(probes.message("after a long command") + b".\r\n")
        assert await smtp.reply() == Reply(250, "2.0.0 Ok: queued as 1")
        assert await smtp.command("QUIT") == Reply(221, "Bye")
    finally:
        await smtp.close()
    [row] = await server.stored()
    assert row["envelope_from"] == "anna@borger.example" and row["envelope_to"] == [ADDRESS]


async def test_item07_the_limit_is_512_octets_and_mail_gets_26_more_for_size(server: Server) -> None:
    """The exact edges: 512 octets before the CRLF are a command, 513 are not (before and after
    EHLO). MAIL gets 26 octets more once EHLO offered SIZE (RFC 1870 §3)."""
    def mail_from(octets: int) -> bytes:
        return b"MAIL FROM:<" + b"a" * (octets - 27) + b"@borger.example>"

    smtp = await RawSmtp.connect(server.port)
    try:
        assert (await smtp.reply()).code == 220
        assert await smtp.command(b"NOOP " + b"x" * 507) == Reply(250, "OK")
        assert await smtp.command(b"NOOP " + b"x" * 508) == Reply(500, "Command line too long")
        assert (await smtp.command("EHLO probe.example")).code == 250
        assert await smtp.command(b"NOOP " + b"x" * 507) == Reply(250, "OK")
        assert await smtp.command(b"NOOP " + b"x" * 508) == Reply(500, "Command line too long")
        assert len(mail_from(539)) == 539
        assert await smtp.command(mail_from(539)) == Reply(500, "Command line too long")
        assert await smtp.command(mail_from(538)) == Reply(250, "OK")
    finally:
        await smtp.close()


@pytest.mark.parametrize(("chars", "code"), [(998, 250), (999, 250), (1000, 500), (1001, 500), (5000, 500)])
async def test_item08_data_line_over_the_limit_gets_500_after_the_dot_and_the_session_goes_on(
        server: Server, chars: int, code: int) -> None:
    """A text line of `chars` octets plus CRLF. RFC 5321 §4.5.3.1.6 allows 1000 with the CRLF;
    aiosmtpd (`line_length_limit = 1001`) takes one more and refuses anything longer, after the dot."""
    raw = probes.message(f"line of {chars}", body="Hej.\r\n" + "y" * chars + "\r\nMvh Anna\r\n")
    following = probes.message("next")
    smtp = await RawSmtp.connect(server.port)
    try:
        await smtp.greet()
        for command in ("MAIL FROM:<anna@borger.example>", f"RCPT TO:<{ADDRESS}>", "DATA"):
            assert (await smtp.command(command)).code in (250, 354)
        await smtp.send(raw)
        assert await nothing_more(smtp)  # no early answer: the refusal waits for the end of the data
        await smtp.send(b".\r\n")
        reply = await smtp.reply()
        if code == 500:
            assert reply == Reply(500, "Line too long (see RFC5321 4.5.3.1.6)")
            assert await server.stored() == []
        else:
            assert reply == Reply(250, "2.0.0 Ok: queued as 1")
            [row] = await server.stored()
            assert row["raw"] == raw  # byte for byte, the long line included
        assert await nothing_more(smtp, 0.2)
        # the refused transaction is gone (no 503 nested MAIL) and the session takes the next mail
        assert (await smtp.command("MAIL FROM:<bo@borger.example>")) == Reply(250, "OK")
        assert (await smtp.command(f"RCPT TO:<{ADDRESS}>")).code == 250
        assert (await smtp.command("DATA")).code == 354
        await smtp.send(following + b".\r\n")
        assert (await smtp.reply()).code == 250
        assert server.listener.sessions == 1
        assert await smtp.command("QUIT") == Reply(221, "Bye")
    finally:
        await smtp.close()
    rows = await server.stored()
    assert [r["envelope_from"] for r in rows] == (["bo@borger.example"] if code == 500
                                                   else ["anna@borger.example", "bo@borger.example"])
    assert rows[-1]["raw"] == following  # nothing of the dropped data went into the next mail


STRICT_ASCII = Reply(500, "Error: strict ASCII mode")


@pytest.mark.parametrize(("command", "reply"), [
    ("MAIL FROM:<jøns@borger.example>", STRICT_ASCII),  # UTF-8 local part
    ("MAIL FROM:<jøns@borger.example> SMTPUTF8", STRICT_ASCII),
    ("MAIL FROM:<jens@børger.example>", STRICT_ASCII),  # U-label domain
    ("MAIL FROM:<jens@børger.example> SMTPUTF8", STRICT_ASCII),
    (b"MAIL FROM:<j\xf8ns@borger.example>", STRICT_ASCII),  # 8-bit, not even UTF-8
    ("MAIL FROM:<jens@borger.example> SMTPUTF8", Reply(501, "Error: SMTPUTF8 disabled")),
    ("RCPT TO:<kundebetjéning@statens-adm.example>", STRICT_ASCII),
    ("RCPT TO:<kundebetjening@stätens-adm.example>", STRICT_ASCII),
    ("RCPT TO:<kundebetjéning@statens-adm.example> SMTPUTF8", STRICT_ASCII),
    ("RCPT TO:<kundebetjening@statens-adm.example> SMTPUTF8",
     Reply(555, "RCPT TO parameters not recognized or not implemented")),
], ids=["mail-utf8-local", "mail-utf8-local-smtputf8", "mail-ulabel", "mail-ulabel-smtputf8", "mail-8bit",
        "mail-ascii-smtputf8", "rcpt-utf8-local", "rcpt-ulabel", "rcpt-utf8-smtputf8", "rcpt-ascii-smtputf8"])
async def test_item53_non_ascii_envelope_is_refused_at_the_command_and_the_session_goes_on(
        server: Server, command: str | bytes, reply: Reply) -> None:
    """One rule: the listener does not offer SMTPUTF8, so any non-ASCII octet in MAIL or RCPT is
    refused permanently at that command (before any address parsing or handler runs), and so is
    the SMTPUTF8 parameter itself. Nothing is stored; the same session delivers the next mail."""
    line = command.encode() if isinstance(command, str) else command
    smtp = await RawSmtp.connect(server.port)
    try:
        ehlo = await smtp.greet()
        assert ehlo.code == 250 and "SMTPUTF8" not in ehlo.text
        if line.startswith(b"RCPT"):
            assert (await smtp.command("MAIL FROM:<anna@borger.example>")).code == 250
        assert await smtp.command(line) == reply
        assert await nothing_more(smtp, 0.2)
        if line.startswith(b"MAIL"):  # the refused MAIL started no transaction
            assert await smtp.command(f"RCPT TO:<{ADDRESS}>") == Reply(503, "Error: need MAIL command")
            assert (await smtp.command("MAIL FROM:<anna@borger.example>")).code == 250
        assert (await smtp.command(f"RCPT TO:<{ADDRESS}>")).code == 250
        assert (await smtp.command("DATA")).code == 354
        await smtp.send(probes.message("after non-ascii") + b".\r\n")
        assert await smtp.reply() == Reply(250, "2.0.0 Ok: queued as 1")
    finally:
        await smtp.close()
    [row] = await server.stored()
    assert row["envelope_from"] == "anna@borger.example" and row["envelope_to"] == [ADDRESS]


async def test_item53_a_label_domains_are_plain_ascii_and_follow_the_recipient_rules(server: Server) -> None:
    """The IDNA (A-label) form of an IDN domain is ordinary ASCII: accepted as the sender, and as
    a recipient judged like any other domain (ours, a relay attempt, or not a domain at all)."""
    sender = "jens@xn--brger-vua.example"  # børger.example
    smtp = await RawSmtp.connect(server.port)
    try:
        await smtp.greet()
        assert await smtp.command(f"MAIL FROM:<{sender}>") == Reply(250, "OK")
        assert await smtp.command("RCPT TO:<kundebetjening@xn--brger-vua.example>") == Reply(550, "5.7.1 Relaying denied")
        assert await smtp.command("RCPT TO:<kundebetjening@xn--.example>") == Reply(553, "5.1.3 Invalid address")
        assert (await smtp.command(f"RCPT TO:<{ADDRESS}>")).code == 250
        assert (await smtp.command("DATA")).code == 354
        await smtp.send(probes.message("idn sender", sender=sender) + b".\r\n")
        assert (await smtp.reply()).code == 250
    finally:
        await smtp.close()
    [row] = await server.stored()
    assert row["envelope_from"] == sender and row["envelope_to"] == [ADDRESS]
    assert await server.cases() == 1


# --- failures of our own ----------------------------------------------------------------------

class ExplodingRcpt(InboxHandler):
    async def handle_RCPT(self, *args: Any) -> str:
        raise ConnectionError("database is unavailable at 10.0.0.7")


async def test_item11_exception_in_a_hook_answers_451_without_internals(tmp_path: Path) -> None:
    async with serve(tmp_path, handler_class=ExplodingRcpt) as srv:
        smtp = await RawSmtp.connect(srv.port)
        try:
            await smtp.greet()
            await smtp.command("MAIL FROM:<anna@borger.example>")
            reply = await smtp.command(f"RCPT TO:<{ADDRESS}>")
        finally:
            await smtp.close()
    assert reply.code == 451 and reply.text.startswith("4.3.0")
    assert "ConnectionError" not in reply.text and "10.0.0.7" not in reply.text


def raising_store(app: App) -> Callable[[IncomingMail], Awaitable[Accepted]]:
    async def store(mail: IncomingMail) -> Accepted:
        raise RuntimeError("secret internals")
    return store


async def test_exception_in_the_store_answers_451_and_the_session_goes_on(tmp_path: Path) -> None:
    async with serve(tmp_path, store=raising_store) as srv:
        smtp = await RawSmtp.connect(srv.port)
        try:
            await smtp.greet()
            first = await probes.transaction(smtp, probes.message())
            second = await probes.transaction(smtp, probes.message())
        finally:
            await smtp.close()
    for reply in (first, second):
        assert reply.code == 451 and "secret" not in reply.text and "RuntimeError" not in reply.text


@contextmanager
def exclusive_lock(app: App) -> Iterator[None]:
    """Another connection holds the database's write lock, as a stuck process would."""
    url = app.engine.url
    if url.get_backend_name() != "sqlite":
        pytest.skip("the lock fault is written for SQLite; PostgreSQL uses store_timeout in test_daemon")
    conn = sqlite3.connect(str(url.database), isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


async def test_item30_locked_store_answers_451_and_the_retry_makes_one_case(tmp_path: Path) -> None:
    async with serve(tmp_path, database={"busy_timeout_ms": 200}, store_timeout_s=5.0) as srv:
        raw = probes.message("locked")
        with exclusive_lock(srv.app):
            reply = await probes.deliver(srv.port, raw)
            assert reply.code == 451 and reply.text.startswith("4.3.0"), reply
        assert await srv.stored() == []
        retry = await probes.deliver(srv.port, raw)
        assert retry.code == 250 and retry.text == "2.0.0 Ok: queued as 1"
        assert len(await srv.stored()) == 1
        assert await srv.cases() == 1

class FullStore:
    """The store's file can grow no more, as on a full disk.

    While `full`, every connection to the store's file that is checked out of any pool (the
    app's engine, the daemon's inbox writer) gets SQLite's `max_page_count` at the file's
    current size, so SQLite itself fails a write that needs a new page with SQLITE_FULL
    ("database or disk is full"), as it does when the disk is full. Nothing of ours is replaced.
    """

    def __init__(self, app: App) -> None:
        if app.engine.dialect.name != "sqlite":
            pytest.skip("the full store is made with SQLite's max_page_count")
        self.path = str(app.engine.url.database)
        self.full = False

    def _checkout(self, dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA database_list")
        if any(row[1] == "main" and row[2] == self.path for row in cursor.fetchall()):
            # SQLite never sets the limit below the file's size: 1 means "as big as it is now"
            cursor.execute(f"PRAGMA max_page_count = {1 if self.full else 1_073_741_823}")
        cursor.close()

    def __enter__(self) -> FullStore:
        event.listen(Pool, "checkout", self._checkout)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(Pool, "checkout", self._checkout)


_daemon_writers: list[tuple[InboxWriter, GroupCommitter]] = []


def daemon_writer(app: App) -> Callable[[IncomingMail], Awaitable[Accepted]]:
    """The daemon's SQLite path: group commits through the InboxWriter thread."""
    if app.engine.dialect.name != "sqlite":
        pytest.skip("the daemon's inbox writer is the SQLite path")
    writer = InboxWriter(app.engine.url.render_as_string(hide_password=False),
                               app.settings.database.busy_timeout_ms / 1000)
    committer = GroupCommitter(writer, app.clock.now)
    _daemon_writers.append((writer, committer))
    return committer.submit


class FullDisk:
    """A small tmpfs that can be filled to the last bytes: every process that writes there
    (the daemon's inbox writer is one of its own) gets ENOSPC, which SQLite reports as
    SQLITE_FULL, as on a real full disk. Mounting needs root; elsewhere the test is skipped."""

    def __init__(self, path: Path, size_mb: int = 8) -> None:
        self.path = path
        self.size_mb = size_mb
        self.filler = path / "filler"

    def __enter__(self) -> FullDisk:
        self.path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        return self

    def fill(self, leave: int) -> None:
        """Take all the space but `leave` bytes."""
        with self.filler.open("wb") as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        free = shutil.disk_usage(self.path).free
        with self.filler.open("r+b") as out:
            out.truncate(max(0, self.filler.stat().st_size - max(0, leave - free)))

    def make_room(self) -> None:
        self.filler.unlink()

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


async def _full_then_room(srv: Server, tmp_path: Path, make_full: Callable[[], None],
                          make_room: Callable[[], None]) -> None:
    """The store cannot take a ~200 KB mail: 452, nothing kept; room again: the retry gets 250."""
    body = "".join(f"Linje {i}: {'æøå' * (i % 7)} {i * 7919 % 104729}\r\n" for i in range(6000))  # ~200 KB
    raw = probes.message("disk full", body=body)
    make_full()
    smtp = await RawSmtp.connect(srv.port)
    try:
        await smtp.greet()
        first = await probes.transaction(smtp, raw)
        assert first == Reply(452, "4.3.1 Insufficient system storage, please try again later")
        table = InboundMail.__table__  # type: ignore[attr-defined]
        raws = InboundRaw.__table__  # type: ignore[attr-defined]
        async with srv.app.engine.connect() as conn:  # neither half of the mail is kept
            assert (await conn.execute(select(func.count()).select_from(table))).scalar_one() == 0
            assert (await conn.execute(select(func.count()).select_from(raws))).scalar_one() == 0
        assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []
        make_room()  # space again: the sender's retry, in the same session
        retry = await probes.transaction(smtp, raw)
        assert retry == Reply(250, "2.0.0 Ok: queued as 1")
    finally:
        await smtp.close()
    [row] = await srv.stored()
    assert row["raw"] == raw
    assert await srv.cases() == 1


@pytest.mark.sqlite_only
async def test_item14_full_store_answers_452_stores_no_partial_row_and_the_retry_gets_250(tmp_path: Path) -> None:
    async with serve(tmp_path) as srv:
        with FullStore(srv.app) as disk:
            async with srv.app.engine.connect() as conn:
                page = (await conn.execute(text("PRAGMA page_size"))).scalar_one()
                free = (await conn.execute(text("PRAGMA freelist_count"))).scalar_one()
            assert (free + 10) * page < 200_000  # the mail cannot fit in the file as it is
            await _full_then_room(srv, tmp_path, lambda: setattr(disk, "full", True),
                                  lambda: setattr(disk, "full", False))


@pytest.mark.sqlite_only
async def test_item14_a_full_disk_under_the_daemons_inbox_writer_answers_452_and_the_retry_gets_250(
        tmp_path: Path) -> None:
    """The daemon's writer is a process of its own: the disk itself is full for it."""
    with FullDisk(tmp_path / "disk") as disk:
        try:
            async with serve(tmp_path, store=daemon_writer,
                             database={"url": f"sqlite+aiosqlite:///{disk.path}/gateway.db"}) as srv:
                await _full_then_room(srv, tmp_path, lambda: disk.fill(leave=32 * 1024), disk.make_room)
        finally:
            while _daemon_writers:
                writer, committer = _daemon_writers.pop()
                await committer.close()
                writer.close()


def slow_store(app: App) -> Callable[[IncomingMail], Awaitable[Accepted]]:
    async def store(mail: IncomingMail) -> Accepted:
        await asyncio.sleep(5)
        return await app.accept(mail)
    return store


async def test_item13_a_commit_slower_than_the_budget_answers_451_in_time(tmp_path: Path) -> None:
    async with serve(tmp_path, store=slow_store, store_timeout_s=0.3) as srv:
        started = asyncio.get_running_loop().time()
        reply = await probes.deliver(srv.port, probes.message())
        assert reply.code == 451
        assert asyncio.get_running_loop().time() - started < 2


# --- limits and shutdown ----------------------------------------------------------------------

async def test_item19_connections_over_the_per_ip_cap_get_421(tmp_path: Path) -> None:
    async with serve(tmp_path, max_connections_per_ip=2, trusted_relays=()) as srv:
        first, second = await RawSmtp.connect(srv.port), await RawSmtp.connect(srv.port)
        third = await RawSmtp.connect(srv.port)
        try:
            assert (await first.reply()).code == 220 and (await second.reply()).code == 220
            refused = await third.reply()
            assert refused.code == 421 and refused.text.startswith("4.7.0")
            assert await third.closed()
            await first.command("QUIT")
            await first.close()
            await asyncio.sleep(0.05)
            fourth = await RawSmtp.connect(srv.port)
            assert (await fourth.reply()).code == 220
            await fourth.close()
        finally:
            for c in (first, second, third):
                await c.close()


async def _connect_from(ip: str, port: int) -> RawSmtp:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0)), 10)
    return RawSmtp(reader, writer, 10.0)


async def test_item19_connection_over_the_global_cap_gets_421_and_a_freed_slot_is_reused(tmp_path: Path) -> None:
    """Each client comes from its own loopback address, so only the global cap can refuse."""
    async with serve(tmp_path, max_connections=3, max_connections_per_ip=10, trusted_relays=()) as srv:
        sessions = [await _connect_from(f"127.0.0.{n}", srv.port) for n in (1, 2, 3)]
        over = await _connect_from("127.0.0.4", srv.port)
        late: RawSmtp | None = None
        try:
            for smtp in sessions:
                assert (await smtp.greet()).code == 250
            refused = await over.reply()
            assert refused.code == 421 and refused.text.startswith("4.7.0"), refused
            assert await over.closed()
            assert srv.listener.limits.count() == 3
            # the admitted sessions are unaffected: each one still delivers
            for n, smtp in enumerate(sessions):
                assert (await probes.transaction(smtp, probes.message(f"capped {n}"))).code == 250
            assert (await sessions[0].command("QUIT")).code == 221
            assert await sessions[0].closed()
            await sessions[0].close()
            deadline = asyncio.get_running_loop().time() + 10
            while srv.listener.limits.count() != 2:
                assert asyncio.get_running_loop().time() < deadline, "the closed session kept its slot"
                await asyncio.sleep(0.01)
            late = await _connect_from("127.0.0.5", srv.port)
            assert (await late.greet()).code == 250
            assert (await probes.transaction(late, probes.message("after a slot freed"))).code == 250
            assert (await sessions[1].command("NOOP")).code == 250
        finally:
            for smtp in (*sessions, over, *([late] if late else [])):
                await smtp.close()
        assert len(await srv.stored()) == 4


async def test_issue24_item4_a_trusted_relay_has_its_own_higher_limit(tmp_path: Path) -> None:
    """The Postfix in front (127.0.0.1 here) may hold more connections than any one client:
    Postfix's 20 per destination plus its connection cache. Another client (127.0.0.2) is
    still capped per address, and the relay's sessions do not count against it."""
    async with serve(tmp_path, max_connections=4, max_connections_per_ip=2, trusted_relays=("127.0.0.1",),
                     max_connections_per_relay=6) as srv:
        relay = [await _connect_from("127.0.0.1", srv.port) for _ in range(7)]
        other = [await _connect_from("127.0.0.2", srv.port) for _ in range(3)]
        try:
            replies = [await smtp.reply() for smtp in relay]
            assert [r.code for r in replies] == [220] * 6 + [421], replies
            assert [(await smtp.reply()).code for smtp in other] == [220, 220, 421]
            assert (await relay[5].command("EHLO relay.example")).code == 250
            assert (await probes.transaction(relay[5], probes.message("the sixth"))).code == 250
        finally:
            for smtp in (*relay, *other):
                await smtp.close()


async def test_item19_session_deadline_closes_a_slow_session(tmp_path: Path) -> None:
    async with serve(tmp_path, session_deadline_s=1) as srv:
        smtp = await RawSmtp.connect(srv.port)
        try:
            await smtp.greet()
            reply = await smtp.reply(timeout=5)
            assert reply.code == 421 and reply.text.startswith("4.4.2")
            assert await smtp.closed()
        finally:
            await smtp.close()


async def test_stop_accepting_lets_data_finish_and_turns_everyone_else_away(server: Server) -> None:
    idle, busy = await RawSmtp.connect(server.port), await RawSmtp.connect(server.port)
    try:
        await idle.greet()
        await busy.greet()
        for line in ("MAIL FROM:<anna@borger.example>", f"RCPT TO:<{ADDRESS}>", "DATA"):
            await busy.command(line)
        await busy.send(probes.message("in flight"))  # the body, not yet the dot
        await asyncio.sleep(0.05)
        server.listener.stop_accepting()
        assert (await idle.reply()).code == 421 and await idle.closed()
        late = await RawSmtp.connect(server.port)
        assert (await late.reply()).text.startswith("4.3.2")
        await late.close()
        await busy.send(b".\r\n")
        assert (await busy.reply()).code == 250
        assert (await busy.reply()).code == 421 and await busy.closed()
    finally:
        await idle.close()
        await busy.close()
    assert len(await server.stored()) == 1
    await server.listener.close(1.0)
    with pytest.raises(OSError):
        await RawSmtp.connect(server.port, timeout=2)


# --- STARTTLS and LMTP ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed pair made now (the `cryptography` package is not a dependency)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    os.chmod(key, 0o600)
    return str(cert), str(key)


async def test_starttls_delivery_with_smtplib_and_swaks(tmp_path: Path, certificate: tuple[str, str]) -> None:
    cert, key = certificate
    async with serve(tmp_path, tls_cert=cert, tls_key=key) as srv:
        smtp = await RawSmtp.connect(srv.port)
        ehlo = await smtp.greet()
        await smtp.close()
        assert "STARTTLS" in ehlo.text and "AUTH" not in ehlo.text
        assert await asyncio.to_thread(smtplib_send, srv.port, build_mail(subject="tls 1"), starttls=True) == {}
        rc, out = await swaks(srv.port, "-tls", "-f", "anna@borger.example", "-t", ADDRESS,
                              "--header", "Subject: tls 2")
        assert rc == 0, out
        assert "TLS started" in out and not any("AUTH" in r for r in server_said(out))
        assert len(await srv.stored()) == 2
        assert await srv.cases() == 2


async def test_item10_starttls_discards_pipelined_plaintext(tmp_path: Path, certificate: tuple[str, str]) -> None:
    cert, key = certificate
    async with serve(tmp_path, tls_cert=cert, tls_key=key) as srv:
        assert await probes.starttls_injection(srv.port) == b""


async def test_lmtp_answers_once_per_recipient(tmp_path: Path) -> None:
    async with serve(tmp_path, lmtp=True) as srv:
        smtp = await RawSmtp.connect(srv.port)
        try:
            banner = await smtp.reply()
            assert banner.code == 220
            assert (await smtp.command("EHLO mta.example")).code == 500
            assert (await smtp.command("LHLO mta.example")).code == 250
            await smtp.command("MAIL FROM:<anna@borger.example>")
            rcpts = [ADDRESS, "nobody@statens-adm.example", "kundebetjening+t1@statens-adm.example"]
            codes = [(await smtp.command(f"RCPT TO:<{r}>")).code for r in rcpts]
            assert codes == [250, 550, 250]
            await smtp.command("DATA")
            await smtp.send(probes.message() + b".\r\n")
            replies = [await smtp.reply(), await smtp.reply()]
            assert [r.code for r in replies] == [250, 250]
            assert replies[0].text == "2.0.0 Ok: queued as 1"
            assert await smtp.command("NOOP") == Reply(250, "OK")
        finally:
            await smtp.close()
        [row] = await srv.stored()
        assert row["envelope_to"] == [ADDRESS, "kundebetjening+t1@statens-adm.example"]


# --- the daemon's SQLite inbox writer -----------------------------------------------------------

async def test_sqlite_writer_waits_out_a_short_lock_and_gives_up_on_a_long_one(app: App) -> None:
    from gateway.errors import StoreUnavailable
    from store.writer import InboxWriter

    if app.engine.dialect.name != "sqlite":
        pytest.skip("the writer is the SQLite path")
    url = app.engine.url.render_as_string(hide_password=False)
    writer, impatient = InboxWriter(url, busy_timeout_s=10), InboxWriter(url, busy_timeout_s=0.3)
    mail = IncomingMail(probes.message("locked a moment"), "smtp", "anna@borger.example", (ADDRESS,))
    try:
        await asyncio.gather(writer.start(), impatient.start())  # started: under load that alone took over 0.5 s
        with exclusive_lock(app):
            pending = asyncio.ensure_future(writer.accept_many([mail], app.clock.now()))
            await asyncio.sleep(0.5)
            assert not pending.done() and writer.busy_until.value == float("inf")
        [accepted] = await pending
        assert not accepted.duplicate and writer.busy_until.value <= time.monotonic() + QUIET_S
        with exclusive_lock(app), pytest.raises(StoreUnavailable):
            await impatient.accept_many([IncomingMail(probes.message("too long"), "smtp")], app.clock.now())
        first, second = await writer.accept_many([mail, mail], app.clock.now())
        assert first == second == Accepted(accepted.inbound_id, True)
        twin = IncomingMail(probes.message("twins"), "smtp")
        new, same = await writer.accept_many([twin, twin], app.clock.now())
        assert not new.duplicate and same == Accepted(new.inbound_id, True)
    finally:
        writer.close()
        impatient.close()


async def test_a_dead_inbox_writer_process_fails_its_batch_and_the_next_batch_starts_a_new_one(app: App) -> None:
    """451 for the mails of the batch in hand (never a 250 without a commit), then a new process."""
    import signal

    from gateway.errors import StoreUnavailable
    from store.writer import InboxWriter

    writer = InboxWriter(app.engine.url.render_as_string(hide_password=False), busy_timeout_s=5)
    mail = IncomingMail(probes.message("after the crash"), "smtp", "anna@borger.example", (ADDRESS,))
    try:
        await writer.start()
        first_pid = writer._proc.pid if writer._proc else None
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(StoreUnavailable):
            await writer.accept_many([mail], app.clock.now())
        [accepted] = await writer.accept_many([mail], app.clock.now())
        assert not accepted.duplicate
        assert writer._proc is not None and writer._proc.pid != first_pid
    finally:
        writer.close()
    async with app.engine.connect() as conn:
        table = InboundMail.__table__  # type: ignore[attr-defined]
        assert (await conn.execute(select(func.count()).select_from(table))).scalar_one() == 1


async def test_the_postgresql_writer_answers_every_batch_when_its_commits_fail(app: App) -> None:
    """On PostgreSQL the writer process commits in the thread that reads the batches: a commit
    that fails (here: a database that does not exist) is answered StoreUnavailable (451), batch
    after batch, and the process stays up for the next one."""
    if app.engine.dialect.name != "postgresql":
        pytest.skip("the PostgreSQL writer")
    from gateway.errors import StoreUnavailable
    from store.writer import InboxWriter

    url = app.engine.url.set(database="gw_test_no_such_database").render_as_string(hide_password=False)
    writer = InboxWriter(url, busy_timeout_s=5)
    mail = IncomingMail(probes.message("nowhere to go"), "smtp", "anna@borger.example", (ADDRESS,))
    try:
        for _ in range(2):
            with pytest.raises(StoreUnavailable, match="inbox commit failed"):
                await asyncio.wait_for(writer.accept_many([mail], app.clock.now()), 30)
        assert writer.alive() and writer._proc is not None and writer._proc.is_alive()
    finally:
        writer.close()


async def test_the_worker_yields_to_smtp_commits_but_not_forever_and_claims_do_not_wait(tmp_path: Path) -> None:
    import functools
    import multiprocessing

    from store.engine import make_engine, session_factory
    from store.sqlite.writer import BUSY, smtp_pause
    from store.transact import Transactor

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    tx = Transactor(engine, session_factory(engine))
    busy_until = multiprocessing.get_context("forkserver").RawValue("d", BUSY)
    tx.before_write = functools.partial(smtp_pause, busy_until, max_wait_s=2.0)

    async def timed(run: Callable[..., Awaitable[Any]]) -> float:
        started = time.monotonic()
        await run(lambda db: db.execute(text("SELECT 1")))
        return time.monotonic() - started

    try:
        asyncio.get_running_loop().call_later(0.2, lambda: setattr(busy_until, "value", time.monotonic() + 0.3))
        assert 0.45 < await timed(tx.run) < 1.8  # waited for the commit, then for the quiet after it
        assert await timed(tx.run) < 0.15  # no commits lately: no delay
        busy_until.value = BUSY
        waiting = asyncio.ensure_future(timed(tx.run))
        await asyncio.sleep(0.1)
        # a claim (run_now) is not queued behind the write that waits, nor is a read
        assert await timed(tx.run_now) < 0.15 and not waiting.done()
        assert await timed(tx.read) < 0.15 and not waiting.done()
        assert 1.9 < await waiting < 4  # a stuck writer delays, never blocks
    finally:
        tx.close()
        await engine.dispose()


class AnsweredByHand:
    """A batch store whose answers the test gives (a pure unit of the group committer)."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[bytes], asyncio.Future[list[Accepted]]]] = []

    async def accept_many(self, mails: list[IncomingMail], now: Any) -> list[Accepted]:
        raise AssertionError("the committer must use submit_many")

    def submit_many(self, mails: list[IncomingMail], now: Any) -> asyncio.Future[list[Accepted]]:
        answer: asyncio.Future[list[Accepted]] = asyncio.get_running_loop().create_future()
        self.batches.append(([m.raw for m in mails], answer))
        return answer


async def test_group_committer_sends_what_waited_as_one_batch_and_fails_a_batch_together() -> None:
    from gateway.errors import StoreUnavailable

    store = AnsweredByHand()
    committer = GroupCommitter(store, lambda: None, in_flight=1)  # type: ignore[arg-type]
    mail = lambda tag: IncomingMail(tag.encode(), "smtp")  # noqa: E731
    first = committer.submit(mail("a"))
    assert [raws for raws, _ in store.batches] == [[b"a"]]  # a lone mail goes at once
    second, gone, third = committer.submit(mail("b")), committer.submit(mail("left")), committer.submit(mail("c"))
    gone.cancel()  # its session ended before the batch went out: no 250 is owed
    assert len(store.batches) == 1  # the store has its one batch: the others wait
    store.batches[0][1].set_result([Accepted(1, False)])
    assert await first == Accepted(1, False)
    assert [raws for raws, _ in store.batches] == [[b"a"], [b"b", b"c"]]  # what waited, together
    store.batches[1][1].set_exception(StoreUnavailable("locked"))
    for waiter in (second, third):
        with pytest.raises(StoreUnavailable):
            await waiter
    fourth = committer.submit(mail("d"))
    store.batches[2][1].set_result([])  # an answer that does not fit the batch is a failure, not a hang
    with pytest.raises(StoreUnavailable):
        await fourth
    fifth, sixth = committer.submit(mail("e")), committer.submit(mail("f"))
    await committer.close()  # the stop: in flight and waiting both fail (451), none hangs
    for waiter in (fifth, sixth):
        with pytest.raises(StoreUnavailable):
            await waiter


async def test_item13_a_group_commit_that_never_answers_gets_451_in_time(tmp_path: Path) -> None:
    """The daemon's path: the handler waits on the committer's future itself, with its own timer."""
    store = AnsweredByHand()
    committer = GroupCommitter(store, lambda: None)  # type: ignore[arg-type]
    async with serve(tmp_path, store=lambda app: committer.submit, store_timeout_s=0.3) as srv:
        started = asyncio.get_running_loop().time()
        reply = await probes.deliver(srv.port, probes.message())
        assert reply.code == 451
        assert asyncio.get_running_loop().time() - started < 2
        store.batches[0][1].set_result([Accepted(7, False)])  # the late answer harms nothing
        await asyncio.sleep(0)
    await committer.close()
