"""The portal's address table, and the one place where a handler's failure becomes a page.

Paths are Danish, like the portal: /sager (Mine sager), /sager/N (the case), /login, /opret,
/glemt, /link/TOKEN, /login/sso (single sign-on, with `[portal.oidc]`). Each route carries
the security headers (`security.SecurityHeaders`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.errors import NotFound, TemporaryFailure
from gateway.http.portal.auth import Auth
from gateway.http.portal.cases import Cases
from gateway.http.portal.context import NOT_FOUND, LoginRequired, PageError, Portal, Visitor
from gateway.http.portal.security import SecurityHeaders
from gateway.http.portal.share import Share
from gateway.http.portal.sso import CALLBACK, START, Sso

if TYPE_CHECKING:
    from gateway.http.deps import HttpDeps

log = logging.getLogger("gateway.portal")

STATIC = Path(__file__).resolve().parent.parent / "static"
Handler = Callable[[Request], Awaitable[Response]]


def portal_routes(deps: HttpDeps) -> list[BaseRoute]:
    """The portal's routes over the HTTP wing's `HttpDeps`, to be mounted beside the API's."""
    portal = Portal(deps)
    auth, cases, share = Auth(portal), Cases(portal), Share(portal)
    get, post = ["GET"], ["POST"]
    table: list[tuple[str, Handler, list[str]]] = [
        ("/", auth.home, get),
        ("/login", auth.login_form, get), ("/login", auth.login, post),
        ("/logout", auth.logout, post),
        ("/opret", auth.link_form, get), ("/opret", auth.send_link, post),
        ("/glemt", auth.link_form, get), ("/glemt", auth.send_link, post),
        ("/link/{token}", auth.link_page, get), ("/link/{token}", auth.set_password, post),
        ("/sager", cases.my_cases, get),
        ("/sager/{number}", cases.case, get),
        ("/sager/{number}/kommentar", cases.comment, post),
        ("/sager/{number}/luk", cases.close_form, get), ("/sager/{number}/luk", cases.close, post),
        ("/sager/{number}/del", share.page, get), ("/sager/{number}/del", share.share, post),
        ("/sager/{number}/del/brugere", share.search, get),
        ("/sager/{number}/filer/{file}", cases.download, get),
        ("/sager/{rest:path}", _nowhere, ["GET", "POST"]),
    ]
    headers = [Middleware(SecurityHeaders)]
    routes: list[BaseRoute] = [Route(path, _page(portal, handler), methods=methods, middleware=headers)
                               for path, handler, methods in table]
    routes.extend(_sso_routes(portal, headers))
    routes.append(Route("/favicon.ico", _favicon, middleware=headers))
    routes.append(Mount("/static", StaticFiles(directory=STATIC), middleware=headers))
    return routes


def _sso_routes(portal: Portal, headers: list[Middleware]) -> list[BaseRoute]:
    """Single sign-on's two routes when `[portal.oidc]` is configured (no page otherwise); the
    flow's cookie (state, nonce, PKCE verifier) is read and written on these two alone."""
    if portal.settings.portal.oidc is None:
        return [Route(path, _page(portal, _nowhere), middleware=headers) for path in (START, CALLBACK)]
    sso = Sso(portal, os.environ)
    flow = [*headers, Middleware(SessionMiddleware, **sso.flow_cookie())]
    return [Route(START, _page(portal, sso.start), middleware=flow),
            Route(CALLBACK, _page(portal, sso.callback), middleware=flow)]


async def _nowhere(request: Request) -> Response:
    raise PageError(*NOT_FOUND)


async def _favicon(request: Request) -> Response:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


def _page(portal: Portal, handler: Handler) -> Handler:
    """The handler, with its refusals as pages: a login first (back here after it), 404 for
    what the user may not see, 403 for a form without its token, 503 when the store is away."""
    async def page(request: Request) -> Response:
        try:
            return await handler(request)
        except LoginRequired:
            back = request.url.path if request.method == "GET" else "/sager"
            return RedirectResponse(f"/login?next={quote(back)}", status_code=303)
        except PageError as error:
            return portal.pages.error(request, await _visitor(portal, request), error)
        except NotFound:
            return portal.pages.error(request, await _visitor(portal, request), PageError(*NOT_FOUND))
        except TemporaryFailure as exc:
            log.warning("portal.store_error", extra={"error": type(exc).__name__, "path": request.url.path})
            return portal.pages.error(request, portal.anonymous(request), PageError(
                503, "Tjenesten er midlertidigt utilgængelig", "Prøv igen om lidt."))

    return page


async def _visitor(portal: Portal, request: Request) -> Visitor:
    try:
        return await portal.visitor(request)
    except TemporaryFailure:
        return portal.anonymous(request)
