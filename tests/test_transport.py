"""Outbound delivery against real servers on 127.0.0.1 (catalogue 79-82).

aiosmtpd runs inside the test's own event loop; Postfix `smtp-sink` plays the failing relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from gateway.errors import ConfigError, DeliveryError, PermanentDeliveryError
from gateway.model import Event
from gateway.notify.compose import TEMPLATES_DIR, Renderer, sample_notice
from gateway.notify.transport import MaildirMailer, SmtpMailer, check_address, mailer_from_settings
from gateway.settings import OutboundSettings, Settings

SMTP_SINK = Path("/usr/sbin/smtp-sink")
SENDER = "kundebetjening@statens-adm.example"
RCPT = ("soeren.hansen@kommune.example",)


@pytest.fixture(scope="module")
def message() -> bytes:
    return Renderer(TEMPLATES_DIR, Settings()).compose(sample_notice(Event.STATUS, "da"))


# --- an aiosmtpd sink in our own loop ----------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes, bool]] = []
        self.logins: list[tuple[bytes, bytes]] = []
        self.port = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert envelope.original_content is not None
        self.received.append((envelope.mail_from or "", list(envelope.rcpt_tos),
                              envelope.original_content, session.ssl is not None))
        return "250 2.0.0 Ok: queued as SINK1"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                     mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret")


@contextlib.asynccontextmanager
async def running_sink(**options: Any) -> AsyncIterator[Sink]:
    sink = Sink()
    if options.pop("auth", False):
        options |= {"authenticator": sink.authenticate, "auth_require_tls": False}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink, hostname="sink.test", **options),
                                      host="127.0.0.1", port=0)
    sink.port = server.sockets[0].getsockname()[1]
    try:
        yield sink
    finally:
        server.close()
        await server.wait_closed()


async def test_delivers_byte_for_byte(message: bytes) -> None:
    async with running_sink() as sink:
        reply = await SmtpMailer("127.0.0.1", sink.port, timeout=5).send(message, SENDER, RCPT)
    assert "queued as SINK1" in reply
    assert sink.received == [(SENDER, list(RCPT), message, False)]


async def test_message_with_dot_lines_survives_transparency() -> None:
    body = b"Subject: x\r\nTo: soeren.hansen@kommune.example\r\n\r\n.\r\n..leading dots\r\n.\r\n"
    async with running_sink() as sink:
        await SmtpMailer("127.0.0.1", sink.port, timeout=5).send(body, SENDER, RCPT)
    assert sink.received[0][2] == body


async def test_starttls_required_never_falls_back_to_plaintext(message: bytes) -> None:
    async with running_sink() as sink:  # offers no STARTTLS
        mailer = SmtpMailer("127.0.0.1", sink.port, tls="starttls", timeout=5)
        with pytest.raises(DeliveryError) as info:
            await mailer.send(message, SENDER, RCPT)
    assert not isinstance(info.value, PermanentDeliveryError)
    assert sink.received == []


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


async def test_starttls_delivers_encrypted(message: bytes, tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls_pair
    async with running_sink(tls_context=server_ctx, require_starttls=True) as sink:
        mailer = SmtpMailer("127.0.0.1", sink.port, tls="starttls", timeout=5, tls_context=client_ctx)
        await mailer.send(message, SENDER, RCPT)
    assert sink.received == [(SENDER, list(RCPT), message, True)]


async def test_starttls_with_untrusted_certificate_is_temporary(
        message: bytes, tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, _ = tls_pair
    async with running_sink(tls_context=server_ctx, require_starttls=True) as sink:
        mailer = SmtpMailer("127.0.0.1", sink.port, tls="starttls", timeout=5)  # system CAs only
        with pytest.raises(DeliveryError) as info:
            await mailer.send(message, SENDER, RCPT)
    assert not isinstance(info.value, PermanentDeliveryError)
    assert sink.received == []


@pytest.mark.parametrize(("username", "password", "logins"), [
    ("", "", []),
    ("gateway", "s3cret", [(b"gateway", b"s3cret")]),
])
async def test_login_only_when_a_username_is_set(message: bytes, username: str, password: str,
                                                 logins: list[tuple[bytes, bytes]]) -> None:
    async with running_sink(auth=True) as sink:
        mailer = SmtpMailer("127.0.0.1", sink.port, username=username, password=password, timeout=5)
        await mailer.send(message, SENDER, RCPT)
    assert sink.logins == logins
    assert len(sink.received) == 1


async def test_failed_login_is_temporary(message: bytes) -> None:
    async with running_sink(auth=True) as sink:
        mailer = SmtpMailer("127.0.0.1", sink.port, username="gateway", password="wrong", timeout=5)
        with pytest.raises(DeliveryError) as info:
            await mailer.send(message, SENDER, RCPT)
    assert not isinstance(info.value, PermanentDeliveryError)
    assert sink.received == []


BAD_ADDRESSES = [
    "a@b.example\r\nRCPT TO:<evil@example.org>", "a@b.example\nx", "no-at-sign", "two@at@x.example",
    "", "@x.example", "a@", "<a@b.example>", "a b@x.example", "a@b.example,c@d.example", "a\x00@b.example",
]


@pytest.mark.parametrize("bad", BAD_ADDRESSES)
async def test_item79_bad_recipient_never_reaches_the_relay(message: bytes, bad: str) -> None:
    async with running_sink() as sink:
        with pytest.raises(PermanentDeliveryError):
            await SmtpMailer("127.0.0.1", sink.port, timeout=5).send(message, SENDER, (bad,))
    assert sink.received == []


@pytest.mark.parametrize("good", ["a@b.example", "first.last+tag@sub.b.example", "søren@kommune.example"])
def test_check_address_accepts(good: str) -> None:
    assert check_address(good) == good


# --- Postfix smtp-sink as a failing relay ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def smtp_sink(*flags: str) -> AsyncIterator[int]:
    if not SMTP_SINK.exists():
        pytest.skip(f"{SMTP_SINK} is missing (Debian package postfix): cannot run relay failure tests")
    port = free_port()
    privs = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = await asyncio.create_subprocess_exec(
        "timeout", "60", str(SMTP_SINK), *privs, *flags, f"127.0.0.1:{port}", "10",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await _until_listening(port)
        yield port
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def _until_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def test_smtp_sink_accepts(message: bytes) -> None:
    async with smtp_sink() as port:
        reply = await SmtpMailer("127.0.0.1", port, timeout=5).send(message, SENDER, RCPT)
    assert reply  # the sink's 250 text


@pytest.mark.parametrize(("flags", "permanent"), [
    (("-r", "RCPT"), False),  # 450 to RCPT: try later
    (("-r", "MAIL"), False),
    (("-r", "DATA"), False),
    (("-f", "DATA"), True),  # 5xx to DATA: never retry
    (("-f", "RCPT"), True),
    (("-f", "MAIL"), True),
    (("-q", "DATA"), False),  # disconnect at DATA
    (("-q", "RCPT"), False),
])
async def test_relay_failures_are_translated(message: bytes, flags: tuple[str, ...], permanent: bool) -> None:
    async with smtp_sink(*flags) as port:
        with pytest.raises(DeliveryError) as info:
            await SmtpMailer("127.0.0.1", port, timeout=5).send(message, SENDER, RCPT)
    assert isinstance(info.value, PermanentDeliveryError) is permanent


async def test_item82_slow_relay_times_out(message: bytes) -> None:
    async with smtp_sink("-w", "10") as port:  # waits 10 s before answering DATA
        started = time.monotonic()
        with pytest.raises(DeliveryError) as info:
            await SmtpMailer("127.0.0.1", port, timeout=0.5).send(message, SENDER, RCPT)
    assert not isinstance(info.value, PermanentDeliveryError)
    assert time.monotonic() - started < 5


async def test_connection_refused_is_temporary(message: bytes) -> None:
    with pytest.raises(DeliveryError) as info:
        await SmtpMailer("127.0.0.1", free_port(), timeout=5).send(message, SENDER, RCPT)
    assert not isinstance(info.value, PermanentDeliveryError)


# --- Maildir ----------------------------------------------------------------------------------------


async def test_maildir_writes_one_whole_file_into_new(tmp_path: Path, message: bytes) -> None:
    mailer = MaildirMailer(tmp_path / "outbound")
    first = await mailer.send(message, SENDER, RCPT)
    other = await mailer.send(message.replace(b"Message-ID: <", b"Message-ID: <other-", 1), SENDER, RCPT)

    assert first != other
    assert sorted(p.name for p in (tmp_path / "outbound" / "new").iterdir()) == sorted([first, other])
    assert list((tmp_path / "outbound" / "tmp").iterdir()) == []
    assert (tmp_path / "outbound" / "cur").is_dir()
    data = (tmp_path / "outbound" / "new" / first).read_bytes()
    envelope = f"Return-Path: <{SENDER}>\r\nDelivered-To: {RCPT[0]}\r\n".encode()
    assert data == envelope + message


async def test_issue24_item3_maildir_delivery_of_one_message_twice_keeps_one_file(tmp_path: Path,
                                                                                 message: bytes) -> None:
    """A resend after a crash (delivered, killed before the row was marked sent) replaces the
    file in new/; once a mail client has moved it to cur/, a resend adds nothing."""
    outbound = tmp_path / "outbound"
    mailer = MaildirMailer(outbound)
    first = await mailer.send(message, SENDER, RCPT)
    assert await mailer.send(message, SENDER, RCPT) == first
    assert [p.name for p in (outbound / "new").iterdir()] == [first]
    assert list((outbound / "tmp").iterdir()) == []

    (outbound / "new" / first).rename(outbound / "cur" / f"{first}:2,S")  # read by the customer
    await mailer.send(message, SENDER, RCPT)
    assert list((outbound / "new").iterdir()) == []
    assert [p.name for p in (outbound / "cur").iterdir()] == [f"{first}:2,S"]

    # to another recipient it is another delivery; without a Message-ID every send is one
    assert await mailer.send(message, SENDER, ("anden@borger.example",)) != first
    bare = b"From: a@b.example\r\nSubject: x\r\n\r\nbody\r\n"
    assert await mailer.send(bare, SENDER, RCPT) != await mailer.send(bare, SENDER, RCPT)


async def test_issue24_item3_stale_half_written_files_in_tmp_are_removed(tmp_path: Path, message: bytes) -> None:
    outbound = tmp_path / "outbound"
    mailer = MaildirMailer(outbound)
    await mailer.send(message, SENDER, RCPT)
    stale, fresh = outbound / "tmp" / "1700000000.M1P2Q3.host", outbound / "tmp" / "being-written"
    stale.write_bytes(b"Return-Path: <x>\r\nhalf a mess")
    fresh.write_bytes(b"Return-Path: <x>\r\n")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert await mailer.clean_stale() == 1
    assert sorted(p.name for p in (outbound / "tmp").iterdir()) == ["being-written"]
    assert len(list((outbound / "new").iterdir())) == 1
    assert await MaildirMailer(tmp_path / "never-used").clean_stale() == 0


@pytest.mark.parametrize("bad", BAD_ADDRESSES[:4])
async def test_maildir_refuses_bad_recipient(tmp_path: Path, message: bytes, bad: str) -> None:
    with pytest.raises(PermanentDeliveryError):
        await MaildirMailer(tmp_path / "outbound").send(message, SENDER, (bad,))
    assert not (tmp_path / "outbound").exists()


async def test_maildir_io_error_is_temporary(tmp_path: Path, message: bytes) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DeliveryError) as info:
        await MaildirMailer(blocker / "outbound").send(message, SENDER, RCPT)
    assert not isinstance(info.value, PermanentDeliveryError)


# --- from settings ----------------------------------------------------------------------------------


def _settings(transport: str, tls: str = "none") -> Settings:
    return Settings(base_dir="/srv/gateway",
                    outbound=OutboundSettings(transport=transport, tls=tls, username="u", password="p"))  # type: ignore[arg-type]


@pytest.mark.parametrize(("transport", "path"), [
    ("maildir:var/outbound", Path("/srv/gateway/var/outbound")),
    ("maildir:/var/spool/gateway", Path("/var/spool/gateway")),
])
def test_maildir_from_settings(transport: str, path: Path) -> None:
    mailer = mailer_from_settings(_settings(transport))
    assert isinstance(mailer, MaildirMailer) and mailer.path == path


@pytest.mark.parametrize(("transport", "tls", "host", "port"), [
    ("smtp://relay.example:2525", "none", "relay.example", 2525),
    ("smtp://relay.example", "none", "relay.example", 25),
    ("smtp://relay.example", "starttls", "relay.example", 587),
    ("smtp://relay.example", "implicit", "relay.example", 465),
    ("smtp://[::1]:26", "none", "::1", 26),
])
def test_smtp_from_settings(transport: str, tls: str, host: str, port: int) -> None:
    mailer = mailer_from_settings(_settings(transport, tls))
    assert isinstance(mailer, SmtpMailer)
    assert (mailer.host, mailer.port, mailer.tls, mailer.username, mailer.password) == (host, port, tls, "u", "p")


@pytest.mark.parametrize("transport", [
    "maildir:", "smtp://", "smtp://relay.example:notaport", "smtp://user:pw@relay.example",
    "smtp://relay.example/path", "lmtp://relay.example",
])
def test_bad_transport_is_a_config_error(transport: str) -> None:
    with pytest.raises(ConfigError):
        mailer_from_settings(_settings(transport))
