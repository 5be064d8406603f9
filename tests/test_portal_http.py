"""The portal over HTTP, in-process (httpx against the same Starlette app `gateway run` serves),
with a frozen clock: login and links, CSRF, the 404 of every page and post for an outsider,
Opdater/Luk/Del by the lifecycle's rules, the back-off, the headers and cookies.

The whole story in a real browser against the real daemon is tests/test_portal_browser.py."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import lifecycle
from gateway.app import App, open_app
from gateway.clock import FrozenClock
from gateway.http.api import build_api
from gateway.http.portal.i18n import ENGLISH
from gateway.http.portal.passwords import Passwords
from gateway.http.portal.security import cookie_secure, safe_next
from gateway.model import Status
from store import portal as portal_store
from store.inbox import IncomingMail
from tests.conftest import ADDRESS, ROOT, add_user, build_mail, detail, make_settings

PORTAL = "http://127.0.0.1:8025"
JENS, METTE, OLE, AGENT = "jens@kunde.example", "mette@kunde.example", "ole@andet.example", "anne@sa.example"
PASSWORD = "rødgrød med fløde"


class Visit:
    """One browser's cookies against the portal, and the mails the gateway sent."""

    def __init__(self, app: App, client: httpx.AsyncClient, maildir: Path) -> None:
        self.app, self.client, self.maildir = app, client, maildir

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(path, **kw)

    async def post(self, path: str, data: dict[str, Any] | None = None, csrf_from: str | None = None,
                   **kw: Any) -> httpx.Response:
        fields = dict(data or {})
        if csrf_from is not None:
            fields["csrf"] = csrf(await self.client.get(csrf_from))
        return await self.client.post(path, data=fields, **kw)

    async def mails_to(self, address: str) -> list[email.message.EmailMessage]:
        await self.app.sender.run_once()
        found = []
        folder = self.maildir / "new"
        files = sorted(folder.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name)) if folder.exists() else []
        for path in files:
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if address in str(msg["To"]):
                found.append(msg)
        return found  # type: ignore[return-value]

    async def link_for(self, address: str) -> str:
        """The link of the newest link mail to `address`."""
        links = [m for m in await self.mails_to(address) if "Serviceportalen" in str(m["Subject"])]
        assert links, f"no link mail to {address}"
        text = links[-1].get_body(("plain",)).get_content()
        found = re.search(re.escape(PORTAL) + r"(/link/\S+)", text)
        assert found, text
        return found.group(1)

    async def register(self, address: str, name: str = "", password: str = PASSWORD) -> httpx.Response:
        answer = await self.post("/opret", {"email": address}, csrf_from="/opret")
        assert answer.status_code == 200
        link = await self.link_for(address)
        return await self.post(link, {"password": password, "repeat": password, "name": name}, csrf_from=link)

    async def login(self, address: str, password: str = PASSWORD) -> httpx.Response:
        return await self.post("/login", {"email": address, "password": password}, csrf_from="/login")


def csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


@pytest.fixture
async def portal_app(tmp_path: Path, clock: FrozenClock) -> AsyncIterator[App]:
    settings = make_settings(tmp_path, portal={"url": PORTAL, "attempts_per_address": 3},
                             smtp={"max_message_size": 50_000})
    async with open_app(settings, clock=clock) as app:
        await add_user(app, JENS, "Jens Hansen", "Kunde A/S")
        await add_user(app, METTE, "Mette Holm", "Kunde A/S")
        await add_user(app, OLE, "Ole Olsen", "Andet A/S")
        await add_user(app, AGENT, "Anne Agent", agent=True)
        yield app


async def visit(app: App, tmp_path: Path) -> AsyncIterator[Visit]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_api(app.http)), base_url=PORTAL) as client:
        yield Visit(app, client, tmp_path / "outbound")


@pytest.fixture
async def jens(portal_app: App, tmp_path: Path) -> AsyncIterator[Visit]:
    async for v in visit(portal_app, tmp_path):
        yield v


@pytest.fixture
async def other(portal_app: App, tmp_path: Path) -> AsyncIterator[Visit]:
    async for v in visit(portal_app, tmp_path):
        yield v


async def mail_in(app: App, sender: str = JENS, subject: str = "Min faktura", **kw: Any) -> str:
    _, result = await app.ingest_now(IncomingMail(build_mail(sender=sender, subject=subject, **kw), "t", None, (ADDRESS,)))
    assert result is not None and result.case
    return result.case


async def session_count(app: App) -> int:
    return len(await app.tx.read(_all_sessions))


def _all_sessions(conn: Any) -> list[Any]:
    from sqlalchemy import select

    from store.models import PortalSession

    return list(conn.execute(select(PortalSession.__table__)).all())  # type: ignore[attr-defined]


# --- registration and login ------------------------------------------------------------------------


async def test_a_new_address_registers_by_the_mailed_link_then_logs_out_and_in(jens: Visit, portal_app: App) -> None:
    done = await jens.register("ny@borger.example", name="Ny Borger")
    assert done.status_code == 303 and done.headers["location"] == "/sager"
    [mail] = await jens.mails_to("ny@borger.example")
    assert mail["Subject"] == "Opret din adgang til Serviceportalen" and mail["Auto-Submitted"] == "auto-generated"
    user = await portal_app.tx.read(portal_store.user_by_email, "ny@borger.example")
    assert user is not None and (user.name, user.role, user.kind) == ("Ny Borger", "customer", "person")
    stored = await portal_app.tx.read(portal_store.password_hash, user.id)
    assert stored is not None and stored.startswith("$argon2id$") and PASSWORD not in stored
    page = await jens.get("/sager")
    assert page.status_code == 200 and "Logget ind som Ny Borger" in page.text
    out = await jens.post("/logout", {}, csrf_from="/sager")
    assert out.status_code == 303 and await session_count(portal_app) == 0
    assert (await jens.get("/sager")).headers["location"] == "/login?next=/sager"
    assert (await jens.login("ny@borger.example")).headers["location"] == "/sager"
    assert (await jens.get("/sager")).status_code == 200


async def test_someone_who_mailed_in_only_sets_a_password_and_lands_on_the_case(jens: Visit,
                                                                                portal_app: App) -> None:
    number = await mail_in(portal_app)
    first = await jens.get(f"/sager/{number}")  # the receipt's link, before any login
    assert first.headers["location"] == f"/login?next=/sager/{number}"
    login = await jens.get(first.headers["location"])
    assert f'href="/opret?next=/sager/{number}"' in login.text
    await jens.post("/opret", {"email": JENS, "next": f"/sager/{number}"}, csrf_from=f"/opret?next=/sager/{number}")
    link = await jens.link_for(JENS)
    form = await jens.get(link)
    assert JENS in form.text and 'name="name"' not in form.text  # a known user: a password only
    done = await jens.post(link, {"password": PASSWORD, "repeat": PASSWORD}, csrf_from=link)
    assert done.headers["location"] == f"/sager/{number}"
    user = await portal_app.tx.read(portal_store.user_by_email, JENS)
    assert user is not None and user.name == "Jens Hansen" and user.organisation == "Kunde A/S"


async def test_a_link_works_once_and_not_after_it_expired(jens: Visit, other: Visit, portal_app: App,
                                                          clock: FrozenClock) -> None:
    await jens.register(JENS)
    used = (await jens.mails_to(JENS))[-1].get_body(("plain",)).get_content()
    link = re.search(r"/link/\S+", used).group(0)  # type: ignore[union-attr]
    again = await other.get(link)
    assert again.status_code == 410 and "Linket er brugt, udløbet eller ikke gyldigt." in again.text
    posted = await other.post(link, {"password": "et andet kodeord", "repeat": "et andet kodeord"}, csrf_from="/login")
    assert posted.status_code == 410 and (await other.login(JENS, "et andet kodeord")).status_code == 400
    await other.post("/glemt", {"email": METTE}, csrf_from="/glemt")
    late = await other.link_for(METTE)
    clock.advance(minutes=31)
    assert (await other.get(late)).status_code == 410
    assert (await other.post(late, {"password": PASSWORD, "repeat": PASSWORD}, csrf_from="/login")).status_code == 410
    forged = late[:-4] + ("AAAA" if not late.endswith("AAAA") else "BBBB")
    assert (await other.get(forged)).status_code == 410
    assert await portal_app.tx.read(portal_store.password_hash, 2) is None  # Mette: no password set


async def test_no_answer_tells_whether_an_address_is_known(jens: Visit, portal_app: App) -> None:
    known = await jens.post("/glemt", {"email": JENS}, csrf_from="/glemt")
    unknown = await jens.post("/glemt", {"email": "ingen@borger.example"}, csrf_from="/glemt")
    assert known.status_code == unknown.status_code == 200
    assert known.text.replace(JENS, "X") == unknown.text.replace("ingen@borger.example", "X")
    wrong = await jens.login(JENS, "forkert kodeord")
    nobody = await jens.login("ingen@borger.example", "forkert kodeord")
    assert wrong.status_code == nobody.status_code == 400
    assert wrong.text.replace(JENS, "X") == nobody.text.replace("ingen@borger.example", "X")
    assert "Forkert e-mailadresse eller adgangskode." in wrong.text


async def test_agents_have_no_portal_login(jens: Visit, portal_app: App) -> None:
    answer = await jens.post("/opret", {"email": AGENT}, csrf_from="/opret")
    assert answer.status_code == 200 and "Tjek din e-mail" in answer.text
    assert await jens.mails_to(AGENT) == []
    agent = await portal_app.tx.read(portal_store.user_by_email, AGENT)
    assert agent is not None
    hashed = await Passwords().hash(PASSWORD)
    await portal_app.tx.run(portal_store.set_password, agent.id, hashed, portal_app.clock.now())
    assert (await jens.login(AGENT)).status_code == 400


async def test_failed_logins_back_off_per_address(jens: Visit, other: Visit, clock: FrozenClock) -> None:
    await jens.register(JENS)
    for _ in range(3):
        assert (await other.login(JENS, "forkert kodeord")).status_code == 400
    assert (await other.login(JENS, "forkert kodeord")).status_code == 400  # the 4th counts and blocks
    blocked = await other.login(JENS)  # even the right password waits
    assert blocked.status_code == 429 and "For mange forsøg. Vent 1 minut, og prøv igen." in blocked.text
    clock.advance(seconds=2)
    assert (await other.login(JENS)).status_code == 303


# --- CSRF ----------------------------------------------------------------------------------------------


async def test_forms_without_or_with_a_forged_token_are_refused(jens: Visit, other: Visit, portal_app: App) -> None:
    number = await mail_in(portal_app)
    await jens.register(JENS)
    await jens.get("/sager")
    for fields in ({}, {"csrf": "forged"}, {"csrf": csrf(await other.get("/login"))}):
        answer = await jens.post(f"/sager/{number}/kommentar", {"kommentar": "Forfalsket", **fields})
        assert answer.status_code == 403 and "Formularen er udløbet" in answer.text
        assert (await jens.post(f"/sager/{number}/luk", fields)).status_code == 403
        assert (await jens.post(f"/sager/{number}/del", {"valgt": METTE, **fields})).status_code == 403
    assert (await other.post("/login", {"email": JENS, "password": PASSWORD})).status_code == 403
    case = await detail(portal_app, number)
    assert len(case["comments"]) == 1 and case["status"] == "registreret" and case["parties"] == []


# --- authorisation: another customer's case is no page at all ------------------------------------------


async def test_another_customers_case_answers_404_everywhere(jens: Visit, other: Visit, portal_app: App) -> None:
    number = await mail_in(portal_app, attachments=[("bilag.pdf", b"%PDF-1.4", "application/pdf")])
    await jens.register(JENS)
    case_page = await jens.get(f"/sager/{number}")
    file_link = re.search(rf'href="(/sager/{number}/filer/\d+)"', case_page.text).group(1)  # type: ignore[union-attr]
    assert (await jens.get(file_link)).status_code == 200
    await other.register(OLE)
    token = csrf(await other.get("/sager"))
    for path in (f"/sager/{number}", file_link, f"/sager/{number}/luk", f"/sager/{number}/del",
                 f"/sager/{number}/del/brugere?q=Mette", f"/sager/{number.lower()}"):
        answer = await other.get(path)
        assert answer.status_code == 404, path
        # not an oracle: the same page as for a case that does not exist (but for its own address)
        ghost = await other.get(path.replace(number, "SAG-999999").replace(number.lower(), "sag-999999"))
        assert answer.text.replace(number, "N").replace(number.lower(), "N") == \
            ghost.text.replace("SAG-999999", "N").replace("sag-999999", "N"), path
    for path, fields in ((f"/sager/{number}/kommentar", {"kommentar": "Ind ad bagdøren"}),
                         (f"/sager/{number}/luk", {}), (f"/sager/{number}/del", {"valgt": OLE})):
        answer = await other.post(path, {"csrf": token, **fields})
        assert answer.status_code == 404, path
    case = await detail(portal_app, number)
    assert len(case["comments"]) == 1 and case["status"] == "registreret" and case["parties"] == []


async def test_a_party_sees_the_case_but_no_luk(jens: Visit, other: Visit, portal_app: App) -> None:
    number = await mail_in(portal_app)
    await lifecycle.share(portal_app.desk, number, METTE, JENS)
    await other.register(METTE)
    page = await other.get(f"/sager/{number}")
    assert page.status_code == 200 and f"/sager/{number}/luk" not in page.text
    assert (await other.get(f"/sager/{number}/luk")).status_code == 404
    assert (await other.post(f"/sager/{number}/luk", {}, csrf_from=f"/sager/{number}")).status_code == 404
    said = await other.post(f"/sager/{number}/kommentar", {"kommentar": "Jeg kigger også på det"},
                            csrf_from=f"/sager/{number}")
    assert said.status_code == 303
    assert (await detail(portal_app, number))["status"] == "registreret"


# --- Opdater and Luk by the lifecycle's rules ---------------------------------------------------------------


async def test_a_comment_with_a_file_is_a_comment_as_by_mail(jens: Visit, portal_app: App) -> None:
    number = await mail_in(portal_app)
    await lifecycle.share(portal_app.desk, number, METTE, JENS)
    await lifecycle.note(portal_app.desk, number, "Internt: ring til kunden", AGENT)
    await jens.register(JENS)
    token = csrf(await jens.get(f"/sager/{number}"))
    sent = await jens.post(f"/sager/{number}/kommentar", {"csrf": token, "kommentar": "Her er kvitteringen"},
                           files={"fil": ("kvittering æ.pdf", b"%PDF-1.4 kvittering", "application/pdf")})
    assert sent.status_code == 303 and sent.headers["location"] == f"/sager/{number}?besked=kommentar"
    case = await detail(portal_app, number)
    last = case["comments"][-1]
    assert (last["author"], last["source"], last["visible_text"]) == (JENS, "portal", "Her er kvitteringen")
    assert [a["name"] for a in last["attachments"]] == ["kvittering æ.pdf"]
    page = await jens.get(sent.headers["location"])
    assert "Din kommentar er sendt, og sagen er opdateret." in page.text and "Internt" not in page.text
    file_link = re.search(rf'href="(/sager/{number}/filer/\d+)"', page.text).group(1)  # type: ignore[union-attr]
    got = await jens.get(file_link)
    assert got.content == b"%PDF-1.4 kvittering"
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-disposition"].startswith("attachment;")
    assert got.headers["x-content-type-options"] == "nosniff" and "sandbox" in got.headers["content-security-policy"]
    empty = await jens.post(f"/sager/{number}/kommentar", {"csrf": token, "kommentar": "  "})
    assert empty.status_code == 400 and "Skriv en kommentar, eller vedhæft en fil." in empty.text
    big = await jens.post(f"/sager/{number}/kommentar", {"csrf": token, "kommentar": "Stor"},
                          files={"fil": ("stor.bin", b"x" * 60_000, "application/octet-stream")})
    assert big.status_code == 413 and "Filen er for stor" in big.text
    assert len((await detail(portal_app, number))["comments"]) == 3  # the note, the mail, the comment


async def test_a_comment_reopens_udfoert_and_lukket_refuses_with_the_guides_words(jens: Visit,
                                                                                   portal_app: App) -> None:
    number = await mail_in(portal_app)
    await lifecycle.share(portal_app.desk, number, METTE, JENS)
    await lifecycle.set_status(portal_app.desk, number, Status.UDFOERT, AGENT)
    await jens.register(JENS)
    page = await jens.get(f"/sager/{number}")
    assert "Sagen er vurderet som udført, og svar er fremsendt." in page.text
    await jens.post(f"/sager/{number}/kommentar", {"kommentar": "Det virker stadig ikke"}, csrf_from=f"/sager/{number}")
    case = await detail(portal_app, number)
    assert case["status"] == "paabegyndt" and case["history"][-1]["from"] == "udfoert"
    assert [m["Subject"] for m in await jens.mails_to(METTE)][-1].startswith(f"[{number}] Sagen er genåbnet")
    await lifecycle.set_status(portal_app.desk, number, Status.LUKKET, AGENT)
    page = await jens.get(f"/sager/{number}")
    assert 'name="kommentar"' not in page.text and "Herefter kan den ikke genåbnes." in page.text
    assert f"mailto:{ADDRESS}?subject=%5B{number}%5D" in page.text  # a new case, linked by the tag
    refused = await jens.post(f"/sager/{number}/kommentar", {"kommentar": "Hallo?"}, csrf_from="/sager")
    assert refused.status_code == 409 and "Sagen er lukket. Herefter kan den ikke genåbnes." in refused.text
    assert len((await detail(portal_app, number))["comments"]) == 2


async def test_luk_asks_first_then_closes_as_the_requester(jens: Visit, portal_app: App) -> None:
    number = await mail_in(portal_app)
    await jens.register(JENS)
    ask = await jens.get(f"/sager/{number}/luk")
    assert ask.status_code == 200 and "Er du sikker på, at du vil lukke sag" in ask.text
    assert (await detail(portal_app, number))["status"] == "registreret"
    done = await jens.post(f"/sager/{number}/luk", {}, csrf_from=f"/sager/{number}/luk")
    assert done.headers["location"] == f"/sager/{number}?besked=lukket"
    case = await detail(portal_app, number)
    assert case["status"] == "lukket" and case["history"][-1]["reason"] == "closed by the requester"
    assert (await jens.get(f"/sager/{number}/luk")).status_code == 303  # nothing left to close


# --- Del ---------------------------------------------------------------------------------------------------


async def test_del_finds_and_shares_with_the_organisation_only(jens: Visit, portal_app: App) -> None:
    number = await mail_in(portal_app)
    await jens.register(JENS)
    found = (await jens.get(f"/sager/{number}/del/brugere?q=holm")).json()
    assert found == [{"email": METTE, "name": "Mette Holm"}]
    assert (await jens.get(f"/sager/{number}/del/brugere?q=Ole")).json() == []
    assert (await jens.get(f"/sager/{number}/del/brugere?q=andet.example")).json() == []
    page = await jens.get(f"/sager/{number}/del?q=Mette&valgt={OLE}&tilfoej={METTE}")
    assert "Mette Holm" in page.text and OLE not in page.text  # a posted outsider is not even shown
    refused = await jens.post(f"/sager/{number}/del", {"valgt": [METTE, OLE]}, csrf_from="/sager")
    assert refused.status_code == 400 and "kun deles med brugere i din egen organisation" in refused.text
    assert (await detail(portal_app, number))["parties"] == []
    shared = await jens.post(f"/sager/{number}/del", {"valgt": [METTE]}, csrf_from="/sager")
    assert shared.headers["location"] == f"/sager/{number}?besked=delt"
    assert [p["email"] for p in (await detail(portal_app, number))["parties"]] == [METTE]
    [mail] = await jens.mails_to(METTE)
    assert "delt med dig" in mail["Subject"] and f"{PORTAL}/sager/{number}" in mail.get_body(("plain",)).get_content()
    assert (await jens.get(f"/sager/{number}/del/brugere?q=Mette")).json() == []  # has it already


# --- the frame: headers, cookies, language, safe redirects ----------------------------------------------


async def test_every_page_carries_the_security_headers_and_strict_cookies(jens: Visit) -> None:
    page = await jens.get("/login")
    headers = page.headers
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert "'unsafe-inline'" not in headers["content-security-policy"]
    assert (headers["x-frame-options"], headers["referrer-policy"], headers["x-content-type-options"]) == (
        "DENY", "same-origin", "nosniff")
    assert headers["cache-control"] == "no-store"
    cookie = headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie  # http on loopback
    assert "<script" not in page.text and "style=" not in page.text
    done = await jens.register(JENS)
    session = done.headers["set-cookie"].lower()
    assert session.startswith("gw_session=") and "httponly" in session and "samesite=lax" in session


async def test_over_https_cookies_are_secure_and_host_only(tmp_path: Path, clock: FrozenClock) -> None:
    settings = make_settings(tmp_path, portal={"url": "https://serviceportal.statens-adm.example"})
    async with open_app(settings, clock=clock) as app:
        async for v in visit(app, tmp_path):
            cookie = (await v.get("/login")).headers["set-cookie"]
            assert cookie.startswith("__Host-gw_form=") and "Secure" in cookie and "Path=/" in cookie


async def test_english_second_by_lang_then_remembered(jens: Visit) -> None:
    assert '<html lang="da">' in (await jens.get("/login")).text
    english = await jens.get("/login?lang=en")
    assert '<html lang="en">' in english.text and "Log in" in english.text
    assert '<html lang="en">' in (await jens.get("/opret")).text  # kept in a cookie
    assert '<html lang="da">' in (await jens.get("/opret?lang=da")).text


def test_the_conversation_escapes_what_people_wrote() -> None:
    from datetime import UTC, datetime
    from functools import partial

    from gateway.http.portal.conversation import conversation
    from gateway.http.portal.i18n import size, translator, when
    from store.portal_cases import CommentRow, FileRow

    at = datetime(2026, 1, 5, 9, 3, tzinfo=UTC)
    rows = (CommentRow(1, at, "<b>Jens</b>", "jens@kunde.example", False, "Hej <script>x()</script> & 'tak'",
                       (FileRow(7, 'a"<img>.pdf', 2048),)),
            CommentRow(2, at, "", None, True, "", ()))
    for lang, staff in (("da", "Kundebetjening"), ("en", "Kundebetjening (Customer Service)")):
        html = str(conversation(rows, "SAG-000001", translator(lang), partial(when, lang=lang),
                                partial(size, lang=lang)))
        assert "<script" not in html and "<b>" not in html and "<img" not in html
        assert "&lt;b&gt;Jens&lt;/b&gt;" in html and "Hej &lt;script&gt;x()&lt;/script&gt; &amp; &#39;tak&#39;" in html
        assert '<a href="/sager/SAG-000001/filer/7" download>a&#34;&lt;img&gt;.pdf</a>' in html
        assert f'<strong>{staff}</strong> ({staff})' in html and 'class="comment comment-agent"' in html
        assert f'<time datetime="2026-01-05T09:03:00+00:00">{when(at, lang)}</time>' in html
        assert 'class="comment-text"' in html.split('id="c2"')[0] and 'class="comment-text"' not in html.split('id="c2"')[1]


def test_every_danish_text_has_its_english() -> None:
    used: set[str] = set()
    sources = [*(ROOT / "templates" / "portal").glob("*.j2"), *(ROOT / "gateway" / "http" / "portal").glob("*.py")]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        used.update(re.findall(r'_\(\s*"((?:[^"\\]|\\.)+)"', text))
        used.update(re.findall(r"_\(\s*'((?:[^'\\]|\\.)+)'", text))
    from gateway.http.portal import context, pages

    used.update(pages.NOTICES.values())
    used.update(v for v in vars(context).values() if isinstance(v, tuple) for v in v[1:] if isinstance(v, str))
    missing = sorted(t for t in used if t not in ENGLISH and t != "…")
    assert not missing, missing
    assert len(used) > 60


@pytest.mark.parametrize(("value", "expected"), [
    ("/sager/SAG-000001", "/sager/SAG-000001"), ("/sager?vis=alle", "/sager?vis=alle"), (None, None), ("", None),
    ("//evil.example/x", None), ("https://evil.example/", None), ("/\\evil.example", None),
    ("/sager\r\nSet-Cookie: x=y", None), ("sager", None)])
def test_only_paths_of_the_portal_are_followed_after_login(value: str | None, expected: str | None) -> None:
    assert safe_next(value) == expected


@pytest.mark.parametrize(("url", "secure"), [
    ("http://127.0.0.1:8025", False), ("http://localhost:8025", False), ("http://[::1]:8025", False),
    ("https://127.0.0.1:8025", True), ("http://portal.example.dk", True), ("https://portal.example.dk", True)])
def test_cookies_need_https_except_on_the_loopback(url: str, secure: bool) -> None:
    assert cookie_secure(url) is secure


async def test_sessions_end_after_idling_and_at_their_end(jens: Visit, clock: FrozenClock) -> None:
    await jens.register(JENS)
    clock.advance(minutes=59)
    assert (await jens.get("/sager")).status_code == 200  # and touched
    clock.advance(minutes=59)
    assert (await jens.get("/sager")).status_code == 200
    clock.advance(minutes=61)
    assert (await jens.get("/sager")).status_code == 303  # idle too long
    await jens.login(JENS)
    for _ in range(14):
        clock.advance(minutes=55)
        await jens.get("/sager")
    assert (await jens.get("/sager")).status_code == 303  # 12 hours after the login, whatever the use


async def test_a_shared_mailbox_registers_and_logs_in_as_itself(jens: Visit, portal_app: App) -> None:
    await add_user(portal_app, "post@kunde.example", "Fællespostkassen", "Kunde A/S", shared=True)
    number = await mail_in(portal_app, sender="post@kunde.example", subject="Fra postkassen")
    await jens.register("post@kunde.example")
    page = await jens.get("/sager")
    assert number in page.text and "Logget ind som Fællespostkassen" in page.text


async def test_the_timed_jobs_purge_ended_sessions(jens: Visit, portal_app: App, clock: FrozenClock) -> None:
    from gateway.jobs import run_timed_jobs

    await jens.register(JENS)
    clock.advance(hours=13)
    actions = await run_timed_jobs(portal_app.jobs)
    assert {"job": "purge_portal", "count": 1, "done": True} in actions
    assert await session_count(portal_app) == 0


async def test_mine_sager_pages_25_at_a_time_newest_change_first(jens: Visit, portal_app: App,
                                                                 clock: FrozenClock) -> None:
    numbers = []
    for i in range(27):
        clock.advance(seconds=1)
        numbers.append(await mail_in(portal_app, subject=f"Sag nummer {i}"))
    await jens.register(JENS)
    first = await jens.get("/sager")
    assert "27 sager" in first.text and "Side 1 af 2" in first.text and "/sager?vis=igangvaerende&amp;side=2" in first.text
    assert first.text.index(numbers[-1]) < first.text.index(numbers[-2])  # newest change first
    assert numbers[1] not in first.text
    second = await jens.get("/sager?vis=igangvaerende&side=2")
    assert "Side 2 af 2" in second.text and numbers[0] in second.text and numbers[1] in second.text
    assert numbers[2] not in second.text
    assert "Du har ingen sager her." in (await jens.get("/sager?vis=afsluttede")).text
    assert (await jens.get("/sager?vis=hvadsomhelst&side=-3")).status_code == 200  # the defaults


async def test_mine_sager_counts_in_the_singular_and_the_plural(jens: Visit, portal_app: App) -> None:
    await mail_in(portal_app)
    await jens.register(JENS)
    assert re.search(r'id="antal">1 sag</p>', (await jens.get("/sager")).text)
    assert re.search(r'id="antal">1 case</p>', (await jens.get("/sager?lang=en")).text)
    assert re.search(r'id="antal">0 cases</p>', (await jens.get("/sager?vis=afsluttede&lang=en")).text)
    assert re.search(r'id="antal">0 sager</p>', (await jens.get("/sager?vis=afsluttede&lang=da")).text)
    await mail_in(portal_app, subject="En sag mere")
    assert re.search(r'id="antal">2 sager</p>', (await jens.get("/sager?lang=da")).text)


async def test_a_form_with_more_files_than_one_is_a_page_not_a_crash(jens: Visit, portal_app: App) -> None:
    number = await mail_in(portal_app)
    await jens.register(JENS)
    token = csrf(await jens.get(f"/sager/{number}"))
    answer = await jens.client.post(f"/sager/{number}/kommentar", data={"csrf": token, "kommentar": "To filer"},
                                    files=[("fil", ("a.txt", b"a", "text/plain")), ("fil", ("b.txt", b"b", "text/plain"))])
    assert answer.status_code == 400 and '<html lang="da">' in answer.text
    assert len((await detail(portal_app, number))["comments"]) == 1
