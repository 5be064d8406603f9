"""The headers every portal response carries, and the small checks that keep a page's links
and cookies inside the portal.

The CSP allows nothing but the portal's own files: no inline script or style (the pages have
none), no frames, no forms to elsewhere. A download gets `sandbox` on top, so a file opened in
the browser after all runs nothing.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)
_NEXT = re.compile(r"^/[A-Za-z0-9/_.~%-]{0,300}(\?[A-Za-z0-9=&_.~%-]{0,200})?$")


class SecurityHeaders:
    """ASGI middleware for the portal's routes: its headers on every response, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((n, v) for n, v in HEADERS if n not in present)]
            await send(message)

        await self.app(scope, receive, with_headers)


def cookie_secure(portal_url: str) -> bool:
    """Cookies need https, except for a portal on plain http on the loopback (`make run`)."""
    parts = urlsplit(portal_url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def safe_next(value: str | None) -> str | None:
    """A path of this site to go on to after logging in, or None: never another site (`//x`,
    `/\\x`, a scheme), never a header break."""
    if not value or value.startswith("//") or not _NEXT.match(value):
        return None
    return value
