"""The user guide's story in a real headless Chromium against the real daemon (`gateway run`
as a child process, SMTP in, the outbound maildir as the customers' inbox, the HTTP listener
serving the portal beside the API). Each step is checked on the page, in the store and in the
mail; a screenshot of each page goes to tests/artefacts/portal/; axe-core checks every page.

One daemon and one browser for the module; each test has a browser context of its own (its
own cookies) and its own people, so the tests do not lean on each other's state.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import Inbox, Problems, accessible, launch, link_in, shoot
from tests.cli_proc import run_cli
from tests.conftest import ADDRESS, ROOT, build_mail, free_port
from tests.daemon_proc import DaemonProcess

ORG = "Kunde A/S"
TOKEN = "portal-browser-agent-token-0123456789"
AGENT = "anne@sa.example"
PASSWORD = "Rødgrød med fløde 2026"
PEOPLE = [  # address, name, organisation
    ("jens@kunde.example", "Jens Jensen", ORG), ("mette@kunde.example", "Mette Madsen", ORG),
    ("lise@kunde.example", "Lise Lund", ORG), ("karl@kunde.example", "Karl Kjær", ORG),
    ("per@kunde.example", "Per Prip", ORG),
    ("ole@andet.example", "Ole Olsen", "Andet ApS"), ("sofie@andet.example", "Sofie Sand", "Andet ApS"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    port = free_port()
    proc = DaemonProcess(tmp_path_factory.mktemp("portal"),
                         api={"enabled": True, "port": port, "agent_tokens": [TOKEN]},
                         portal={"url": f"http://127.0.0.1:{port}"})
    proc.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        for address, name, org in PEOPLE:
            cli(proc, env, "users", "add", address, "--name", name, "--org", org)
        cli(proc, env, "users", "add", AGENT, "--name", "Anne Agent", "--agent")
        yield proc
    finally:
        assert proc.stop() == 0, proc.tail()


def cli(proc: DaemonProcess, env: dict[str, str], *args: str) -> str:
    rc, out, err = run_cli(["--config", str(proc.config_path), *args], env, ROOT)
    assert rc == 0, err
    return out


class Portal:
    """The daemon's portal address, its store and its mail, for one test."""

    def __init__(self, proc: DaemonProcess) -> None:
        self.proc = proc
        self.url = proc.settings.portal.url
        self.inbox = Inbox(proc.dir / "outbound")

    def mail_in(self, sender: str, subject: str, body: str = "Hej Kundebetjening.") -> str:
        """A customer mails Kundebetjening; returns the case number from the receipt."""
        with smtplib.SMTP("127.0.0.1", self.proc.smtp_port, timeout=10) as smtp:
            smtp.sendmail(sender, [ADDRESS], build_mail(sender=sender, subject=subject, body=body))
        receipt = self.inbox.wait(sender, lambda s: subject in s and "modtaget" in s)
        return link_in(receipt, self.url, r"/sager/\S+").rsplit("/", 1)[1]

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Read the daemon's store. On a thread of its own: Playwright's sync API keeps an event
        loop running on this one."""
        with ThreadPoolExecutor(1) as thread:
            return thread.submit(asyncio.run, self.proc.rows(sql, **params)).result()

    def status(self, number: str) -> str:
        return str(self.rows("SELECT status FROM support_case WHERE number = :n", n=number)[0][0])

    def agent(self, number: str, action: str, **body: Any) -> None:
        """An agent's action through the API, as Kundebetjening's own tools do."""
        answer = httpx.post(f"{self.url}/cases/{number}/{action}", json=body, timeout=10,
                            headers={"Authorization": f"Bearer {TOKEN}", "X-Acting-User": AGENT})
        assert answer.status_code == 200, answer.text


@pytest.fixture
def portal(daemon: DaemonProcess) -> Portal:
    return Portal(daemon)


@pytest.fixture
def problems() -> Problems:
    return Problems()


@pytest.fixture
def new_page(browser: Any, portal: Portal, problems: Problems) -> Iterator[Any]:
    """A fresh browser (cookies and all) per call, closed at the end of the test."""
    contexts: list[Any] = []

    def make(script: bool = True) -> Any:
        context = browser.new_context(base_url=portal.url, java_script_enabled=script, accept_downloads=True,
                                      locale="da-DK", timezone_id="Europe/Copenhagen")
        context.set_default_timeout(8000)
        contexts.append(context)
        page = context.new_page()
        problems.watch(page)
        return page

    yield make
    for context in contexts:
        context.close()
    assert not problems.seen, problems.seen


def register(page: Any, portal: Portal, address: str, shots: str | None = None) -> None:
    """From the login page: Opret bruger, the mailed link, a password — as the guide's FAQ says."""
    page.get_by_role("link", name="Ny bruger? Opret dig her").click()
    page.get_by_label("E-mailadresse").fill(address)
    page.get_by_role("button", name="Send link").click()
    page.get_by_role("heading", name="Tjek din e-mail").wait_for()
    if shots:
        accessible(page, "link sent")
        shoot(page, f"{shots}-03-tjek-din-email")
    mail = portal.inbox.wait(address, lambda s: "Serviceportalen" in s)
    page.goto(link_in(mail, portal.url, r"/link/\S+"))
    page.get_by_role("heading", name="Vælg adgangskode").wait_for()
    if shots:
        accessible(page, "set password")
        shoot(page, f"{shots}-04-vaelg-adgangskode")
    page.get_by_label("Adgangskode", exact=True).fill(PASSWORD)
    page.get_by_label("Gentag adgangskode").fill(PASSWORD)
    page.get_by_role("button", name="Gem adgangskode").click()


def test_the_guides_story(new_page: Any, portal: Portal, tmp_path: Path) -> None:
    jens, mette = "jens@kunde.example", "mette@kunde.example"
    # A customer mails in; the receipt links the case.
    number = portal.mail_in(jens, "Adgang til lønsystemet")
    assert portal.status(number) == "registreret"

    # The receipt's link: log in first; no password yet, so register by the mailed link.
    page = new_page()
    page.goto(f"/sager/{number}")
    page.get_by_role("heading", name="Log ind").wait_for()
    accessible(page, "login")
    shoot(page, "story-01-log-ind")
    page.get_by_role("link", name="Ny bruger? Opret dig her").click()
    page.get_by_role("heading", name="Opret bruger").wait_for()
    accessible(page, "register")
    shoot(page, "story-02-opret-bruger")
    page.go_back()
    register(page, portal, jens, shots="story")
    page.get_by_role("heading", name="Adgang til lønsystemet").wait_for()  # back at the case it came for
    assert page.url.endswith(f"/sager/{number}")
    assert portal.rows("SELECT count(*) FROM portal_password p JOIN app_user u ON u.id = p.user_id "
                       "WHERE u.email = :e", e=jens) == [(1,)]
    assert portal.rows("SELECT purpose, used_at IS NOT NULL FROM portal_link WHERE email = :e", e=jens) == [
        ("register", True)]

    # Mine sager, and its filter.
    page.get_by_role("link", name="Mine sager").first.click()
    page.get_by_role("heading", name="Mine sager").wait_for()
    row = page.get_by_role("row").filter(has_text=number)
    assert "Registreret" in row.inner_text()
    accessible(page, "mine sager")
    shoot(page, "story-05-mine-sager")
    page.get_by_role("link", name="Afsluttede").click()
    page.get_by_text("Du har ingen sager her.").wait_for()
    page.get_by_role("link", name="Alle").click()
    page.get_by_role("row").filter(has_text=number).wait_for()
    shoot(page, "story-06-mine-sager-alle")

    # The case: comment with a file.
    page.get_by_role("link", name=number).click()
    page.get_by_text("Sagen er modtaget, men behandling er endnu ikke påbegyndt.").wait_for()
    accessible(page, "case")
    shoot(page, "story-07-sagen")
    attachment = tmp_path / "kvittering.pdf"
    attachment.write_bytes(b"%PDF-1.4\n% kvittering\n")
    page.get_by_label("Kommentar").fill("Her er kvitteringen, som I bad om.")
    page.get_by_label("Vedhæft fil (valgfrit)").set_input_files(str(attachment))
    page.get_by_role("button", name="Send").click()
    page.get_by_text("Din kommentar er sendt, og sagen er opdateret.").wait_for()
    assert portal.rows("SELECT c.source, a.name FROM comment c JOIN attachment a ON a.comment_id = c.id "
                       "JOIN support_case s ON s.id = c.case_id WHERE s.number = :n", n=number) == [
        ("portal", "kvittering.pdf")]
    with page.expect_download() as download:
        page.get_by_role("link", name="kvittering.pdf").click()
    assert download.value.suggested_filename == "kvittering.pdf"
    assert Path(download.value.path()).read_bytes() == attachment.read_bytes()
    shoot(page, "story-08-kommenteret")

    # Del: the dialog finds a colleague by name, never an outsider.
    page.get_by_role("link", name="Del", exact=True).click()
    dialog = page.get_by_role("dialog", name="Del sagen")
    dialog.wait_for()
    search = dialog.get_by_label("Søg efter navn")
    search.fill("Ole")
    dialog.get_by_text("Ingen brugere fundet.").wait_for()
    search.fill("Mette")
    dialog.get_by_role("button", name="Tilføj Mette Madsen").click()
    dialog.get_by_role("list", name="Vil blive delt med").get_by_text("Mette Madsen").wait_for()
    accessible(page, "del dialog")
    shoot(page, "story-09-del-dialog")
    dialog.get_by_role("button", name="Del", exact=True).click()
    page.get_by_text("Sagen er delt.").wait_for()
    assert "Mette Madsen" in page.get_by_role("definition").filter(has_text="Mette").inner_text()
    assert portal.rows("SELECT u.email FROM case_party p JOIN app_user u ON u.id = p.user_id "
                       "JOIN support_case s ON s.id = p.case_id WHERE s.number = :n", n=number) == [(mette,)]
    shared = portal.inbox.wait(mette, lambda s: "delt med dig" in s)
    shoot(page, "story-10-delt")

    # The colleague follows the shared mail's link, registers, and sees the case — without Luk.
    colleague = new_page()
    colleague.goto(link_in(shared, portal.url, r"/sager/\S+"))
    register(colleague, portal, mette)
    colleague.get_by_role("heading", name="Adgang til lønsystemet").wait_for()
    assert colleague.get_by_role("link", name="Luk", exact=True).count() == 0
    accessible(colleague, "case as a party")
    shoot(colleague, "story-11-kollega-ser-sagen")
    colleague.goto("/sager")
    colleague.get_by_role("row").filter(has_text=number).wait_for()

    # An agent sets Udført; the customer's comment reopens the case.
    portal.agent(number, "status", status="udfoert")
    portal.inbox.wait(jens, lambda s: "Udført" in s)
    page.reload()
    page.get_by_text("Sagen er vurderet som udført, og svar er fremsendt.").wait_for()
    shoot(page, "story-12-udfoert")
    page.get_by_label("Kommentar").fill("Det virker desværre stadig ikke.")
    page.get_by_role("button", name="Send").click()
    page.get_by_text("Din kommentar er sendt, og sagen er opdateret.").wait_for()
    assert portal.status(number) == "paabegyndt"
    portal.inbox.wait(mette, lambda s: "genåbnet" in s)

    # Luk: a confirmation, then Lukket; no more updates, a new case offered instead.
    page.get_by_role("link", name="Luk", exact=True).click()
    page.get_by_role("heading", name="Luk sagen").wait_for()
    accessible(page, "luk")
    shoot(page, "story-13-luk")
    page.get_by_role("button", name="Ja, luk sagen").click()
    page.get_by_text("Sagen er lukket.", exact=True).wait_for()
    assert portal.status(number) == "lukket"
    assert page.get_by_label("Kommentar").count() == 0
    page.get_by_role("link", name="Opret en ny sag").wait_for()
    portal.inbox.wait(mette, lambda s: "Lukket" in s)
    accessible(page, "closed case")
    shoot(page, "story-14-lukket")


def test_del_without_script_uses_its_own_page(new_page: Any, portal: Portal) -> None:
    lise, karl = "lise@kunde.example", "karl@kunde.example"
    number = portal.mail_in(lise, "Ny medarbejder")
    page = new_page(script=False)
    page.goto(f"/sager/{number}")
    register(page, portal, lise)
    page.get_by_role("link", name="Del", exact=True).click()
    page.get_by_role("heading", name="Del sagen").wait_for()
    page.get_by_label("Søg efter navn").fill("Sofie")  # another organisation's: not found
    page.get_by_role("button", name="Søg").click()
    page.get_by_text("Ingen brugere fundet.").wait_for()
    page.get_by_label("Søg efter navn").fill("Karl")
    page.get_by_role("button", name="Søg").click()
    page.get_by_role("button", name="Tilføj Karl Kjær").click()
    page.get_by_role("button", name="Fjern Karl Kjær").wait_for()
    shoot(page, "noscript-del")  # axe needs script: this page is checked in the axe test below
    page.get_by_role("button", name="Del", exact=True).click()
    page.get_by_text("Sagen er delt.").wait_for()
    portal.inbox.wait(karl, lambda s: "delt med dig" in s)


def test_outsiders_get_404_forged_forms_403_and_a_used_link_nothing(new_page: Any, portal: Portal) -> None:
    number = portal.mail_in("per@kunde.example", "Fortroligt")
    owner = new_page()
    owner.goto(f"/sager/{number}")
    register(owner, portal, "per@kunde.example")
    owner.get_by_role("heading", name="Fortroligt").wait_for()
    owner.get_by_label("Kommentar").fill("Se vedhæftede")
    owner.get_by_label("Vedhæft fil (valgfrit)").set_input_files(
        files=[{"name": "løn.csv", "mimeType": "text/csv", "buffer": b"navn;lon\n"}])
    owner.get_by_role("button", name="Send").click()
    file_path = owner.get_by_role("link", name="løn.csv").get_attribute("href")
    # a forged or missing CSRF token: 403, even from the owner
    for form in ({"kommentar": "uden token"}, {"kommentar": "forfalsket", "csrf": "0" * 64}):
        assert owner.context.request.post(f"/sager/{number}/kommentar", form=form).status == 403

    outsider = new_page()
    outsider.goto("/login")
    register(outsider, portal, "sofie@andet.example")
    outsider.get_by_role("heading", name="Mine sager").wait_for()
    assert outsider.get_by_text(number).count() == 0
    token = outsider.locator("input[name=csrf]").first.get_attribute("value")
    for path in (f"/sager/{number}", file_path, f"/sager/{number}/luk", f"/sager/{number}/del"):
        answer = outsider.goto(path)
        assert answer.status == 404, path
    accessible(outsider, "404")
    shoot(outsider, "outsider-404")
    request = outsider.context.request
    for path, form in ((f"/sager/{number}/kommentar", {"kommentar": "hej"}), (f"/sager/{number}/luk", {}),
                       (f"/sager/{number}/del", {"valgt": "sofie@andet.example"})):
        assert request.post(path, form={"csrf": token, **form}).status == 404, path
    assert portal.rows("SELECT count(*) FROM comment c JOIN support_case s ON s.id = c.case_id "
                       "WHERE s.number = :n", n=number) == [(2,)]
    assert portal.status(number) == "registreret"
    # the link Sofie used is spent
    used = portal.inbox.wait("sofie@andet.example", lambda s: "Serviceportalen" in s)
    outsider.goto(link_in(used, portal.url, r"/link/\S+"))
    outsider.get_by_text("Linket er brugt, udløbet eller ikke gyldigt.").wait_for()


def test_every_page_passes_axe_in_danish_and_english(new_page: Any, portal: Portal) -> None:
    number = portal.mail_in("karl@kunde.example", "Tilgængelighed")
    anonymous = ["/", "/login", "/opret", "/glemt", "/link/ugyldigt-link", f"/sager/{number}/findes/ikke"]
    page = new_page()
    for lang in ("da", "en"):
        for path in anonymous:
            page.goto(f"{path}?lang={lang}")
            assert page.locator("html").get_attribute("lang") == lang
            accessible(page, f"{path} ({lang}, logged out)")
    page.goto("/?lang=da")
    shoot(page, "axe-forside")
    page.goto("/?lang=en")
    shoot(page, "axe-forside-en")
    page.goto("/login?lang=da")
    page.get_by_label("E-mailadresse").fill("karl@kunde.example")
    page.get_by_label("Adgangskode").fill("forkert")
    page.get_by_role("button", name="Log ind").click()
    page.get_by_text("Forkert e-mailadresse eller adgangskode.").wait_for()
    accessible(page, "login error")
    shoot(page, "axe-login-fejl")

    page.goto(f"/sager/{number}")
    register(page, portal, "karl@kunde.example")
    page.get_by_role("heading", name="Tilgængelighed").wait_for()
    logged_in = ["/", "/sager", "/sager?vis=afsluttede", "/sager?vis=alle", f"/sager/{number}",
                 f"/sager/{number}/luk", f"/sager/{number}/del", f"/sager/{number}/del?q=Jens",
                 f"/sager/{number}/del?q=ingen", "/sager/SAG-999999"]
    for lang in ("da", "en"):
        for path in logged_in:
            sep = "&" if "?" in path else "?"
            page.goto(f"{path}{sep}lang={lang}")
            assert page.locator("html").get_attribute("lang") == lang
            accessible(page, f"{path} ({lang}, logged in)")
    page.goto(f"/sager/{number}?lang=en")
    shoot(page, "axe-sagen-en")
    page.get_by_role("button", name="Send").click()  # the form's own error
    page.get_by_role("alert").wait_for()
    accessible(page, "comment error (en)")
    page.get_by_role("link", name="Share").click()
    page.get_by_role("dialog").get_by_label("Search by name").fill("Jens")
    page.get_by_role("button", name="Add Jens Jensen").wait_for()
    accessible(page, "share dialog (en)")
    shoot(page, "axe-del-dialog-en")
