"""What every portal handler works with: the `Portal` (built once over the HTTP wing's
`HttpDeps`) and the `Visitor` of one request (language, user, cookies, CSRF token)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request

from gateway.http.portal import i18n
from gateway.http.portal.csrf import csrf_token, csrf_valid
from gateway.http.portal.pages import PageError, Pages, Visitor
from gateway.http.portal.passwords import Passwords
from gateway.http.portal.security import cookie_secure
from gateway.http.portal.sessions import CookieNames, user_and
from gateway.lifecycle import CaseDesk
from store.portal import PortalUser
from store.transact import ReadConnection, TxSession

if TYPE_CHECKING:
    from gateway.http.deps import HttpDeps

P = ParamSpec("P")
R = TypeVar("R")


NOT_FOUND = (404, "Siden findes ikke", "Siden findes ikke, eller du har ikke adgang til den.")
BAD_FORM = (403, "Formularen er udløbet", "Formularen kunne ikke sendes. Gå tilbage, genindlæs siden, og prøv igen.")


def not_found() -> PageError:
    return PageError(*NOT_FOUND)


class LoginRequired(Exception):
    """No live session: log in first, then come back to this page."""


def declared_length(request: Request) -> int | None:
    """The body's Content-Length. The server reads exactly that many bytes, so a body within a
    limit here is within it when read; a body without one (chunked) is refused."""
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


async def read_form(request: Request, limit: int, files: int = 0) -> FormData:
    """A posted form of at most `limit` bytes (python-multipart, through Starlette)."""
    length = declared_length(request)
    if length is None:
        raise PageError(411, "Fejl", "Formularen kunne ikke sendes. Gå tilbage, genindlæs siden, og prøv igen.")
    if length > limit:
        raise PageError(413, "Fejl", "Formularen kunne ikke sendes. Gå tilbage, genindlæs siden, og prøv igen.")
    try:
        return await request.form(max_files=files, max_fields=50, max_part_size=min(limit, 1024 * 1024))
    except HTTPException as exc:  # python-multipart's refusals (too many files or fields, bad framing)
        raise PageError(exc.status_code, *BAD_FORM[1:]) from None


class Portal:
    def __init__(self, deps: HttpDeps) -> None:
        self.deps = deps
        self.desk: CaseDesk = deps.desk
        self.settings = deps.settings
        self.secret = deps.settings.mail.reply_token_secret
        self.secure = cookie_secure(deps.settings.portal.url)
        self.cookies = CookieNames.for_(self.secure)
        self.passwords = Passwords()
        self.pages = Pages(self.settings, self.cookies, self.secure)

    def now(self) -> datetime:
        return self.deps.clock.now()

    async def read(self, fn: Callable[Concatenate[ReadConnection, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.deps.tx.read(fn, *args, **kwargs)

    async def write(self, fn: Callable[Concatenate[TxSession, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.deps.tx.run(fn, *args, **kwargs)

    async def visitor(self, request: Request) -> Visitor:
        visitor, _ = await self._visit(request, None)
        return visitor

    async def _visit(self, request: Request, then: Callable[[ReadConnection, int], R] | None
                     ) -> tuple[Visitor, R | None]:
        session_cookie = request.cookies.get(self.cookies.session, "")
        form_cookie = request.cookies.get(self.cookies.form, "")
        new_form = not form_cookie
        if new_form:
            form_cookie = secrets.token_urlsafe(24)
        user, result = await user_and(self, session_cookie, then)
        asked = request.query_params.get("lang")
        asked = asked if asked in i18n.LANGUAGES else None
        lang = i18n.choose(asked, request.cookies.get(self.cookies.lang), user.language if user else None,
                           self.settings.policy.language)
        return Visitor(lang, user, session_cookie, form_cookie, csrf_token(self.secret, form_cookie, session_cookie),
                       new_form, asked), result

    def anonymous(self, request: Request) -> Visitor:
        """A visitor read from the request alone, for pages shown when the store does not answer."""
        lang = i18n.choose(request.query_params.get("lang"), request.cookies.get(self.cookies.lang), None,
                           self.settings.policy.language)
        form_cookie = request.cookies.get(self.cookies.form, "")
        return Visitor(lang, None, "", form_cookie, "", False, None)

    async def user_visitor(self, request: Request) -> tuple[Visitor, PortalUser]:
        """The visitor, who must be logged in (else `LoginRequired`)."""
        visitor = await self.visitor(request)
        if visitor.user is None:
            raise LoginRequired()
        return visitor, visitor.user

    async def user_reading(self, request: Request, then: Callable[[ReadConnection, int], R]
                           ) -> tuple[Visitor, PortalUser, R]:
        """`user_visitor`, and `then(connection, user_id)` read with the session in one trip to
        the store (a page's reads: its session and its data)."""
        visitor, result = await self._visit(request, then)
        if visitor.user is None:
            raise LoginRequired()
        return visitor, visitor.user, result  # type: ignore[return-value]  # read for a live user

    def check_csrf(self, visitor: Visitor, form: FormData) -> None:
        posted = form.get("csrf")
        if visitor.new_form_cookie or not csrf_valid(self.secret, visitor.form_cookie, visitor.session_cookie,
                                                     posted if isinstance(posted, str) else None):
            raise PageError(*BAD_FORM)

    @staticmethod
    def client(request: Request) -> str:
        return request.client.host if request.client else "unknown"
