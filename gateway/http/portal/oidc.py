"""The seam to the deployment's OpenID Connect provider (single sign-on), through authlib.

authlib's Starlette client does the protocol: discovery; the authorization request with `state`,
`nonce` and PKCE (S256), all three kept in a signed cookie of this browser that lives
`FLOW_SECONDS` (Starlette's SessionMiddleware, on the /login/sso routes only); the code
exchange; the ID token checked with the provider's JWKS (signature, an algorithm the provider
lists; an unknown key id fetches the JWKS again), `exp`/`iat` with a minute's leeway, `nonce`,
`azp` and `at_hash`. What this module adds, because authlib leaves it to the caller:
- `aud` must name our client id: without `claims_options` authlib checks it only through `azp`,
  so a token for another client that names us in `azp` would pass;
- `iss` of the token and of the discovery document must be the configured issuer (OpenID
  Connect Discovery §4.3), not merely whatever the discovery document says;
- an ID token at all, and an e-mail the provider says is verified (from the ID token, else from
  the userinfo endpoint, whose `sub` must then be the token's).

Failures are translated here, once: `SsoRefused` (this attempt proves nothing: its `reason`, a
word for the log) or `ProviderUnavailable` (the provider did not answer as it should). No
e-mail address, name or token reaches a log line or an exception message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx2
from authlib.integrations.base_client import MismatchingStateError, OAuthError
from authlib.integrations.starlette_client import OAuth
from joserfc.errors import JoseError
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import Refused, TemporaryFailure
from gateway.settings import OidcSettings

FLOW_SECONDS = 600  # from the click on the button to the return from the provider
LEEWAY_S = 60  # clock skew allowed for exp, iat and nbf

# A library failure that means "the provider did not answer as a provider should".
_PROVIDER_FAILURES = (httpx2.HTTPError, ValueError, KeyError, TypeError, RuntimeError)


class SsoRefused(Refused):
    """The login attempt is refused; `reason` says why, for the log (no personal data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProviderUnavailable(TemporaryFailure):
    """The provider could not be reached, or answered with something unusable."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the provider says logged in: its subject and a verified e-mail address."""

    subject: str
    email: str


class OpenIdProvider:
    """One configured provider; one per `Portal` (authlib keeps its discovery document and JWKS)."""

    def __init__(self, cfg: OidcSettings, client_secret: str, redirect_uri: str) -> None:
        self.issuer = cfg.issuer
        self.redirect_uri = redirect_uri
        self._client: Any = OAuth().register(
            "portal", client_id=cfg.client_id, client_secret=client_secret,
            server_metadata_url=cfg.discovery_endpoint,
            client_kwargs={"scope": " ".join(cfg.scopes), "code_challenge_method": "S256",
                           "timeout": cfg.timeout_s})
        self._claims = {"iss": {"essential": True, "values": [cfg.issuer]},
                        "aud": {"essential": True, "values": [cfg.client_id]},
                        "sub": {"essential": True}, "exp": {"essential": True}}

    def __repr__(self) -> str:
        return f"OpenIdProvider({self.issuer!r})"

    async def redirect(self, request: Request) -> Response:
        """The redirect to the provider's login; state, nonce and verifier go into `request.session`."""
        try:
            await self._metadata()
            response: Response = await self._client.authorize_redirect(request, self.redirect_uri)
        except _PROVIDER_FAILURES as exc:
            raise ProviderUnavailable(f"discovery failed: {type(exc).__name__}") from None
        return response

    async def identity(self, request: Request) -> Identity:
        """The callback: the code exchanged (with the verifier of this browser's flow), the ID
        token checked, the verified e-mail. The flow's state is used up whatever the outcome."""
        try:
            await self._metadata()
            token = await self._client.authorize_access_token(request, claims_options=self._claims,
                                                              leeway=LEEWAY_S)
            claims = token.get("userinfo")
            if not claims:
                raise SsoRefused("no_id_token")
            return await self._verified(dict(claims), token)
        except MismatchingStateError:
            raise SsoRefused("state") from None
        except OAuthError as exc:  # the provider's own error=… on the callback or from the token endpoint
            raise SsoRefused(f"provider:{_word(exc.error)}") from None
        except JoseError as exc:  # the ID token: signature, iss, aud, exp, nonce, azp, at_hash
            raise SsoRefused(f"id_token:{_word(exc.error)}:{_word(getattr(exc, 'claim', ''))}") from None
        except _PROVIDER_FAILURES as exc:
            raise ProviderUnavailable(f"token exchange failed: {type(exc).__name__}") from None

    async def _verified(self, claims: dict[str, Any], token: dict[str, Any]) -> Identity:
        if "email" not in claims:  # some providers release the e-mail at the userinfo endpoint only
            info = dict(await self._client.userinfo(token=token))
            if info.get("sub") != claims["sub"]:
                raise SsoRefused("userinfo_subject")
            claims = claims | {k: info[k] for k in ("email", "email_verified") if k in info}
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            raise SsoRefused("no_email")
        if claims.get("email_verified") is not True:
            raise SsoRefused("email_unverified")
        return Identity(str(claims["sub"]), email)

    async def _metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = await self._client.load_server_metadata()
        if metadata.get("issuer") != self.issuer:
            raise ProviderUnavailable("the discovery document names another issuer than portal.oidc.issuer")
        return metadata


def _word(value: object) -> str:
    """A library's or provider's error code, cut to a short token fit for a log line."""
    text = str(value or "")
    return "".join(c for c in text if c.isalnum() or c in "_-.")[:40] or "-"
