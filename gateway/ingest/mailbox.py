"""The seam around imapclient: blocking IMAP I/O for one account, run from that account's thread
(`gateway.ingest.imap.AccountReader` drives it).

Every failure of the server becomes `ImapProblem` with plain words (`translate`), once, here.
An account logs in with its password, or by XOAUTH2 / OAUTHBEARER with a token from its
`TokenSource` (gateway.ingest.oauth): a refused token is renewed once and tried again on the same
connection; a fresh token refused too means the app may not read this mailbox.
Certificates are always verified; a literal a hostile server announces is bounded before it is
read (catalogue 97). Only UIDs are used, and folder names only go through the imapclient API.
"""

from __future__ import annotations

import contextlib
import imaplib
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from gateway.errors import TemporaryFailure, TokenUnavailable
from gateway.ingest.oauth import TokenSource
from gateway.settings import ImapAccount

log = logging.getLogger("gateway.imap")

SEEN = "\\Seen"
DONE_KEYWORD = "$GatewayIngested"   # set in flag mode, so a rescan can skip what was taken
SOCKET_TIMEOUT_S = 60.0             # a silent server must not hold the account's thread forever
MIN_LITERAL_RATE = 50_000           # bytes/s: a literal slower than this (after one timeout) is a trickle
LITERAL_CHUNK = 1 << 20

T = TypeVar("T")


class ImapProblem(TemporaryFailure):
    """The account cannot be read now; the message says why in plain words."""


# -- the seam around imapclient (blocking; runs in the account's thread) ----------------------

@dataclass(frozen=True)
class FolderInfo:
    uidvalidity: int
    keywords: bool   # may we set our own keyword (PERMANENTFLAGS has \*)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def translate(exc: BaseException, account: ImapAccount, connecting: bool = False) -> ImapProblem:
    """One library error → one sentence an operator understands."""
    where = f"{account.host}:{account.port}"
    if isinstance(exc, ImapProblem):
        return exc
    if isinstance(exc, TokenUnavailable):
        return ImapProblem(str(exc))
    if isinstance(exc, LoginError):
        return ImapProblem(f"login refused by {where} for {account.username}: {_said(exc)} "
                           "(check username and password)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ImapProblem(f"TLS failure with {where}: certificate not trusted ({exc.verify_message})")
    if isinstance(exc, ssl.SSLError):
        return ImapProblem(f"TLS failure with {where}: {exc.reason or exc} (is tls = {account.tls!r} right "
                           "for this port?)")
    if isinstance(exc, socket.gaierror):
        return ImapProblem(f"cannot connect to {where}: host name not found")
    if isinstance(exc, TimeoutError):
        return ImapProblem(f"{'cannot connect to' if connecting else 'connection lost to'} {where}: no answer "
                           "in time")
    if isinstance(exc, OSError | imaplib.IMAP4.abort):
        verb = "cannot connect to" if connecting else "connection lost to"
        return ImapProblem(f"{verb} {where}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")
    if isinstance(exc, imaplib.IMAP4.error) and "BYE" in str(exc):
        return ImapProblem(f"connection lost to {where}: the server said goodbye ({str(exc)[:200]})")
    if isinstance(exc, imaplib.IMAP4.error):
        return ImapProblem(f"{where} refused a command: {str(exc)[:200]}")
    return ImapProblem(f"unexpected error with {where}: {type(exc).__name__}: {str(exc)[:200]}")


def _said(exc: BaseException) -> str:
    return str(exc).strip("b'\"")[:200]


class Mailbox:
    """Blocking IMAP I/O for one account. Every call is made from the account's own thread."""

    def __init__(self, account: ImapAccount, timeout_s: float = SOCKET_TIMEOUT_S,
                 tokens: TokenSource | None = None) -> None:
        self.account = account
        self._timeout = timeout_s
        self._tokens = tokens
        self._client: IMAPClient | None = None
        self._idling = False
        self._empty_wakeups = 0
        self._known: set[str] = set()
        self.can_idle = False

    @property
    def client(self) -> IMAPClient:
        if self._client is None:
            raise ImapProblem("not connected")
        return self._client

    def connect(self) -> None:
        a = self.account
        if a.tls == "none" and not _loopback(a.host):
            raise ImapProblem(f"refused: tls = 'none' is only allowed for a loopback host, not {a.host}")
        try:
            # verification on, always (catalogue 96); loading the CA store is not free, so
            # only when there is TLS
            context = ssl.create_default_context() if a.tls != "none" else None
            client = IMAPClient(a.host, port=a.port, ssl=a.tls == "implicit", ssl_context=context,
                                timeout=self._timeout)
            self._client = client
            self._quiet_imaplib(client)
            self._bound_literals(client)
            if a.tls == "starttls":
                if not client.has_capability("STARTTLS"):
                    raise ImapProblem(f"TLS failure with {a.host}:{a.port}: the server does not offer STARTTLS; "
                                      "refusing to log in without encryption")
                client.starttls(context)
        except Exception as exc:
            self.close()
            raise translate(exc, a, connecting=True) from exc
        self._login(client)
        self.can_idle = a.idle and bool(self._guard(client.has_capability, "IDLE"))

    def _login(self, client: IMAPClient) -> None:
        a = self.account
        if a.auth == "password":
            self._guard(client.login, a.username, a.password)
            return
        if self._tokens is None:
            raise ImapProblem(f"account {a.name} logs in by {a.auth} but has no token source")
        token = self._tokens.token()
        try:
            self._authenticate(client, token)
            return
        except LoginError as exc:
            if "[UNAVAILABLE]" in str(exc):  # RFC 5530: the server could not check the token now
                raise ImapProblem(f"{a.host}:{a.port} could not check the OAuth2 token for {a.username} now "
                                  f"(its identity provider did not answer): {_said(exc)}") from exc
        log.info("imap.token_refused", extra={"account": a.name})
        try:
            self._authenticate(client, self._tokens.renew(token))
        except LoginError as exc:
            raise ImapProblem(f"login refused by {a.host}:{a.port} for {a.username} with a fresh OAuth2 token: "
                              "the app is not granted this mailbox (FullAccess) or lacks IMAP.AccessAsApp: "
                              f"{_said(exc)}") from exc

    def _authenticate(self, client: IMAPClient, token: str) -> None:
        """XOAUTH2 (Microsoft's) or OAUTHBEARER (RFC 7628); a refusal is the LoginError itself."""
        a = self.account
        mechanism = "XOAUTH2" if a.auth == "xoauth2" else "OAUTHBEARER"
        if not self._guard(client.has_capability, f"AUTH={mechanism}"):
            raise ImapProblem(f"{a.host}:{a.port} does not offer AUTH={mechanism} (auth = {a.auth!r})")
        login = client.oauth2_login if a.auth == "xoauth2" else client.oauthbearer_login
        try:
            login(a.username, token)
        except LoginError:
            raise
        except Exception as exc:
            raise translate(exc, a) from exc

    @staticmethod
    def _quiet_imaplib(client: IMAPClient) -> None:
        """imapclient sets imaplib's debug level to 5 and sends its messages to the logger
        "imapclient.imaplib" at DEBUG. imaplib builds each message before the logger can say
        no: the repr of every untagged response, so a FETCH of 200 mails of 20 KB formatted
        about 8 MB of text nobody reads. The level
        stays 5 only when that logger would show the messages."""
        if not logging.getLogger("imapclient.imaplib").isEnabledFor(logging.DEBUG):
            client._imap.debug = 0

    def _bound_literals(self, client: IMAPClient) -> None:
        """catalogue 97: a hostile or broken server must not make us allocate what it announces,
        nor hold the thread by trickling. Python 3.11's imaplib reads a literal `{n}` with one
        read(n), which allocates n bytes before the first one arrives (gh-119511), and the socket
        timeout bounds one silence, not a trickle. So a literal over twice `max_message_size`
        (room for an RFC822.SIZE that is not exact) is refused before anything is read, and one
        is read piece by piece against a deadline: one socket timeout plus its size at
        MIN_LITERAL_RATE. A refusal drops the connection, whose stream is mid-literal."""
        imap = client._imap
        limit = 2 * self.account.max_message_size

        def read(size: int) -> bytes:
            where = f"{self.account.host}:{self.account.port}"
            if size > limit:
                problem = f"{where} announced a literal of {size} bytes, over the limit of {limit}"
            else:
                deadline = time.monotonic() + self._timeout + size / MIN_LITERAL_RATE
                parts: list[bytes] = []
                left = size
                while left > 0:
                    part = imap.file.read1(min(left, LITERAL_CHUNK))  # whatever has arrived, at most one recv
                    if not part:  # the server closed: imaplib sees the end on its next line
                        return b"".join(parts)
                    parts.append(part)
                    left -= len(part)
                    if left > 0 and time.monotonic() > deadline:
                        break
                else:
                    return b"".join(parts)
                problem = f"{where} sent a literal of {size} bytes too slowly ({size - left} in time)"
            with contextlib.suppress(Exception):
                imap.shutdown()
            raise ImapProblem(f"{problem}; connection dropped")

        imap.read = read

    def _guard(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except Exception as exc:
            raise translate(exc, self.account) from exc

    def select(self, folder: str) -> FolderInfo:
        c = self.client
        if not self._guard(c.folder_exists, folder):
            raise ImapProblem(f"folder {folder!r} does not exist on {self.account.host} for {self.account.username}")
        info = self._guard(c.select_folder, folder)
        return FolderInfo(int(info[b"UIDVALIDITY"]), b"\\*" in info.get(b"PERMANENTFLAGS", ()))

    def ensure_folder(self, folder: str) -> bool:
        """True when it had to be created."""
        if folder in self._known:
            return False
        created = not self._guard(self.client.folder_exists, folder)
        if created:
            try:
                self._guard(self.client.create_folder, folder)
            except ImapProblem:
                if not self._guard(self.client.folder_exists, folder):
                    raise
                created = False  # another client made it in the meantime
        self._known.add(folder)
        return created

    def search(self, criteria: list[str]) -> list[int]:
        return sorted(int(u) for u in self._guard(self.client.search, criteria))

    def search_fresh(self, criteria: list[str]) -> list[int]:
        """SEARCH after a NOOP: Dovecot brings messages that arrived since this connection's
        last command into its view on NOOP, not on SEARCH."""
        self._guard(self.client.noop)
        return self.search(criteria)

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        data = self._guard(self.client.fetch, list(uids), ["RFC822.SIZE"])
        return {int(uid): int(item[b"RFC822.SIZE"]) for uid, item in data.items() if b"RFC822.SIZE" in item}

    def bodies(self, uids: Sequence[int]) -> dict[int, bytes]:
        """Raw messages by UID; a UID expunged meanwhile is simply absent (catalogue 95)."""
        data = self._guard(self.client.fetch, list(uids), ["BODY.PEEK[]"])
        return {int(uid): bytes(item[b"BODY[]"]) for uid, item in data.items() if item.get(b"BODY[]") is not None}

    def move(self, uids: Sequence[int], folder: str) -> None:
        self.ensure_folder(folder)
        c = self.client
        if self._guard(c.has_capability, "MOVE"):
            self._guard(c.move, list(uids), folder)
            return
        self._guard(c.copy, list(uids), folder)
        self.delete(uids)

    def flag(self, uids: Sequence[int], keyword: bool) -> None:
        flags = [SEEN, DONE_KEYWORD] if keyword else [SEEN]
        self._guard(self.client.add_flags, list(uids), flags, True)

    def delete(self, uids: Sequence[int]) -> None:
        c = self.client
        self._guard(c.delete_messages, list(uids), True)
        if self._guard(c.has_capability, "UIDPLUS"):
            self._guard(c.uid_expunge, list(uids))
        else:
            self._guard(c.expunge)

    def idle_start(self) -> None:
        self._guard(self.client.idle)
        self._idling = True
        self._empty_wakeups = 0

    def idle_wait(self, timeout_s: float) -> bool:
        """True when the server announced new messages."""
        started = time.monotonic()
        responses = self._guard(self.client.idle_check, timeout_s)
        # imapclient returns nothing, at once, when the server closed the connection: a
        # wake-up with nothing to read, again and again, is a dead connection.
        early = not responses and time.monotonic() - started < timeout_s / 2
        self._empty_wakeups = self._empty_wakeups + 1 if early else 0
        if self._empty_wakeups >= 3:
            raise ImapProblem(f"connection lost to {self.account.host}:{self.account.port}: closed by the server")
        for response in responses:
            if b"BYE" in response:
                raise ImapProblem(f"connection lost to {self.account.host}:{self.account.port}: server said BYE")
        return any(len(r) > 1 and r[1] == b"EXISTS" for r in responses)

    def idle_end(self) -> None:
        if self._idling:
            self._idling = False
            self._guard(self.client.idle_done)

    def forget_idle(self) -> None:
        """The connection is being dropped: do not try to end IDLE politely on it."""
        self._idling = False

    def close(self) -> None:
        client, self._client = self._client, None
        self._known.clear()
        if client is None:
            return
        try:
            sock = client.socket()
            sock.settimeout(2.0)   # a dead server must not hold a shutdown
            if self._idling:
                client.idle_done()
            client.logout()
        except Exception:
            with contextlib.suppress(Exception):
                client.shutdown()
        self._idling = False
