"""Server-side sessions: the cookie holds a random token, the store a SHA-256 of it.

A session ends when the user logs out, sets a new password, stays away `portal.session_idle_minutes`,
or `portal.session_hours` after the login, whichever comes first; deleting its row (one
`DELETE`) revokes it on every node at once.

`start_session` is the one way into a session, for every kind of login: the password login
calls it, and so does single sign-on — an OpenID Connect callback finds the user by the
verified e-mail (`find_user`) and hands it here.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.addresses import canonical
from gateway.errors import Refused
from gateway.settings import Settings
from store import portal as portal_store
from store.portal import PortalUser
from store.transact import ReadConnection, TxSession

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("gateway.portal")

TOUCH_EVERY = timedelta(seconds=60)  # last_seen_at is written at most this often per session


@dataclass(frozen=True, slots=True)
class CookieNames:
    """`__Host-` names over https: such a cookie cannot be set by a sibling domain or over http."""

    session: str
    form: str
    lang: str

    @classmethod
    def for_(cls, secure: bool) -> CookieNames:
        prefix = "__Host-" if secure else ""
        return cls(f"{prefix}gw_session", f"{prefix}gw_form", f"{prefix}gw_lang")


class Portal(Protocol):
    """What a session needs of the portal (`context.Portal` is one): its store, clock, cookies."""

    settings: Settings
    cookies: CookieNames
    secure: bool

    def now(self) -> datetime: ...

    async def read(self, fn: Callable[Concatenate[ReadConnection, P], R], *args: P.args,
                   **kwargs: P.kwargs) -> R: ...

    async def write(self, fn: Callable[Concatenate[TxSession, P], R], *args: P.args, **kwargs: P.kwargs) -> R: ...


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


async def user_and(portal: Portal, session_cookie: str, then: Callable[[ReadConnection, int], R] | None
                   ) -> tuple[PortalUser | None, R | None]:
    """The user of a live session, or None (no cookie, ended, expired, idle too long); and what
    `then(connection, user_id)` reads for that user, in the same read — the session and a
    page's data in one trip to the store (None without a live session: `then` is not called)."""
    if not session_cookie:
        return None, None
    now = portal.now()
    idle = timedelta(minutes=portal.settings.portal.session_idle_minutes)
    found, result = await portal.read(portal_store.session_and, token_hash(session_cookie), now, idle, then)
    if found is None or not found.user.is_customer:
        return None, None
    if now - found.last_seen_at >= TOUCH_EVERY:
        await portal.write(portal_store.touch_session, found.id, now)
    return found.user, result


async def find_user(portal: Portal, email: str) -> PortalUser | None:
    """The customer with this address (for a login by a verified e-mail), or None."""
    address = canonical(email)
    if address is None:
        return None
    user = await portal.read(portal_store.user_by_email, address)
    return user if user is not None and user.is_customer else None


async def start_session(portal: Portal, user: PortalUser, method: str, next_path: str | None) -> Response:
    """Log `user` in: a new session (a new token, whatever cookie came with the request), its
    cookie, and a redirect to `next_path` (already checked with `security.safe_next`) or Mine
    sager. `method` is recorded: "password", "oidc"."""
    if not user.is_customer:
        raise Refused("the portal is for customers")
    token = secrets.token_urlsafe(32)
    now = portal.now()
    expires = now + timedelta(hours=portal.settings.portal.session_hours)
    await portal.write(portal_store.start_session, user.id, token_hash(token), method, now, expires)
    log.info("portal.login", extra={"user_id": user.id, "method": method})
    response = RedirectResponse(next_path or "/sager", status_code=303)
    response.set_cookie(portal.cookies.session, token, httponly=True, secure=portal.secure, samesite="lax",
                        path="/")
    return response


async def end_session(portal: Portal, request: Request) -> Response:
    """Log out: the session's row deleted, its cookie cleared."""
    token = request.cookies.get(portal.cookies.session, "")
    if token:
        ended: bool = await portal.write(portal_store.end_session, token_hash(token))
        if ended:
            log.info("portal.logout")
    response = RedirectResponse("/?besked=logget-ud", status_code=303)
    response.delete_cookie(portal.cookies.session, path="/", secure=portal.secure, httponly=True, samesite="lax")
    return response
