"""OAuth2 access tokens for IMAP logins to Microsoft 365 (XOAUTH2 / OAUTHBEARER).

The seam is `TokenSource`: what `gateway.ingest.mailbox.Mailbox` asks for a bearer token.
`MsalTokenSource` gets one by the client-credentials grant of an Entra app, through msal.
Exchange Online serves every mailbox granted to an app with one app token, so the accounts of
one app (token URL, client id, secret variable, scope) share one source — shared mailboxes too.

A token is kept until REFRESH_MARGIN_S before it expires; this cache is the one rule. Each
fetch first removes msal's cached tokens for the client (`remove_tokens_for_client`): msal would
hand back a token the server refused until it expires (it hears of no revocation and refuses
`force_refresh`), and its own cache keeps a token until 5 minutes before the end, by its own
clock. After a refused login the mailbox calls `renew(refused)` once; the two connections of an
account refused with one token renew it once.

msal's failures are translated once, here, into `TokenUnavailable` in plain words, by Entra's
documented AADSTS numbers (`error_codes`), never by the wording of its messages.

The secret is read from the environment when the source is made and goes nowhere but msal:
never into a log line, an error message or a repr.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from gateway.errors import ConfigError, TokenUnavailable
from gateway.settings import ImapAccount

log = logging.getLogger("gateway.imap")

REFRESH_MARGIN_S = 60.0   # a token this close to its end is not used for a new login
TIMEOUT_S = 15.0          # per HTTP request to the token endpoint: msal's default is to wait forever


class TokenSource(Protocol):
    def token(self) -> str:
        """A bearer token that is not about to expire (may block on the token endpoint)."""

    def renew(self, refused: str) -> str:
        """A new token in place of one the server refused (once, however many callers ask)."""


# Entra's documented error numbers → what the operator should look at.
_AADSTS: dict[int, str] = {
    90002: "tenant {tenant!r} does not exist (check tenant)",
    900023: "{tenant!r} is not a valid tenant id (check tenant)",
    700016: "no application {client_id!r} in tenant {tenant!r} (check client_id and tenant)",
    7000215: "the client secret in ${secret_env} is not valid: wrong, deleted, or the secret's ID "
             "instead of its value",
    7000222: "the client secret in ${secret_env} has expired: make a new one for the app in Entra",
    7000112: "application {client_id!r} is disabled in tenant {tenant!r}",
    70011: "scope {scope!r} is not valid (Exchange Online's is https://outlook.office365.com/.default)",
    500011: "the resource of scope {scope!r} is not in tenant {tenant!r}",
}


class MsalTokenSource:
    """Tokens of one Entra app. Thread-safe: the accounts' threads call it."""

    def __init__(self, account: ImapAccount, secret: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.account = account  # the app's identity: tenant, client_id, token_endpoint, scope
        self._secret = secret
        self._clock = clock
        self._client: Any = None  # msal.ConfidentialClientApplication, made on first use (it calls out)
        self._token: str | None = None
        self._good_until = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MsalTokenSource({self.account.client_id!r} at {self.account.token_endpoint})"

    def token(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._good_until:
                return self._fetch()
            return self._token

    def renew(self, refused: str) -> str:
        with self._lock:
            if self._token is not None and self._token != refused:
                return self._token  # another connection renewed it already
            return self._fetch()

    def _fetch(self) -> str:
        self._token = None
        started = self._clock()
        client = self._msal()
        try:
            client.remove_tokens_for_client()
            result = client.acquire_token_for_client(scopes=[self.account.scope])
        except Exception as exc:
            raise self._unreachable(exc) from exc
        if not isinstance(result, dict) or not result.get("access_token"):
            raise self._refused(result if isinstance(result, dict) else {})
        token = str(result["access_token"])
        lifetime = float(result.get("expires_in") or 0)
        self._token, self._good_until = token, started + lifetime - REFRESH_MARGIN_S
        log.info("imap.token_acquired", extra={"client_id": self.account.client_id, "expires_in_s": int(lifetime)})
        return token

    def _msal(self) -> Any:
        if self._client is None:
            import msal  # only where OAuth2 accounts are configured

            a = self.account
            try:
                self._client = msal.ConfidentialClientApplication(
                    a.client_id, client_credential=self._secret,
                    authority=a.token_endpoint.removesuffix("/oauth2/v2.0/token"),
                    instance_discovery=False, timeout=TIMEOUT_S)
            except ValueError as exc:  # its OpenID discovery answered 4xx: Entra's answer for an unknown tenant
                raise self._problem(f"tenant {a.tenant!r} is not known there (check tenant and token_url)") from exc
            except Exception as exc:
                raise self._unreachable(exc) from exc
        return self._client

    # -- translation, once ------------------------------------------------------------------

    def _problem(self, what: str) -> TokenUnavailable:
        host = urllib.parse.urlsplit(self.account.token_endpoint).netloc
        message = f"no OAuth2 token from {host}: {what}"
        return TokenUnavailable(message.replace(self._secret, "…") if self._secret else message)

    def _refused(self, result: dict[str, Any]) -> TokenUnavailable:
        a = self.account
        for code in result.get("error_codes") or ():
            if code in _AADSTS:
                return self._problem(_AADSTS[code].format(tenant=a.tenant, client_id=a.client_id, scope=a.scope,
                                                          secret_env=a.client_secret_env) + f" (AADSTS{code})")
        said = str(result.get("error_description") or "").split(". ")[0][:200]
        return self._problem(f"refused: {result.get('error') or 'no access token in the answer'}"
                             + (f": {said}" if said else ""))

    def _unreachable(self, exc: BaseException) -> TokenUnavailable:
        import requests
        from msal.exceptions import MsalServiceError

        if isinstance(exc, MsalServiceError):  # msal's own word for a 5xx answer
            return self._problem(f"the token endpoint failed ({str(exc)[:80]}); try later")
        if isinstance(exc, requests.exceptions.SSLError):
            return self._problem(f"cannot reach the token endpoint: TLS failure ({_os_reason(exc) or 'certificate'})")
        if isinstance(exc, requests.exceptions.Timeout):
            return self._problem("cannot reach the token endpoint: no answer in time")
        if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
            return self._problem(f"the token endpoint failed (HTTP {exc.response.status_code}); try later")
        if isinstance(exc, requests.exceptions.ConnectionError):
            return self._problem(f"cannot reach the token endpoint: {_os_reason(exc) or 'connection failed'}")
        if isinstance(exc, ValueError):  # a body that is not JSON: not a token endpoint
            return self._problem("its answer was not a token endpoint's (check token_url)")
        return self._problem(f"unexpected error: {type(exc).__name__}: {str(exc)[:200]}")


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)|(CERTIFICATE_VERIFY_FAILED[^'\")]*)")


def _os_reason(exc: BaseException) -> str:
    """The operating system's words inside requests' wrapping ("Connection refused")."""
    found = _ERRNO.search(str(exc))
    return (found.group(1) or found.group(2)).strip() if found else ""


# -- the sources of the configured accounts ---------------------------------------------------

def missing_secret(account: ImapAccount, env: Mapping[str, str]) -> ConfigError | None:
    if account.auth == "password" or env.get(account.client_secret_env, "").strip():
        return None
    return ConfigError(f"imap.accounts {account.name}: client_secret_env: the environment variable "
                       f"{account.client_secret_env} is not set (it must hold the app's client secret)")


def token_sources(accounts: Sequence[ImapAccount], env: Mapping[str, str] | None = None,
                  clock: Callable[[], float] = time.monotonic) -> dict[str, TokenSource]:
    """By account name, one source per Entra app; a missing secret is a ConfigError naming the key."""
    env = os.environ if env is None else env
    by_app: dict[tuple[str, str, str, str], TokenSource] = {}
    sources: dict[str, TokenSource] = {}
    for a in accounts:
        if a.auth == "password":
            continue
        problem = missing_secret(a, env)
        if problem is not None:
            raise problem
        key = (a.token_endpoint, a.client_id, a.scope, a.client_secret_env)
        if key not in by_app:
            by_app[key] = MsalTokenSource(a, env[a.client_secret_env].strip(), clock)
        sources[a.name] = by_app[key]
    return sources
