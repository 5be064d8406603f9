"""The one seam for outbound delivery (rules §7, catalogue 79-82).

`Mailer.send` hands finished message bytes to a relay or a local Maildir. Every library
error is translated here, once:

    DeliveryError            try again later: 4xx, refused or lost connection, timeout,
                             TLS or login trouble with our own relay, a full disk
    └── PermanentDeliveryError   never retry: 5xx to MAIL/RCPT/DATA, a malformed address

Addresses are checked before any protocol line is written; none is ever string-built into
SMTP commands by us (the client library sends them).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import socket
import ssl
import time
import uuid
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

import aiosmtplib

from gateway.errors import ConfigError, DeliveryError, PermanentDeliveryError
from gateway.settings import Settings

log = logging.getLogger("gateway.notify")

TlsMode = Literal["none", "starttls", "implicit"]
_FORBIDDEN = frozenset(" \t\r\n\x00<>()[],;:\"\\")
_DEFAULT_PORTS = {"none": 25, "starttls": 587, "implicit": 465}


class Mailer(Protocol):
    async def send(self, message: bytes, sender: str, recipients: tuple[str, ...]) -> str:
        """Deliver `message`; return the relay's final reply or the Maildir file name."""
        ...


def check_address(address: str) -> str:
    """Refuse anything that is not one bare addr-spec (catalogue 79)."""
    local, at, domain = address.rpartition("@")
    if (not at or not local or not domain or "@" in local
            or any(ch in _FORBIDDEN or not ch.isprintable() for ch in address)):
        raise PermanentDeliveryError(f"not a deliverable address: {address!r}")
    return address


def _check_envelope(sender: str, recipients: tuple[str, ...]) -> None:
    if not recipients:
        raise PermanentDeliveryError("no recipients")
    for address in (sender, *recipients):
        check_address(address)


# --- Maildir ------------------------------------------------------------------------------


class MaildirMailer:
    """Delivers into a Maildir (the default: nothing to run). Files appear in new/ whole.

    Idempotent: a message's file is named from its Message-ID and recipients, so delivering it
    again (a resend after a crash between the delivery and its mark as sent) replaces the file
    in new/ rather than adding a second one, and is skipped once a mail client has moved it to
    cur/. A delivery killed halfway leaves a file in tmp/; `clean_stale` removes those at start.
    """

    _counter = itertools.count()
    STALE_TMP_S = 600.0  # a delivery takes milliseconds; a tmp/ file this old was cut off

    def __init__(self, path: Path) -> None:
        self.path = path

    async def send(self, message: bytes, sender: str, recipients: tuple[str, ...]) -> str:
        _check_envelope(sender, recipients)
        # The envelope would be lost in a file; record it the way a local MDA does.
        envelope = f"Return-Path: <{sender}>\r\n" + "".join(f"Delivered-To: {r}\r\n" for r in recipients)
        name = _stable_name(message, recipients)
        try:
            return await asyncio.to_thread(self._deliver, envelope.encode() + message, name)
        except OSError as exc:
            raise DeliveryError(f"maildir {self.path}: {exc.strerror or exc}") from exc

    async def clean_stale(self) -> int:
        """Remove tmp/ files older than STALE_TMP_S: deliveries a crash cut off."""
        return await asyncio.to_thread(self._clean_stale, time.time() - self.STALE_TMP_S)

    def _clean_stale(self, before: float) -> int:
        removed = 0
        try:
            entries = list(os.scandir(self.path / "tmp"))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < before:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("notify.maildir_cleaned", extra={"removed": removed})
        return removed

    def _deliver(self, data: bytes, stable: str | None = None) -> str:
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        if stable is not None and self._already_read(stable):
            return stable
        name = stable or self._unique_name()
        # tmp/ gets a name of its own per try: two tries of one message never share a file.
        tmp, new = self.path / "tmp" / self._unique_name(), self.path / "new" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, new)  # atomic: readers never see half a message; an earlier copy is replaced
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.path / "new")
        return name

    def _already_read(self, name: str) -> bool:
        """A mail client moved the file to cur/ (as `name` or `name:2,FLAGS`)."""
        cur = self.path / "cur"
        return (cur / name).exists() or any(cur.glob(f"{name}:*"))

    def _unique_name(self) -> str:
        now = time.time()
        host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
        seq = next(self._counter)
        return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{seq}R{uuid.uuid4().hex[:16]}.{host}"


def _stable_name(message: bytes, recipients: tuple[str, ...]) -> str | None:
    """The file name of a message with a Message-ID: a hash of it and the recipients (the
    same message twice has one name; a name never carries the ID's own characters)."""
    message_id = BytesHeaderParser(policy=compat32).parsebytes(message).get("Message-ID")
    if not message_id or not str(message_id).strip():
        return None
    digest = hashlib.sha256("\0".join((str(message_id).strip(), *recipients)).encode("utf-8", "surrogateescape"))
    return f"gw-{digest.hexdigest()[:40]}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- SMTP -----------------------------------------------------------------------------------


class SmtpMailer:
    """Delivers through an SMTP relay, keeping a few connections open between messages.

    A pooled connection is checked with NOOP before it carries a message, so a connection the
    relay closed while idle is replaced before MAIL FROM, never retried after DATA.
    """

    IDLE_S = 20.0  # relays drop idle sessions (Postfix: 300 s); stay well below

    def __init__(self, host: str, port: int, tls: TlsMode = "none", username: str = "",
                 password: str = "", timeout: float = 30.0,
                 tls_context: ssl.SSLContext | None = None, pool_size: int = 10) -> None:
        if tls not in _DEFAULT_PORTS:
            raise ConfigError(f"outbound.tls: must be none, starttls or implicit, not {tls!r}")
        self.host, self.port, self.tls = host, port, tls
        self.username, self.password, self.timeout = username, password, timeout
        self.tls_context = tls_context
        self.pool_size = pool_size
        self._idle: list[tuple[float, aiosmtplib.SMTP]] = []

    async def _acquire(self) -> aiosmtplib.SMTP:
        while self._idle:
            since, client = self._idle.pop()
            if client.is_connected and time.monotonic() - since < self.IDLE_S:
                try:
                    await client.noop()
                    return client
                except (aiosmtplib.SMTPException, OSError):
                    pass
            await _quit_quietly(client)
        client = self._client()
        await client.connect()
        return client

    async def _release(self, client: aiosmtplib.SMTP) -> None:
        if len(self._idle) < self.pool_size and client.is_connected:
            self._idle.append((time.monotonic(), client))
        else:
            await _quit_quietly(client)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, client in idle:
            await _quit_quietly(client)

    def _client(self) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=self.host, port=self.port, timeout=self.timeout,
            use_tls=self.tls == "implicit",
            # True, never None: None would mean "upgrade if offered", i.e. plaintext otherwise.
            start_tls=self.tls == "starttls",
            tls_context=self.tls_context,
            username=self.username or None,  # no AUTH at all without a configured user
            password=self.password if self.username else None,
        )

    async def send(self, message: bytes, sender: str, recipients: tuple[str, ...]) -> str:
        _check_envelope(sender, recipients)
        utf8 = not all(address.isascii() for address in (sender, *recipients))
        client: aiosmtplib.SMTP | None = None
        try:
            client = await self._acquire()
            refused, reply = await client.sendmail(
                sender, list(recipients), message, mail_options=["SMTPUTF8"] if utf8 else [])
        except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
            if client is not None:
                await _quit_quietly(client)
            raise _translate(exc) from exc
        await self._release(client)
        if refused:  # some recipients accepted: report the rest
            raise _refused_some(refused)
        return reply


async def _quit_quietly(client: aiosmtplib.SMTP) -> None:
    """The message is already accepted (or failed); a lost QUIT must not cause a resend."""
    if client.is_connected:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()


def _translate(exc: Exception) -> DeliveryError:
    """Only a 5xx to the message itself is permanent; trouble with our relay is not."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        permanent = all(500 <= code < 600 for code in codes)
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        return (PermanentDeliveryError if permanent else DeliveryError)(f"recipients refused: {detail}")
    if isinstance(exc, aiosmtplib.SMTPSenderRefused | aiosmtplib.SMTPRecipientRefused
                  | aiosmtplib.SMTPDataError):
        error = PermanentDeliveryError if 500 <= exc.code < 600 else DeliveryError
        return error(f"relay replied {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPNotSupported) and "SMTPUTF8" in str(exc):
        return PermanentDeliveryError(f"relay: {exc}")
    if isinstance(exc, TimeoutError):
        return DeliveryError(f"relay timed out: {exc}")
    if isinstance(exc, ValueError) and not isinstance(exc, OSError):  # ssl errors are both
        return PermanentDeliveryError(f"address refused by the client: {exc}")
    return DeliveryError(f"relay {type(exc).__name__}: {exc}")


def _refused_some(refused: dict[str, aiosmtplib.SMTPResponse]) -> DeliveryError:
    permanent = all(500 <= response.code < 600 for response in refused.values())
    detail = "; ".join(f"{rcpt}: {r.code} {r.message}" for rcpt, r in refused.items())
    return (PermanentDeliveryError if permanent else DeliveryError)(f"some recipients refused: {detail}")


# --- from settings --------------------------------------------------------------------------


def mailer_from_settings(settings: Settings) -> Mailer:
    """`maildir:PATH` (relative to the base directory) or `smtp://host:port`."""
    outbound = settings.outbound
    transport = outbound.transport
    if transport.startswith("maildir:"):
        path = transport.removeprefix("maildir:")
        if not path:
            raise ConfigError("outbound.transport: maildir: needs a path")
        return MaildirMailer(settings.path(path))
    if not transport.startswith("smtp://"):
        raise ConfigError("outbound.transport: must be maildir:PATH or smtp://host:port")
    url = urlsplit(transport)
    try:
        port = url.port
    except ValueError as exc:
        raise ConfigError(f"outbound.transport: bad port in {transport!r}") from exc
    if not url.hostname or url.username or url.password or url.path not in ("", "/") or url.query:
        raise ConfigError("outbound.transport: expected smtp://host:port (credentials go in "
                          "outbound.username/password)")
    return SmtpMailer(url.hostname, port or _DEFAULT_PORTS[outbound.tls], outbound.tls,
                      outbound.username, outbound.password, outbound.timeout_s,
                      pool_size=outbound.concurrency)
