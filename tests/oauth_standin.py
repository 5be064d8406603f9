"""A stand-in for Microsoft Entra ID on 127.0.0.1, for the OAuth2 IMAP tests (docs/testing.md).

Two stdlib `ThreadingHTTPServer`s share one state:
- https (msal accepts nothing else), with a certificate from a test CA made here with the
  `openssl` command: `GET /<tenant>/v2.0/.well-known/openid-configuration` and
  `POST /<tenant>/oauth2/v2.0/token` (client-credentials grant, answers shaped like Entra's,
  errors with Entra's documented AADSTS numbers in `error_codes`);
- http, for Dovecot's `oauth2` passdb: `POST /introspect/<mailbox>` (RFC 7662). Dovecot 2.3 sends
  no user name, so each mailbox has a passdb of its own with its own URL (tests/dovecot.py), and
  one token serves every mailbox granted to its app, as in Exchange Online.

Nothing here is secret: the keys live in the test's temporary folder and die with it.
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TENANT = "3f1c2b7a-0d4e-4c55-9a8e-7b6d5c4e3a21"
SCOPE = "https://outlook.office365.com/.default"
INTROSPECT_ID, INTROSPECT_SECRET = "dovecot", "introspect-secret"
LIFETIME_S = 3599


@dataclass
class Client:
    secret: str
    roles: tuple[str, ...] = ("IMAP.AccessAsApp",)
    mailboxes: set[str] = field(default_factory=set)
    secret_expired: bool = False
    revoked: bool = False


@dataclass
class Token:
    client_id: str
    expires_at: float
    revoked: bool = False


def make_test_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1: (ca.pem, server.pem, server.key)."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", "/CN=gateway test IdP CA", "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n", encoding="ascii")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


class IdentityProvider:
    """`start()`, `stop()`; the clients and their grants are plain attributes the test may change."""

    def __init__(self, root: Path, mailboxes: tuple[str, ...] = ()) -> None:
        self.ca_file, cert, key = make_test_ca(root / "idp-tls")
        granted = set(mailboxes)
        self.clients: dict[str, Client] = {
            "gateway-app": Client("app-secret", mailboxes=granted),
            "no-imap-app": Client("other-secret", roles=("Mail.Read",), mailboxes=set(granted)),
            "expired-app": Client("old-secret", mailboxes=set(granted), secret_expired=True),
        }
        self.tokens: dict[str, Token] = {}
        self.grants: dict[str, int] = {}
        self.introspections = 0
        self.introspection_down = False  # answers 503: Dovecot then says [UNAVAILABLE]
        self._lock = threading.Lock()
        self._https = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self._https.socket = context.wrap_socket(self._https.socket, server_side=True)
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.https_port = self._https.server_address[1]
        self.http_port = self._http.server_address[1]
        self._threads: list[threading.Thread] = []

    @property
    def authority(self) -> str:
        return f"https://127.0.0.1:{self.https_port}/{TENANT}"

    def token_url(self, tenant: str = TENANT) -> str:
        return f"https://127.0.0.1:{self.https_port}/{tenant}/oauth2/v2.0/token"

    def introspection_url(self, mailbox: str) -> str:
        return f"http://127.0.0.1:{self.http_port}/introspect/{urllib.parse.quote(mailbox)}"

    def start(self) -> IdentityProvider:
        for server in (self._https, self._http):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in (self._https, self._http):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> IdentityProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what a test does to it ---------------------------------------------------------------

    def add_client(self, client_id: str, secret: str, mailboxes: set[str], roles: tuple[str, ...] = (
            "IMAP.AccessAsApp",), secret_expired: bool = False) -> str:
        with self._lock:
            self.clients[client_id] = Client(secret, roles, set(mailboxes), secret_expired)
        return client_id

    def issued(self, client_id: str = "gateway-app") -> list[str]:
        with self._lock:
            return [t for t, info in self.tokens.items() if info.client_id == client_id]

    def expire_tokens(self, client_id: str = "gateway-app") -> None:
        """Every token of the client ends now, as a token past its lifetime (msal does not know)."""
        with self._lock:
            for info in self.tokens.values():
                if info.client_id == client_id:
                    info.expires_at = time.time() - 1

    def revoke_client(self, client_id: str = "gateway-app") -> None:
        """The app's secret is deleted in Entra: its tokens die and it gets no new ones."""
        with self._lock:
            self.clients[client_id].revoked = True
            for info in self.tokens.values():
                if info.client_id == client_id:
                    info.revoked = True

    # -- the endpoints ------------------------------------------------------------------------

    def openid_configuration(self, tenant: str, host: str) -> tuple[int, dict[str, Any]]:
        if tenant != TENANT:
            return 400, _aad("invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        base = f"https://{host}/{tenant}"
        return 200, {"issuer": f"{base}/v2.0", "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                     "token_endpoint": f"{base}/oauth2/v2.0/token", "token_endpoint_auth_methods_supported":
                     ["client_secret_post", "client_secret_basic"]}

    def grant(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if tenant != TENANT:
            return 400, _aad("invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return 400, _aad("unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        client = self.clients.get(form.get("client_id", ""))
        if client is None:
            return 400, _aad("unauthorized_client", 700016,
                             f"Application with identifier '{form.get('client_id')}' was not found in the "
                             f"directory '{tenant}'.")
        if client.revoked or form.get("client_secret") != client.secret:
            return 401, _aad("invalid_client", 7000215, "Invalid client secret provided.")
        if client.secret_expired:
            return 401, _aad("invalid_client", 7000222, "The provided client secret keys are expired.")
        if form.get("scope") != SCOPE:
            return 400, _aad("invalid_scope", 70011, "The provided value for the input parameter 'scope' is "
                             "not valid.")
        token = secrets.token_urlsafe(48)
        with self._lock:
            self.tokens[token] = Token(form["client_id"], time.time() + LIFETIME_S)
            self.grants[form["client_id"]] = self.grants.get(form["client_id"], 0) + 1
        return 200, {"token_type": "Bearer", "expires_in": LIFETIME_S, "ext_expires_in": LIFETIME_S,
                     "access_token": token}

    def introspect(self, mailbox: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if self.introspection_down:
            return 503, {"error": "temporarily_unavailable"}
        if (form.get("client_id"), form.get("client_secret")) != (INTROSPECT_ID, INTROSPECT_SECRET):
            return 401, {"error": "invalid_client"}
        with self._lock:
            self.introspections += 1
            info = self.tokens.get(form.get("token", ""))
            client = self.clients.get(info.client_id) if info else None
        # "active" is always sent; a reply without it counts as active.
        if info is None or client is None or info.revoked or info.expires_at < time.time() \
                or mailbox not in client.mailboxes:
            return 200, {"active": False}
        # No expires_in here (Dovecot reads it as uint32).
        return 200, {"active": True, "username": mailbox, "client_id": info.client_id,
                     "scope": " ".join(client.roles), "iat": int(info.expires_at) - LIFETIME_S,
                     "exp": int(info.expires_at), "token_type": "Bearer"}


def _aad(error: str, code: int, text: str) -> dict[str, Any]:
    """An error shaped like Entra's: the AADSTS number in the text and in `error_codes`."""
    return {"error": error, "error_description": f"AADSTS{code}: {text} Trace ID: {secrets.token_hex(8)}",
            "error_codes": [code], "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())}


def _handler(idp: IdentityProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows stderr
            pass

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
                self._answer(*idp.openid_configuration(parts[0], self.headers.get("Host", "")))
            else:
                self._answer(404, {"error": "not_found"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode("utf-8")))
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
                self._answer(*idp.grant(parts[0], form))
            elif len(parts) == 2 and parts[0] == "introspect":
                self._answer(*idp.introspect(urllib.parse.unquote(parts[1]), form))
            else:
                self._answer(404, {"error": "not_found"})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
