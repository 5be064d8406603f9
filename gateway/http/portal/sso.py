"""Log ind med single sign-on: `/login/sso` sends the browser to the provider, and
`/login/sso/callback` takes it back (`oidc.OpenIdProvider` does the protocol and its checks).

Who may log in this way, as the guide's FAQ says: a customer who has registered — chosen a
password through the mailed link — "and may use single sign-on afterwards". The provider's
verified e-mail finds the user (`sessions.find_user`, customers only); an address that is not a
registered customer's (unknown, never registered, or an agent's) gets the same page, which
points to registration. So single sign-on never makes a user, and never lets the provider
vouch for an address that this portal has not proved itself by its own link.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.errors import ConfigError
from gateway.http.portal import sessions
from gateway.http.portal.context import Portal, Visitor
from gateway.http.portal.i18n import translator
from gateway.http.portal.oidc import FLOW_SECONDS, OpenIdProvider, ProviderUnavailable, SsoRefused
from gateway.http.portal.security import safe_next
from store import portal as portal_store

log = logging.getLogger("gateway.portal")

START, CALLBACK = "/login/sso", "/login/sso/callback"

# (status, title, message, offer registration) — Danish; translated in i18n.
REFUSED = (403, "Log ind med single sign-on mislykkedes",
           "Vi kunne ikke bekræfte dit login. Prøv igen, eller log ind med din adgangskode.", False)
UNVERIFIED = (403, "Log ind med single sign-on mislykkedes",
              "Din e-mailadresse er ikke bekræftet hos {name}. Bekræft den dér, eller log ind med din adgangskode.",
              False)
NOT_REGISTERED = (403, "Du er ikke oprettet på Serviceportalen",
                  "Første gang opretter du dig med en adgangskode via et link, vi sender til din e-mail. "
                  "Derefter kan du logge ind med {name}.", True)
UNAVAILABLE = (502, "Single sign-on er midlertidigt utilgængelig",
               "Prøv igen om lidt, eller log ind med din adgangskode.", False)


class Sso:
    def __init__(self, portal: Portal, environ: Mapping[str, str]) -> None:
        cfg = portal.settings.portal.oidc
        if cfg is None:
            raise ConfigError("portal.oidc: not configured")
        secret = environ.get(cfg.client_secret_env, "")
        if not secret:
            raise ConfigError(f"portal.oidc.client_secret_env: the environment variable {cfg.client_secret_env} "
                              "is not set or empty")
        self.portal = portal
        self.name = cfg.display_name
        self.provider = OpenIdProvider(cfg, secret, portal.settings.portal.url.rstrip("/") + CALLBACK)

    def flow_cookie(self) -> dict[str, Any]:
        """SessionMiddleware's arguments for the flow's cookie: signed with a key of its own
        (derived from the secret), sent back only to /login/sso…, gone after FLOW_SECONDS."""
        key = hmac.new(self.portal.secret.encode(), b"gateway-portal-sso-flow", hashlib.sha256).hexdigest()
        name = "__Secure-gw_sso" if self.portal.secure else "gw_sso"
        return {"secret_key": key, "session_cookie": name, "max_age": FLOW_SECONDS, "path": START,
                "same_site": "lax", "https_only": self.portal.secure}

    async def start(self, request: Request) -> Response:
        visitor = await self.portal.visitor(request)
        next_path = safe_next(request.query_params.get("next"))
        if visitor.user is not None:
            return RedirectResponse(next_path or "/sager", status_code=303)
        request.session.clear()  # one flow at a time per browser
        if next_path:
            request.session["next"] = next_path
        try:
            return await self.provider.redirect(request)
        except ProviderUnavailable as exc:
            log.warning("portal.sso_unavailable", extra={"error": str(exc)})
            return self._error(request, visitor, UNAVAILABLE)

    async def callback(self, request: Request) -> Response:
        visitor = await self.portal.visitor(request)
        next_path = safe_next(request.session.get("next"))
        try:
            identity = await self.provider.identity(request)
        except SsoRefused as exc:
            log.info("portal.sso_refused", extra={"reason": exc.reason})
            return self._error(request, visitor, UNVERIFIED if exc.reason == "email_unverified" else REFUSED)
        except ProviderUnavailable as exc:
            log.warning("portal.sso_unavailable", extra={"error": str(exc)})
            return self._error(request, visitor, UNAVAILABLE)
        finally:
            request.session.clear()  # the flow is used up, whatever came of it
        user = await sessions.find_user(self.portal, identity.email)
        if user is None or await self.portal.read(portal_store.password_hash, user.id) is None:
            log.info("portal.sso_refused", extra={"reason": "not_registered"})
            return self._error(request, visitor, NOT_REGISTERED)
        return await sessions.start_session(self.portal, user, "oidc", next_path)

    def _error(self, request: Request, visitor: Visitor, error: tuple[int, str, str, bool]) -> Response:
        status, title, message, register = error
        _ = translator(visitor.lang)
        return self.portal.pages.render(request, visitor, "sso_error.html.j2", status, page_path="/login",
                                        title=_(title), message=_(message, name=self.name), register=register)
