"""A stand-in OpenID Connect provider on 127.0.0.1, for the portal's single sign-on tests.

A stdlib `ThreadingHTTPServer` (plain http on the loopback, which the portal allows for an
issuer there) with what a provider must offer the portal:
- `GET /.well-known/openid-configuration` (discovery) and `GET /jwks` (an RSA key made at test
  time with joserfc);
- `GET /authorize` (authorization code + PKCE): checks the client, the registered redirect URI,
  `code_challenge_method=S256`, a `state`, a `nonce` and the `openid` scope, then sends the
  browser straight back with a code — whoever `next_login` says logs in (no login form);
- `POST /token`: the client's secret (HTTP Basic), the code once, the same redirect URI, and
  PKCE — SHA-256 of the `code_verifier` must be the challenge — then a signed ID token;
- `GET /userinfo` with the access token.

A `Login` also says how its ID token goes wrong, for the refused cases: claims overridden
(`aud`, `nonce`, `exp`, `iss`, `email_verified`), signed by a key not in the JWKS under the same
key id, or the e-mail left out of the token (then only the userinfo endpoint has it).
Nothing here is secret: the keys live in memory and die with the test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

CLIENT_ID, CLIENT_SECRET = "serviceportalen", "sso-test-secret-0123456789"
KID = "test-key-1"


@dataclass
class Login:
    """Who logs in at the provider next, and how their ID token is made."""

    email: str
    verified: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)  # claims replaced (None: removed)
    forged: bool = False  # signed with a key the JWKS does not have (same kid)
    email_in_token: bool = True


@dataclass
class Grant:
    login: Login
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    used: bool = False


class OidcProvider:
    """`start()`, `stop()`, `issuer`; set `next_login` before each flow."""

    def __init__(self, redirect_uri: str) -> None:
        self.redirect_uri = redirect_uri
        self.key = RSAKey.generate_key(2048, parameters={"kid": KID, "use": "sig", "alg": "RS256"})
        self.forger = RSAKey.generate_key(2048, parameters={"kid": KID, "use": "sig", "alg": "RS256"})
        self.next_login: Login | None = None
        self.token_status = 200  # 500: the token endpoint fails
        self.grants: dict[str, Grant] = {}
        self.access: dict[str, dict[str, Any]] = {}
        self.token_requests: list[dict[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
            "userinfo_endpoint": f"{self.issuer}/userinfo", "response_types_supported": ["code"],
            "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"], "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        }

    def authorize(self, query: dict[str, str]) -> tuple[int, str]:
        """(status, redirect location or error text)."""
        wanted = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": self.redirect_uri,
                  "code_challenge_method": "S256"}
        for name, value in wanted.items():
            if query.get(name) != value:
                return 400, f"bad {name}"
        if "openid" not in query.get("scope", "").split() or not query.get("state") or not query.get("nonce"):
            return 400, "scope openid, state and nonce are required"
        if not query.get("code_challenge") or self.next_login is None:
            return 400, "no code_challenge, or no one to log in"
        code = secrets.token_urlsafe(24)
        self.grants[code] = Grant(self.next_login, CLIENT_ID, query["redirect_uri"], query["code_challenge"],
                                  query["nonce"])
        back = urllib.parse.urlencode({"code": code, "state": query["state"]})
        return 302, f"{query['redirect_uri']}?{back}"

    def token(self, form: dict[str, str], authorization: str) -> tuple[int, dict[str, Any]]:
        self.token_requests.append(form)
        if self.token_status != 200:
            return self.token_status, {"error": "server_error"}
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if authorization != expected:
            return 401, {"error": "invalid_client"}
        grant = self.grants.get(form.get("code", ""))
        if form.get("grant_type") != "authorization_code" or grant is None or grant.used:
            return 400, {"error": "invalid_grant"}
        grant.used = True
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if form.get("redirect_uri") != grant.redirect_uri or not verifier or challenge != grant.challenge:
            return 400, {"error": "invalid_grant", "error_description": "PKCE or redirect_uri mismatch"}
        access = secrets.token_urlsafe(24)
        login = grant.login
        self.access[access] = {"sub": _subject(login.email), "email": login.email, "email_verified": login.verified}
        return 200, {"access_token": access, "token_type": "Bearer", "expires_in": 300,
                     "id_token": self.id_token(grant), "scope": "openid email"}

    def id_token(self, grant: Grant) -> str:
        login, now = grant.login, int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "sub": _subject(login.email), "aud": grant.client_id,
                                  "exp": now + 300, "iat": now, "nonce": grant.nonce}
        if login.email_in_token:
            claims |= {"email": login.email, "email_verified": login.verified}
        for name, value in login.overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        key = self.forger if login.forged else self.key
        return jwt.encode({"alg": "RS256", "kid": KID, "typ": "JWT"}, claims, key)

    def userinfo(self, authorization: str) -> tuple[int, dict[str, Any]]:
        found = self.access.get(authorization.removeprefix("Bearer "))
        return (200, found) if found else (401, {"error": "invalid_token"})


def _subject(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()[:24]


def _handler(provider: OidcProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/.well-known/openid-configuration":
                self._json(200, provider.discovery())
            elif url.path == "/jwks":
                self._json(200, {"keys": [provider.key.as_dict(private=False)]})
            elif url.path == "/authorize":
                status, where = provider.authorize(query)
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", where)
                self.send_header("Content-Length", "0" if status == 302 else str(len(where)))
                self.end_headers()
                if status != 302:
                    self.wfile.write(where.encode())
            elif url.path == "/userinfo":
                self._json(*provider.userinfo(self.headers.get("Authorization", "")))
            else:
                self._json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            if self.path == "/token":
                self._json(*provider.token(dict(urllib.parse.parse_qsl(body)), self.headers.get("Authorization", "")))
            else:
                self._json(404, {"error": "not_found"})

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
