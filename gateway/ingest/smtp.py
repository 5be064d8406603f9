"""The SMTP (or LMTP) edge: cheap checks, raw bytes committed to the inbox, then 250 (SPEC §4).

Run inside our own event loop with `loop.create_server` (not aiosmtpd's threaded Controller).
Every reply is a named constant below. The handler never parses a mail: parsing happens in
the worker. If the commit fails or is too slow, the answer is 451 and the sender retries.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.addresses import canonical, local_and_tag
from gateway.settings import SmtpSettings
from store.inbox import Accepted, IncomingMail

log = logging.getLogger("gateway.smtp")

OK_RCPT = "250 2.1.5 Recipient ok"
OK_QUEUED = "250 2.0.0 Ok: queued as {id}"
OK_DUPLICATE = "250 2.0.0 Ok: already have it as {id}"
TEMP_STORE = "451 4.3.0 Temporary local problem, please try again later"
TEMP_TOO_MANY_RCPT = "452 4.5.3 Too many recipients"
TEMP_BUSY = "421 4.7.0 Too many connections, try again later"
TEMP_DEADLINE = "421 4.4.2 Session too long, closing connection"
NO_SUCH_USER = "550 5.1.1 No such recipient here"
NO_RELAY = "550 5.7.1 Relaying denied"
BAD_ADDRESS = "553 5.1.3 Invalid address"
TOO_MANY_HOPS = "554 5.4.6 Too many hops, mail loop suspected"
NO_VALID_RCPT = "554 5.5.1 No valid recipients"
NO_VRFY = "252 2.5.2 Cannot verify the user, but will accept mail for valid recipients"

Store = Callable[[IncomingMail], Awaitable[Accepted]]
_RECEIVED = re.compile(rb"^received\s*:", re.IGNORECASE | re.MULTILINE)


class Recipients:
    """Which envelope recipients are ours: a configured address or its `+tag` form."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        self._ours = {self._key(a) for a in addresses}
        self._domains = {a.rpartition("@")[2].lower() for a in addresses}

    @staticmethod
    def _key(address: str) -> tuple[str, str]:
        base, _tag, domain = local_and_tag(address)
        return base.lower(), domain.lower()

    def check(self, address: str) -> str | None:
        """None when accepted, else the SMTP reply."""
        if canonical(address) is None:
            return BAD_ADDRESS
        if self._key(address) in self._ours:
            return None
        return NO_SUCH_USER if address.rpartition("@")[2].lower() in self._domains else NO_RELAY


class InboxHandler:
    """aiosmtpd handler hooks. State lives in the envelope; the store is one callable."""

    def __init__(self, store: Store, cfg: SmtpSettings, addresses: tuple[str, ...],
                 on_accepted: Callable[[Accepted], None] | None = None) -> None:
        self._store = store
        self._cfg = cfg
        self._recipients = Recipients(addresses)
        self._on_accepted = on_accepted
        self.lmtp = cfg.lmtp

    async def handle_VRFY(self, server: SMTP, session: Session, envelope: Envelope, address: str) -> str:
        return NO_VRFY

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self._cfg.max_recipients:
            return TEMP_TOO_MANY_RCPT
        refusal = self._recipients.check(address)
        if refusal:
            log.info("smtp.rcpt_refused", extra={"peer": _peer(session), "reply": refusal[:3]})
            return refusal
        if address.lower() not in (r.lower() for r in envelope.rcpt_tos):
            envelope.rcpt_tos.append(address)
        return OK_RCPT

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if isinstance(envelope.content, bytes) and not raw:
            raw = envelope.content
        if not envelope.rcpt_tos:
            return NO_VALID_RCPT
        if len(_RECEIVED.findall(raw[:262144])) >= self._cfg.max_received_headers:
            return TOO_MANY_HOPS
        mail = IncomingMail(raw, "smtp", envelope.mail_from or None, tuple(envelope.rcpt_tos))
        started = time.monotonic()
        try:
            accepted = await asyncio.wait_for(asyncio.shield(self._store(mail)), self._cfg.store_timeout_s)
        except Exception as exc:
            log.warning("smtp.store_failed", extra={"peer": _peer(session), "error": type(exc).__name__})
            return self._each(TEMP_STORE, envelope)
        log.info("mail.received", extra={"inbound_id": accepted.inbound_id, "source": "smtp", "size": len(raw),
                                         "duplicate": accepted.duplicate, "peer": _peer(session),
                                         "ms": round((time.monotonic() - started) * 1000, 1)})
        if self._on_accepted is not None and not accepted.duplicate:
            self._on_accepted(accepted)
        reply = OK_DUPLICATE if accepted.duplicate else OK_QUEUED
        return self._each(reply.format(id=accepted.inbound_id), envelope)

    def _each(self, reply: str, envelope: Envelope) -> str:
        """LMTP answers once per recipient (RFC 2033); SMTP once per transaction."""
        return "\r\n".join([reply] * len(envelope.rcpt_tos)) if self.lmtp and envelope.rcpt_tos else reply

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default is "500 Error: (Class) message": permanent, and it leaks internals.
        log.error("smtp.handler_error", extra={"error": type(error).__name__})
        return TEMP_STORE


def _peer(session: Session) -> str:
    peer = session.peer
    return peer[0] if isinstance(peer, tuple) else str(peer)


class ConnectionLimits:
    """Global and per-IP connection caps (aiosmtpd has none, RELIABILITY 19)."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total = total
        self.per_ip = per_ip
        self.open: Counter[str] = Counter()

    def admit(self, ip: str) -> bool:
        if sum(self.open.values()) >= self.total or self.open[ip] >= self.per_ip:
            return False
        self.open[ip] += 1
        return True

    def leave(self, ip: str) -> None:
        self.open[ip] -= 1
        if self.open[ip] <= 0:
            del self.open[ip]


def _protocol_class(lmtp: bool) -> type[SMTP]:
    base: type[SMTP] = LMTP if lmtp else SMTP

    class GatewaySMTP(base):  # type: ignore[valid-type, misc]
        """Adds connection caps and an absolute session deadline to aiosmtpd's protocol."""

        limits: ConnectionLimits
        deadline_s: float
        accepting: Callable[[], bool]

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            peer = transport.get_extra_info("peername")
            self._gw_ip = peer[0] if isinstance(peer, tuple) else str(peer)
            self._gw_admitted = False
            if getattr(self, "_gw_started", False):  # STARTTLS re-enters here
                super().connection_made(transport)
                return
            self._gw_started = True
            if not self.accepting() or not self.limits.admit(self._gw_ip):
                reply = TEMP_BUSY if self.accepting() else "421 4.3.2 Service shutting down"
                transport.write(reply.encode() + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
            self._gw_admitted = True
            super().connection_made(transport)
            self._gw_deadline = asyncio.get_running_loop().call_later(self.deadline_s, self._gw_expire)

        def _gw_expire(self) -> None:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(TEMP_DEADLINE.encode() + b"\r\n")
                self.transport.close()

        def connection_lost(self, error: Exception | None) -> None:
            if not getattr(self, "_gw_admitted", False):
                return
            self._gw_admitted = False
            self.limits.leave(self._gw_ip)
            self._gw_deadline.cancel()
            super().connection_lost(error)

    return GatewaySMTP


def tls_context(cfg: SmtpSettings) -> ssl.SSLContext | None:
    if not (cfg.tls_cert and cfg.tls_key):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    return ctx


class SmtpListener:
    """Owns the asyncio server; `stop_accepting` answers 421 to new connections."""

    def __init__(self, handler: InboxHandler, cfg: SmtpSettings) -> None:
        self._handler = handler
        self._cfg = cfg
        self._server: asyncio.base_events.Server | None = None
        self._accepting = True
        self.limits = ConnectionLimits(cfg.max_connections, cfg.max_connections_per_ip)

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        cls = _protocol_class(self._cfg.lmtp)
        cls.limits = self.limits
        cls.deadline_s = self._cfg.session_deadline_s
        cls.accepting = lambda: self._accepting
        ctx = tls_context(self._cfg)
        kwargs: dict[str, Any] = dict(
            data_size_limit=self._cfg.max_message_size, hostname=self._cfg.hostname, decode_data=False,
            command_call_limit=self._cfg.command_call_limit, tls_context=ctx, require_starttls=False,
            auth_required=False, ident="Kundebetjening gateway", timeout=300, loop=loop)
        self._server = await loop.create_server(lambda: cls(self._handler, **kwargs),
                                                host=self._cfg.host, port=self._cfg.port)
        port = int(self._server.sockets[0].getsockname()[1])
        log.info("smtp.listening", extra={"host": self._cfg.host, "port": port, "lmtp": self._cfg.lmtp,
                                          "starttls": ctx is not None})
        return port

    def stop_accepting(self) -> None:
        self._accepting = False

    async def close(self, grace_s: float) -> None:
        self._accepting = False
        if self._server is None:
            return
        self._server.close()
        deadline = time.monotonic() + grace_s
        while sum(self.limits.open.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._server = None
