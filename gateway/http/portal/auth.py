"""Login as the guide's FAQ tells it: the first time a customer chooses a password through a
mailed single-use link (the same link resets a forgotten one), then logs in with it.

No answer tells whether an address is known: a link request always answers "check your
e-mail" (the mail goes out, or not, behind it), and a failed login has one message. Attempts
are counted per address and per client in the store (`portal_throttle`), with a back-off that
every node sees. Someone who mailed in before already is a user: the link only sets their
password; a new address becomes a customer when it completes the link. Agents have no portal
login: no link is mailed to them and no password of theirs is accepted.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from datetime import datetime, timedelta

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.addresses import canonical
from gateway.http.portal import sessions
from gateway.http.portal.context import Portal, Visitor, read_form
from gateway.http.portal.i18n import Translate, translator
from gateway.http.portal.passwords import MIN_LENGTH, problem
from gateway.http.portal.security import safe_next
from gateway.model import Event
from gateway.tokens import link_selector
from store import outbox
from store import portal as portal_store
from store.portal import Throttle
from store.transact import TxSession

log = logging.getLogger("gateway.portal")

FORM_LIMIT = 64 * 1024  # bytes of a login or link form


def _key(kind: str, value: str) -> str:
    """A counter's key: the address or client itself is not stored, only a digest of it."""
    return f"{kind}:{hashlib.sha256(value.lower().encode('utf-8', 'replace')).hexdigest()[:40]}"


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


class Auth:
    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        cfg = portal.settings.portal
        self.per_address = Throttle(cfg.attempts_per_address)
        self.per_client = Throttle(cfg.attempts_per_client)

    # --- pages -------------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        visitor = await self.portal.visitor(request)
        return self.portal.pages.render(request, visitor, "home.html.j2")

    async def login_form(self, request: Request) -> Response:
        visitor = await self.portal.visitor(request)
        next_path = safe_next(request.query_params.get("next"))
        if visitor.user is not None:
            return RedirectResponse(next_path or "/sager", status_code=303)
        return self._login_page(request, visitor, "", next_path)

    def _login_page(self, request: Request, visitor: Visitor, email: str, next_path: str | None,
                    error: str | None = None, status: int = 200) -> Response:
        return self.portal.pages.render(request, visitor, "login.html.j2", status, page_path="/login",
                                        email=email, next_path=next_path, error=error)

    async def login(self, request: Request) -> Response:
        visitor, form = await self._posted(request)
        email_text = _text(form, "email").strip()[:320]
        email = canonical(email_text) or email_text.lower()
        next_path = safe_next(_text(form, "next"))
        _ = self._t(visitor)
        keys = (_key("login:address", email), _key("login:client", self.portal.client(request)))
        wait = await self.portal.read(portal_store.throttle_wait, keys, self.portal.now())
        if wait > 0:
            return self._login_page(request, visitor, email_text, next_path, self._too_many(visitor, wait), 429)
        user = await sessions.find_user(self.portal, email)
        stored = await self.portal.read(portal_store.password_hash, user.id) if user else None
        if user is None or not await self.portal.passwords.verify(stored, _text(form, "password")):
            await self.portal.write(self._count, keys, self.portal.now())
            log.info("portal.login_failed")
            return self._login_page(request, visitor, email_text, next_path,
                                    _("Forkert e-mailadresse eller adgangskode."), 400)
        await self.portal.write(portal_store.throttle_clear, keys[0])
        return await sessions.start_session(self.portal, user, "password", next_path)

    async def logout(self, request: Request) -> Response:
        await self._posted(request)
        return await sessions.end_session(self.portal, request)

    # --- asking for a link ---------------------------------------------------------------------------

    async def link_form(self, request: Request) -> Response:
        visitor = await self.portal.visitor(request)
        purpose = "register" if request.url.path == "/opret" else "reset"
        return self._link_page(request, visitor, purpose, "", safe_next(request.query_params.get("next")))

    def _link_page(self, request: Request, visitor: Visitor, purpose: str, email: str, next_path: str | None,
                   error: str | None = None, status: int = 200) -> Response:
        return self.portal.pages.render(request, visitor, "link_request.html.j2", status, page_path=request.url.path,
                                        purpose=purpose, email=email, next_path=next_path, error=error)

    async def send_link(self, request: Request) -> Response:
        visitor, form = await self._posted(request)
        purpose = "register" if request.url.path == "/opret" else "reset"
        email_text = _text(form, "email").strip()[:320]
        email = canonical(email_text)
        next_path = safe_next(_text(form, "next"))
        if email is None:
            return self._link_page(request, visitor, purpose, email_text, next_path,
                                   self._t(visitor)("Skriv en gyldig e-mailadresse."), 400)
        keys = (_key("link:address", email), _key("link:client", self.portal.client(request)))
        now = self.portal.now()
        wait = await self.portal.read(portal_store.throttle_wait, keys, now)
        if wait > 0:
            return self._link_page(request, visitor, purpose, email_text, next_path, self._too_many(visitor, wait), 429)
        await self.portal.write(self._issue_link, keys, email, next_path, visitor.lang, now)
        self.portal.desk.wake_sender()
        return self.portal.pages.render(request, visitor, "link_sent.html.j2", page_path=request.url.path,
                                        email=email, minutes=self.portal.settings.portal.link_minutes)

    def _issue_link(self, session: TxSession, keys: tuple[str, str], email: str, next_path: str | None, lang: str,
                    now: datetime) -> None:
        """Count the request; unless the address is an agent's, a link and its mail, queued in the
        outbox in the same transaction. The wording follows the address: "reset" once it has a
        password, whichever form was used."""
        self._count(session, keys, now)
        user = portal_store.user_of(session, email)
        if user is not None and not user.is_customer:
            return
        purpose = "reset" if portal_store.has_password(session, email) else "register"
        selector = secrets.token_urlsafe(16)
        minutes = self.portal.settings.portal.link_minutes
        portal_store.create_link(session, selector, email, purpose, next_path, now, now + timedelta(minutes=minutes))
        recipient = outbox.Recipient(email, user.name if user else "", lang, user.id if user else None)
        outbox.enqueue_without_case(session, Event.PASSWORD_LINK, recipient, now,
                                    self.portal.settings.mail.message_id_domain,
                                    {"link": selector, "link_purpose": purpose})

    # --- following the link ------------------------------------------------------------------------------

    async def link_page(self, request: Request) -> Response:
        visitor = await self.portal.visitor(request)
        _, link = await self._link(request)
        if link is None:
            return self.portal.pages.render(request, visitor, "link_invalid.html.j2", 410)
        user = await self.portal.read(portal_store.user_by_email, link.email)
        return self._password_page(request, visitor, link.email, user is None)

    def _password_page(self, request: Request, visitor: Visitor, email: str, ask_name: bool, name: str = "",
                       error: str | None = None, status: int = 200) -> Response:
        return self.portal.pages.render(request, visitor, "set_password.html.j2", status, action=request.url.path,
                                        email=email, ask_name=ask_name, name=name, min_length=MIN_LENGTH, error=error)

    async def set_password(self, request: Request) -> Response:
        visitor, form = await self._posted(request)
        selector, link = await self._link(request)
        if link is None:
            return self.portal.pages.render(request, visitor, "link_invalid.html.j2", 410)
        password, name = _text(form, "password"), _text(form, "name").strip()[:200]
        wrong = problem(password, _text(form, "repeat"), link.email)
        if wrong:
            user = await self.portal.read(portal_store.user_by_email, link.email)
            return self._password_page(request, visitor, link.email, user is None, name,
                                       self._t(visitor)(wrong, n=MIN_LENGTH), 400)
        hashed = await self.portal.passwords.hash(password)
        user = await self.portal.write(self._use_link, selector, hashed, name)
        if user is None:
            return self.portal.pages.render(request, visitor, "link_invalid.html.j2", 410)
        log.info("portal.password_set", extra={"user_id": user.id, "purpose": link.purpose})
        return await sessions.start_session(self.portal, user, "password", link.next_path)

    def _use_link(self, session: TxSession, selector: str, hashed: str, name: str) -> portal_store.PortalUser | None:
        """Take the link (once, by a conditional UPDATE), make the customer if the address is new,
        set the password (which ends the user's other sessions) — one transaction."""
        now = self.portal.now()
        link = portal_store.take_link(session, selector, now)
        if link is None:
            return None
        user = portal_store.ensure_customer(session, link.email, name, now)
        if not user.is_customer:
            return None
        portal_store.set_password(session, user.id, hashed, now)
        return user

    async def _link(self, request: Request) -> tuple[str, portal_store.Link | None]:
        """The link's selector and the link while it can be used (a forged token: none)."""
        selector = link_selector(self.portal.secret, str(request.path_params.get("token", "")))
        if selector is None:
            return "", None
        return selector, await self.portal.read(portal_store.link_of, selector, self.portal.now())

    # --- helpers -------------------------------------------------------------------------------------

    async def _posted(self, request: Request) -> tuple[Visitor, FormData]:
        visitor = await self.portal.visitor(request)
        form = await read_form(request, FORM_LIMIT)
        self.portal.check_csrf(visitor, form)
        return visitor, form

    def _count(self, session: TxSession, keys: tuple[str, str], now: datetime) -> None:
        portal_store.throttle_hit(session, keys[0], now, self.per_address)
        portal_store.throttle_hit(session, keys[1], now, self.per_client)

    @staticmethod
    def _t(visitor: Visitor) -> Translate:
        return translator(visitor.lang)

    def _too_many(self, visitor: Visitor, wait: float) -> str:
        _, minutes = self._t(visitor), max(1, math.ceil(wait / 60))
        if minutes == 1:
            return _("For mange forsøg. Vent 1 minut, og prøv igen.")
        return _("For mange forsøg. Vent {minutes} minutter, og prøv igen.", minutes=minutes)
