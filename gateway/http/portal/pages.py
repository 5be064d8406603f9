"""Rendering: jinja2 templates under `templates/portal/`, autoescaped, one frame for every page
(`base.html.j2`: `lang`, one `h1`, one `main`, a skip link, the language switch).

Everything a customer or a mail wrote reaches a page only through autoescaping; a comment is
its stored plain text (HTML mail was made text when it was parsed, and nh3-cleaned there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from gateway.http.portal import i18n
from gateway.http.portal.sessions import CookieNames
from gateway.settings import Settings
from store.portal import PortalUser

TEMPLATES = Path(__file__).resolve().parents[3] / "templates" / "portal"
LANG_COOKIE_DAYS = 365

# ?besked=… after a form's redirect: a fixed sentence, never text from the request.
NOTICES = {
    "kommentar": "Din kommentar er sendt, og sagen er opdateret.",
    "lukket": "Sagen er lukket.",
    "delt": "Sagen er delt.",
    "logget-ud": "Du er logget ud.",
}


class PageError(Exception):
    """Answer with the error page: `status`, a title and a sentence (Danish; translated)."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.message = message


@dataclass(frozen=True, slots=True)
class Visitor:
    """Who a page is for: language, user, cookies, CSRF token (`context.Portal.visitor`)."""

    lang: str
    user: PortalUser | None
    session_cookie: str  # as sent, whether or not its session still lives
    form_cookie: str
    csrf: str
    new_form_cookie: bool  # made for this response: it must set it
    asked_lang: str | None  # ?lang= on this request: remembered in a cookie


class Pages:
    def __init__(self, settings: Settings, cookies: CookieNames, secure: bool, directory: Path = TEMPLATES) -> None:
        self._settings, self._cookies, self._secure = settings, cookies, secure
        # auto_reload off: the templates ship with the code; no stat() of each file on every page.
        self._env = jinja2.Environment(loader=jinja2.FileSystemLoader(directory), autoescape=True, auto_reload=False,
                                       undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)

    def render(self, request: Request, visitor: Visitor, template: str, status: int = 200,
               page_path: str | None = None, **context: Any) -> Response:
        """`page_path`: the page's own address when a form post renders it (for the language switch)."""
        frame = self._frame(request, visitor, page_path or request.url.path)
        html = self._env.get_template(template).render(frame | context)
        return self.finish(visitor, HTMLResponse(html, status_code=status))

    def error(self, request: Request, visitor: Visitor, error: PageError) -> Response:
        _ = i18n.translator(visitor.lang)
        return self.render(request, visitor, "error.html.j2", error.status, title=_(error.title),
                           message=_(error.message))

    def finish(self, visitor: Visitor, response: Response) -> Response:
        """The visitor's new cookies; no page of the portal is kept in a cache."""
        cookies, secure = self._cookies, self._secure
        if visitor.new_form_cookie:
            response.set_cookie(cookies.form, visitor.form_cookie, httponly=True, secure=secure, samesite="lax",
                                path="/")
        if visitor.asked_lang:
            response.set_cookie(cookies.lang, visitor.asked_lang, max_age=LANG_COOKIE_DAYS * 86400, httponly=True,
                                secure=secure, samesite="lax", path="/")
        response.headers["Cache-Control"] = "no-store"
        return response

    def _frame(self, request: Request, visitor: Visitor, path: str) -> dict[str, Any]:
        lang = visitor.lang
        settings = self._settings
        notice = NOTICES.get(request.query_params.get("besked", ""))
        return {
            "lang": lang, "_": i18n.translator(lang), "user": visitor.user, "csrf": visitor.csrf,
            "other_lang": "en" if lang == "da" else "da", "switch_url": _switch_url(request, path, lang),
            "notice": notice, "error": None, "sso": settings.portal.oidc.display_name if settings.portal.oidc else None,
            "mail_to": settings.mail.addresses[0], "path": path,
            "when": lambda at: i18n.when(at, lang), "size": lambda n: i18n.size(n, lang),
            "status_label": lambda s: i18n.status_label(s, lang),
            "explanation": lambda s: i18n.explanation(s, lang, settings.policy.close_after_days),
        }


def _switch_url(request: Request, path: str, lang: str) -> str:
    """This page in the other language: its query kept (a GET's), `lang` replaced."""
    kept = request.query_params.multi_items() if request.method == "GET" else []
    query = [(k, v) for k, v in kept if k not in ("lang", "besked")]
    query.append(("lang", "en" if lang == "da" else "da"))
    return f"{path}?{urlencode(query)}"
