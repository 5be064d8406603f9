"""The SMTP (or LMTP) edge: cheap checks, raw bytes committed to the inbox, then 250 (rules §4).

Run inside our own event loop with `loop.create_server` (not aiosmtpd's threaded Controller).
aiosmtpd is reached only through gateway/ingest/smtp_adapter.py, and only by its public names
here: the adapter holds the fast paths that need its private parts, for the version they were
verified with.
Every reply is a named constant below. The handler never parses a mail: parsing happens in
the worker. If the commit fails or is too slow, the answer is 451 and the sender retries; a
commit that lands after a 451 is harmless, because the retry hits the dedup key.

Shutdown (`SmtpListener.close`): new connections get 421 while the sessions drain; a session
between transactions is told 421 and closed at once; one inside DATA gets its answer (250
after the commit, or 451) and then 421. Whatever is still open when the grace time runs out
is cut off without a reply, so the sender retries — never a 250 without a commit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, AnyStr

from gateway.addresses import canonical, local_and_tag
from gateway.ingest.smtp_adapter import (
    AIOSMTPD_VERSION,
    SMTP,
    VERIFIED_RANGE,
    Envelope,
    HandlerNames,
    Session,
    fast_paths,
    protocol_base,
    syntax,
)
from gateway.ingest.smtp_data import TOO_MUCH_DATA
from gateway.settings import SmtpSettings
from store.inbox import Accepted, IncomingMail, header_end

log = logging.getLogger("gateway.smtp")

OK_RCPT = "250 2.1.5 Recipient ok"
OK_QUEUED = "250 2.0.0 Ok: queued as {id}"
OK_DUPLICATE = "250 2.0.0 Ok: already have it as {id}"
TEMP_STORE = "451 4.3.0 Temporary local problem, please try again later"
TEMP_STORE_FULL = "452 4.3.1 Insufficient system storage, please try again later"
TEMP_TOO_MANY_RCPT = "452 4.5.3 Too many recipients"
TEMP_BUSY = "421 4.7.0 Too many connections, try again later"
TEMP_DEADLINE = "421 4.4.2 Session too long, closing connection"
TEMP_SHUTDOWN = "421 4.3.2 Service shutting down, try again later"
NO_SUCH_USER = "550 5.1.1 No such recipient here"
NO_RELAY = "550 5.7.1 Relaying denied"
BAD_ADDRESS = "553 5.1.3 Invalid address"
TOO_BIG = "552 5.3.4 Message too big"
TOO_BIG_DECLARED = "552 5.3.4 Message size exceeds fixed maximum message size"
TOO_MANY_HOPS = "554 5.4.6 Too many hops, mail loop suspected"
NO_VALID_RCPT = "554 5.5.1 No valid recipients"
NO_VRFY = "252 2.5.2 Cannot verify the user, but will accept mail for valid recipients"
NO_AUTH = "502 5.5.1 AUTH not available"
TEMP_ERRORS = "421 4.7.0 Too many errors, closing connection"
MAX_COMMAND_ERRORS = 10  # syntax errors and unknown commands per session (Postfix: 20)

# aiosmtpd's own texts for the size limit carry no enhanced status code; ours do.
_REWORDED = {
    TOO_MUCH_DATA: TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG_DECLARED,
}

Store = Callable[[IncomingMail], Awaitable[Accepted]]
_RECEIVED = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)


class Recipients:
    """Which envelope recipients are ours: a configured address or its `+tag` form."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        keys = [self._key(a) for a in addresses]
        self._ours = {k for k in keys if k is not None}
        self._domains = {k[1] for k in self._ours}

    @staticmethod
    def _key(address: str) -> tuple[str, str] | None:
        canon = canonical(address)
        if canon is None:
            return None
        base, _tag, domain = local_and_tag(canon)
        return base, domain

    def check(self, address: str) -> str | None:
        """None when accepted, else the SMTP reply."""
        key = self._key(address)
        if key is None:
            return BAD_ADDRESS
        if key in self._ours:
            return None
        return NO_SUCH_USER if key[1] in self._domains else NO_RELAY


def hop_count(raw: bytes) -> int:
    """Received headers in the header block (the loop breaker, catalogue 23)."""
    end = header_end(raw, 1_048_576)
    return len(_RECEIVED.findall(raw, 0, end if end is not None else min(len(raw), 1_048_576)))


class InboxHandler(HandlerNames):
    """aiosmtpd handler hooks. State lives in the envelope; the store is one callable."""

    def __init__(self, store: Store, cfg: SmtpSettings, addresses: tuple[str, ...],
                 on_accepted: Callable[[Accepted], None] | None = None) -> None:
        self._store = store
        self._cfg = cfg
        self._recipients = Recipients(addresses)
        self._on_accepted = on_accepted
        self.lmtp = cfg.lmtp

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        # No AUTH on an MX (catalogue 24); aiosmtpd would advertise it after STARTTLS.
        session.host_name = hostname
        return [r for r in responses if not r[4:].upper().startswith("AUTH")]

    async def handle_VRFY(self, server: SMTP, session: Session, envelope: Envelope, address: str) -> str:
        return NO_VRFY

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self._cfg.max_recipients:
            return TEMP_TOO_MANY_RCPT
        refusal = self._recipients.check(address)
        if refusal:
            log.info("smtp.rcpt_refused", extra={"peer": _peer(session), "reply": refusal[:9]})
            return refusal
        # Duplicates are kept here because LMTP owes one reply per accepted RCPT; the stored
        # envelope lists each address once.
        envelope.rcpt_tos.append(address)
        return OK_RCPT

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        try:
            return self._each(await self._receive(session, envelope), envelope)
        except Exception as exc:  # never aiosmtpd's "500 Error: (Exception) …"
            log.error("smtp.data_error", extra={"peer": _peer(session), "error": type(exc).__name__},
                      exc_info=exc)
            return self._each(TEMP_STORE, envelope)

    async def _receive(self, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if not envelope.rcpt_tos:
            return NO_VALID_RCPT
        if hop_count(raw) >= self._cfg.max_received_headers:
            log.warning("smtp.too_many_hops", extra={"peer": _peer(session), "size": len(raw)})
            return TOO_MANY_HOPS
        mail = IncomingMail(raw, "smtp", envelope.mail_from or None, _unique(envelope.rcpt_tos))
        started = time.monotonic()
        try:
            accepted = await _within(self._store(mail), self._cfg.store_timeout_s)
        except Exception as exc:
            log.warning("smtp.store_failed", extra={"peer": _peer(session), "error": _describe(exc),
                                                    "ms": _ms(started)})
            return TEMP_STORE_FULL if _disk_full(exc) else TEMP_STORE
        log.info("mail.received", extra={"inbound_id": accepted.inbound_id, "source": "smtp", "size": len(raw),
                                         "duplicate": accepted.duplicate, "peer": _peer(session),
                                         "ms": _ms(started)})
        if self._on_accepted is not None and not accepted.duplicate:
            self._on_accepted(accepted)
        reply = OK_DUPLICATE if accepted.duplicate else OK_QUEUED
        return reply.format(id=accepted.inbound_id)

    def _each(self, reply: str, envelope: Envelope) -> str:
        """LMTP answers once per accepted RCPT (RFC 2033); SMTP once per transaction."""
        return "\r\n".join([reply] * len(envelope.rcpt_tos)) if self.lmtp and envelope.rcpt_tos else reply

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default is "500 Error: (Class) message": permanent, and it leaks internals.
        log.error("smtp.handler_error", extra={"error": type(error).__name__}, exc_info=error)
        return TEMP_STORE


async def _within(answer: Awaitable[Accepted], seconds: float) -> Accepted:
    """The store's answer, or TimeoutError after `seconds`, never cancelling the store's work:
    a commit that lands late is harmless (the sender retries; the dedup key knows the mail).

    The group committer's answer is a plain future, awaited directly: `wait_for(shield(…))`
    put two more turns of a busy event loop between the commit and the 250.
    """
    if not isinstance(answer, asyncio.Future) or isinstance(answer, asyncio.Task):
        return await asyncio.wait_for(asyncio.shield(answer), seconds)
    timer = asyncio.get_running_loop().call_later(seconds, _time_out, answer)
    try:
        return await answer
    finally:
        timer.cancel()


def _time_out(answer: asyncio.Future[Accepted]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())


def _unique(addresses: list[str]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for address in addresses:
        seen.setdefault(canonical(address) or address.lower(), address)
    return tuple(seen.values())


def _describe(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__


def _disk_full(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc
    return "full" in str(cause).lower() and "disk" in str(cause).lower()


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _peer(session: Session) -> str:
    peer = session.peer
    return peer[0] if isinstance(peer, tuple) else str(peer)


class ConnectionLimits:
    """Global and per-IP connection caps (aiosmtpd has none, catalogue 19).

    The relays the operator trusts (`smtp.trusted_relays`: the Postfix in front) have a limit
    of their own per address, outside the global and per-IP caps: Postfix opens up to 20
    connections per destination and keeps more in its connection cache, and a 421 at connect
    makes it suspend all delivery to us for its back-off time. Nor can a crowd of other
    clients take their places.
    """

    def __init__(self, total: int, per_ip: int, trusted: tuple[str, ...] = (), per_relay: int = 0) -> None:
        self.total = total
        self.per_ip = per_ip
        self.per_relay = per_relay
        self._trusted = [ipaddress.ip_network(net, strict=False) for net in trusted]
        self.open: Counter[str] = Counter()
        self.relayed: Counter[str] = Counter()

    def trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip.removeprefix("::ffff:") if "." in ip else ip)
        except ValueError:
            return False
        return any(address in net for net in self._trusted)

    def admit(self, ip: str) -> bool:
        if self.trusted(ip):
            if self.relayed[ip] >= self.per_relay:
                return False
            self.relayed[ip] += 1
            return True
        if self.count() >= self.total or self.open[ip] >= self.per_ip:
            return False
        self.open[ip] += 1
        return True

    def leave(self, ip: str) -> None:
        counter = self.relayed if ip in self.relayed else self.open
        counter[ip] -= 1
        if counter[ip] <= 0:
            del counter[ip]

    def count(self) -> int:
        return sum(self.open.values())


class Gate:
    """What the sessions of one listener share: caps, the open sessions, whether we accept."""

    def __init__(self, limits: ConnectionLimits, deadline_s: float) -> None:
        self.limits = limits
        self.deadline_s = deadline_s
        self.accepting = True
        self.sessions: set[Any] = set()


def protocol_class(lmtp: bool, gate: Gate, fast: bool = True) -> type[SMTP]:
    """The session class of one listener: aiosmtpd's protocol (through the adapter, with its fast
    paths unless `fast` is False) plus connection caps, a session deadline, graceful shutdown,
    the error budget and our replies to AUTH and to the size limit. Only public names of
    aiosmtpd's protocol are used here; our own attributes are named gw_*."""
    base = protocol_base(lmtp, fast)

    class GatewaySMTP(base):  # type: ignore[valid-type, misc]
        gw_started = False
        gw_admitted = False
        gw_in_data = False
        gw_errors = 0
        gw_ip = ""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            if self.gw_started:  # STARTTLS hands the TLS transport in again
                super().connection_made(transport)
                return
            self.gw_started = True
            peer = transport.get_extra_info("peername")
            self.gw_ip = peer[0] if isinstance(peer, tuple) else str(peer)
            refusal = (TEMP_SHUTDOWN if not gate.accepting
                       else None if gate.limits.admit(self.gw_ip) else TEMP_BUSY)
            if refusal:
                log.info("smtp.connection_refused", extra={"peer": self.gw_ip, "reply": refusal[:9]})
                transport.write(refusal.encode() + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
            self.gw_admitted = True
            gate.sessions.add(self)
            super().connection_made(transport)
            self.gw_deadline = asyncio.get_running_loop().call_later(gate.deadline_s, self.gw_expire)

        def gw_expire(self) -> None:
            self.gw_close(TEMP_DEADLINE)

        def gw_close(self, reply: str | None) -> None:
            """End the session now, with a last reply when one is given."""
            if self.transport is not None and not self.transport.is_closing():
                if reply:
                    self.transport.write(reply.encode() + b"\r\n")
                self.transport.close()

        def gw_shutdown(self) -> None:
            """Between transactions: 421 now. Inside DATA: after the reply (smtp_DATA below)."""
            if not self.gw_in_data:
                self.gw_close(TEMP_SHUTDOWN)

        @syntax("DATA")
        async def smtp_DATA(self, arg: str) -> None:
            """The base's DATA; a shutdown lets it answer and then says 421 (gw_shutdown)."""
            self.gw_in_data = True
            try:
                await super().smtp_DATA(arg)
            finally:
                self.gw_in_data = False
            if not gate.accepting:
                self.gw_close(TEMP_SHUTDOWN)

        async def smtp_AUTH(self, arg: str) -> None:
            await self.push(NO_AUTH)

        async def push(self, status: AnyStr) -> None:
            if isinstance(status, str):
                status = _REWORDED.get(status, status)  # type: ignore[assignment]
            await super().push(status)
            if status[:2] in ("50", b"50"):  # aiosmtpd counts only unknown verbs (catalogue 20)
                self.gw_errors += 1
                if self.gw_errors >= MAX_COMMAND_ERRORS:
                    log.info("smtp.too_many_errors", extra={"peer": self.gw_ip})
                    self.gw_close(TEMP_ERRORS)

        def connection_lost(self, error: Exception | None) -> None:
            if not self.gw_admitted:
                return
            self.gw_admitted = False
            gate.limits.leave(self.gw_ip)
            gate.sessions.discard(self)
            self.gw_deadline.cancel()
            super().connection_lost(error)

    return GatewaySMTP


def tls_context(cfg: SmtpSettings) -> ssl.SSLContext | None:
    if not (cfg.tls_cert and cfg.tls_key):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    return ctx


def call_limits(cfg: SmtpSettings) -> dict[str, int]:
    """Per-session command budgets (catalogue 21).

    The transaction commands get ten times the budget, so an MTA that sends many mails over
    one cached connection is not cut off, while a NOOP/RSET flood still is.
    """
    many = cfg.command_call_limit * 10
    return {"*": cfg.command_call_limit, "MAIL": many, "DATA": many, "RSET": many,
            "RCPT": max(many, cfg.max_recipients * 10)}


def protocol_options(cfg: SmtpSettings, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """The keyword arguments of aiosmtpd's protocol for the listener (also given to stock
    aiosmtpd by the conformance test and the bench's floor, so the limits are the same)."""
    return dict(data_size_limit=cfg.max_message_size, hostname=cfg.hostname, decode_data=False,
                command_call_limit=call_limits(cfg), tls_context=tls_context(cfg), require_starttls=False,
                auth_required=False, ident="Kundebetjening gateway", timeout=300, loop=loop)


class SmtpListener:
    """Owns the asyncio server; `close` drains the sessions as the module docstring says."""

    def __init__(self, handler: InboxHandler, cfg: SmtpSettings, *, fast: bool = True) -> None:
        self._handler = handler
        self._cfg = cfg
        self._fast = fast and fast_paths()
        self._server: asyncio.base_events.Server | None = None
        self.limits = ConnectionLimits(cfg.max_connections, cfg.max_connections_per_ip, cfg.trusted_relays,
                                       cfg.max_connections_per_relay)
        self._gate = Gate(self.limits, cfg.session_deadline_s)
        self.port = 0

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        if not fast_paths():
            log.warning("smtp.aiosmtpd_unverified", extra={"version": AIOSMTPD_VERSION, "verified": VERIFIED_RANGE})
        cls = protocol_class(self._cfg.lmtp, self._gate, self._fast)
        options = protocol_options(self._cfg, loop)
        self._server = await loop.create_server(lambda: cls(self._handler, **options),
                                                host=self._cfg.host, port=self._cfg.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("smtp.listening", extra={"host": self._cfg.host, "port": self.port, "lmtp": self._cfg.lmtp,
                                          "starttls": options["tls_context"] is not None,
                                          "fast_paths": self._fast})
        return self.port

    @property
    def sessions(self) -> int:
        return len(self._gate.sessions)

    def serving(self) -> bool:
        """Accepting connections (for /healthz)."""
        return self._server is not None and self._server.is_serving() and self._gate.accepting

    def stop_accepting(self) -> None:
        """421 to new connections and to sessions between transactions; DATA may finish."""
        self._gate.accepting = False
        for session in list(self._gate.sessions):
            session.gw_shutdown()

    async def close(self, grace_s: float) -> None:
        self.stop_accepting()
        if self._server is None:
            return
        deadline = time.monotonic() + grace_s
        while self._gate.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        late = list(self._gate.sessions)
        for session in late:  # out of time: no reply, so the sender retries
            session.gw_close(None)
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        log.info("smtp.closed", extra={"cut_off": len(late)})
