"""Single sign-on (OpenID Connect, authorization code + PKCE) against the real daemon (`gateway
run` as a child process) and a stand-in provider on 127.0.0.1 (tests/oidc_standin.py): the happy
path in headless Chromium, every refusal over HTTP — each a clear page, no session row, no
session cookie — and axe-core on the refusal page in Danish and English.
"""

from __future__ import annotations

import asyncio
import os
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from gateway.errors import ConfigError
from gateway.http.portal import sso
from gateway.http.portal.i18n import ENGLISH
from gateway.settings import load_settings
from store.engine import make_engine, resolve_url
from tests.browser import Problems, accessible, launch, shoot
from tests.cli_proc import run_cli
from tests.conftest import ROOT, free_port
from tests.daemon_proc import DaemonProcess
from tests.oidc_standin import CLIENT_ID, CLIENT_SECRET, Login, OidcProvider

SECRET_ENV = "GW_TEST_PORTAL_OIDC_SECRET"
IDP_NAME = "Statens Log-in"
JENS, METTE = "jens@kunde.example", "mette@kunde.example"  # registered customers (a password)
OLE = "ole@kunde.example"  # mailed in once: a user without a password
AGENT = "anne@sa.example"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, OidcProvider]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    idp = OidcProvider(f"{url}/login/sso/callback")
    idp.start()
    proc = DaemonProcess(tmp_path_factory.mktemp("sso"), api={"enabled": True, "port": port},
                         portal={"url": url},
                         **{"portal.oidc": {"issuer": idp.issuer, "client_id": CLIENT_ID,
                                            "client_secret_env": SECRET_ENV, "display_name": IDP_NAME}})
    with pytest.MonkeyPatch.context() as env:
        env.setenv(SECRET_ENV, CLIENT_SECRET)
        proc.start()
    try:
        cli_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        for address, extra in ((JENS, ["--org", "Kunde A/S"]), (METTE, ["--org", "Kunde A/S"]), (OLE, []),
                               (AGENT, ["--agent"])):
            rc, _, err = run_cli(["--config", str(proc.config_path), "users", "add", address, "--name", address.split("@")[0].title(), *extra], cli_env, ROOT)
            assert rc == 0, err
        for address in (JENS, METTE, AGENT):  # as if each had followed the mailed link
            _sync(_write(proc, "INSERT INTO portal_password (user_id, password_hash, set_at) "
                               "SELECT id, 'argon2id-not-used-here', CURRENT_TIMESTAMP FROM app_user WHERE email = :e",
                         e=address))
        yield proc, idp
    finally:
        assert proc.stop() == 0, proc.tail()
        idp.stop()


async def _write(proc: DaemonProcess, sql: str, **params: Any) -> None:
    settings = proc.settings
    engine = make_engine(resolve_url(settings.database.url, settings.base_dir))
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql), params)
    finally:
        await engine.dispose()


def _sync(coro: Any) -> Any:
    """Run a coroutine on a thread of its own: Playwright's sync API keeps a loop on this one."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coro).result()


def sessions_of(proc: DaemonProcess, address: str) -> list[str]:
    rows = _sync(proc.rows("SELECT s.method FROM portal_session s JOIN app_user u ON u.id = s.user_id "
                           "WHERE u.email = :e", e=address))
    return [r[0] for r in rows]


class Browser:
    """An HTTP client with a cookie jar, as one browser: the portal on its base URL, the
    provider followed by hand (its one redirect back)."""

    def __init__(self, proc: DaemonProcess) -> None:
        self.url = proc.settings.portal.url
        self.http = httpx.Client(base_url=self.url, timeout=15)

    def start(self, next_path: str | None = None) -> str:
        """Click the button: the provider's authorization URL."""
        answer = self.http.get("/login/sso", params={"next": next_path} if next_path else None)
        assert answer.status_code == 302, answer.text
        return answer.headers["location"]

    def at_provider(self, authorize_url: str) -> str:
        """Log in at the provider: the callback URL it sends the browser back to."""
        answer = httpx.get(authorize_url, timeout=15)
        assert answer.status_code == 302, answer.text
        return str(answer.headers["location"])

    def back(self, callback_url: str) -> httpx.Response:
        return self.http.get(callback_url)

    def login(self, next_path: str | None = None) -> httpx.Response:
        return self.back(self.at_provider(self.start(next_path)))

    def logged_in(self) -> bool:
        return "gw_session" in self.http.cookies and self.http.get("/sager").status_code == 200


@pytest.fixture
def browser_(stack: tuple[DaemonProcess, OidcProvider]) -> Iterator[Browser]:
    b = Browser(stack[0])
    yield b
    b.http.close()


@pytest.fixture
def idp(stack: tuple[DaemonProcess, OidcProvider]) -> OidcProvider:
    stack[1].token_status = 200
    return stack[1]


@pytest.fixture
def proc(stack: tuple[DaemonProcess, OidcProvider]) -> DaemonProcess:
    return stack[0]


# --- what works ------------------------------------------------------------------------------------------


def test_a_registered_customer_logs_in_and_lands_on_next(browser_: Browser, idp: OidcProvider,
                                                         proc: DaemonProcess) -> None:
    before = sessions_of(proc, JENS).count("oidc")
    idp.next_login = Login(JENS)
    authorize = browser_.start("/sager?vis=alle")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(authorize).query))
    assert query["code_challenge_method"] == "S256" and query["nonce"] and query["state"]
    assert "code_verifier" not in query  # the verifier stays with the portal and the browser's cookie
    flow_cookie = next(c for c in browser_.http.cookies.jar if c.name == "gw_sso")
    assert flow_cookie.path == "/login/sso" and CLIENT_SECRET not in (flow_cookie.value or "")
    answer = browser_.back(browser_.at_provider(authorize))
    assert answer.status_code == 303 and answer.headers["location"] == "/sager?vis=alle"
    assert browser_.logged_in()
    assert sessions_of(proc, JENS).count("oidc") == before + 1
    assert idp.token_requests[-1]["code_verifier"]  # PKCE: the provider checked it against the challenge
    assert "gw_sso" not in browser_.http.cookies  # the flow's cookie is gone
    assert not any(JENS in str(e) for e in proc.events())  # no address in the daemon's log


def test_an_unsafe_next_goes_to_mine_sager(browser_: Browser, idp: OidcProvider) -> None:
    idp.next_login = Login(JENS)
    answer = browser_.login("//evil.example/sager")
    assert answer.status_code == 303 and answer.headers["location"] == "/sager"


def test_the_email_from_the_userinfo_endpoint(browser_: Browser, idp: OidcProvider) -> None:
    idp.next_login = Login(JENS, email_in_token=False)
    assert browser_.login().status_code == 303 and browser_.logged_in()


# --- what is refused: a clear page, no session ----------------------------------------------------------

REFUSED_TEXT = "Vi kunne ikke bekræfte dit login."


@pytest.mark.parametrize(("name", "login", "page_text"), [
    # aud names another client, azp us: authlib alone would let it pass (it checks aud only via azp)
    ("wrong audience", Login(JENS, overrides={"aud": "another-client", "azp": CLIENT_ID}), REFUSED_TEXT),
    ("no audience", Login(JENS, overrides={"aud": None}), REFUSED_TEXT),
    ("bad signature", Login(JENS, forged=True), REFUSED_TEXT),
    ("wrong nonce", Login(JENS, overrides={"nonce": "another-nonce"}), REFUSED_TEXT),
    ("no nonce", Login(JENS, overrides={"nonce": None}), REFUSED_TEXT),
    ("expired", Login(JENS, overrides={"exp": 1_700_000_000, "iat": 1_699_999_000}), REFUSED_TEXT),
    ("wrong issuer", Login(JENS, overrides={"iss": "http://127.0.0.1:9/other"}), REFUSED_TEXT),
    ("unverified e-mail", Login(JENS, verified=False), f"Din e-mailadresse er ikke bekræftet hos {IDP_NAME}."),
    ("e-mail_verified a string", Login(JENS, overrides={"email_verified": "true"}),
     f"Din e-mailadresse er ikke bekræftet hos {IDP_NAME}."),
    ("unknown user", Login("nobody@kunde.example"), "Du er ikke oprettet på Serviceportalen"),
    ("a user who never registered", Login(OLE), "Du er ikke oprettet på Serviceportalen"),
    ("an agent", Login(AGENT), "Du er ikke oprettet på Serviceportalen"),
])
def test_refused(name: str, login: Login, page_text: str, browser_: Browser, idp: OidcProvider,
                 proc: DaemonProcess) -> None:
    before = {a: len(sessions_of(proc, a)) for a in (JENS, OLE, AGENT)}
    idp.next_login = login
    answer = browser_.login()
    assert answer.status_code == 403, name
    assert page_text in answer.text, name
    assert "Traceback" not in answer.text and 'href="/login"' in answer.text
    assert not browser_.logged_in(), name
    assert {a: len(sessions_of(proc, a)) for a in before} == before, name


def test_a_wrong_state_is_refused(browser_: Browser, idp: OidcProvider, proc: DaemonProcess) -> None:
    idp.next_login = Login(JENS)
    callback = browser_.at_provider(browser_.start())
    answer = browser_.back(callback.replace("state=", "state=x"))
    assert answer.status_code == 403 and REFUSED_TEXT in answer.text
    assert not browser_.logged_in()


def test_a_callback_in_another_browser_is_refused(stack: tuple[DaemonProcess, OidcProvider],
                                                  idp: OidcProvider) -> None:
    """Login CSRF: a callback URL made in one browser (the attacker's) does not log another in."""
    attacker, victim = Browser(stack[0]), Browser(stack[0])
    idp.next_login = Login(JENS)
    callback = attacker.at_provider(attacker.start())
    answer = victim.back(callback)
    assert answer.status_code == 403 and not victim.logged_in()
    assert attacker.back(callback).status_code == 303  # the flow is its own browser's


def test_a_callback_used_twice_is_refused(browser_: Browser, idp: OidcProvider) -> None:
    idp.next_login = Login(JENS)
    callback = browser_.at_provider(browser_.start())
    assert browser_.back(callback).status_code == 303
    browser_.http.cookies.clear()
    assert browser_.back(callback).status_code == 403


def test_the_providers_error_is_a_page(browser_: Browser, idp: OidcProvider) -> None:
    browser_.start()
    answer = browser_.back("/login/sso/callback?error=access_denied&state=x")
    assert answer.status_code == 403 and REFUSED_TEXT in answer.text


def test_a_failing_token_endpoint_is_a_page(browser_: Browser, idp: OidcProvider, proc: DaemonProcess) -> None:
    idp.next_login = Login(JENS)
    callback = browser_.at_provider(browser_.start())
    idp.token_status = 500
    answer = browser_.back(callback)
    assert answer.status_code == 502 and "Single sign-on er midlertidigt utilgængelig" in answer.text
    assert proc.events("portal.sso_unavailable")


# --- in a real browser -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    yield from launch()


@pytest.fixture
def page(chromium: Any, proc: DaemonProcess) -> Iterator[Any]:
    problems = Problems()
    context = chromium.new_context(base_url=proc.settings.portal.url, locale="da-DK")
    context.set_default_timeout(8000)
    page = context.new_page()
    problems.watch(page)
    yield page
    context.close()
    assert not problems.seen, problems.seen


def test_in_chromium_a_customer_logs_in_with_single_sign_on(page: Any, idp: OidcProvider,
                                                            proc: DaemonProcess) -> None:
    idp.next_login = Login(METTE)
    page.goto("/sager")
    page.get_by_role("heading", name="Log ind").wait_for()
    page.goto("/login?next=%2Fsager%3Fvis%3Dafsluttede")
    accessible(page, "login with the sso button")
    page.get_by_role("link", name=f"Log ind med {IDP_NAME}").click()
    page.get_by_role("heading", name="Mine sager").wait_for()
    assert page.url.endswith("/sager?vis=afsluttede")
    shoot(page, "sso-01-mine-sager")
    assert sessions_of(proc, METTE) == ["oidc"]
    page.get_by_role("button", name="Log ud").click()
    page.get_by_text("Du er logget ud.").wait_for()
    assert sessions_of(proc, METTE) == []


@pytest.mark.parametrize("lang", ["da", "en"])
def test_in_chromium_the_refusal_pages_pass_axe(page: Any, idp: OidcProvider, lang: str) -> None:
    page.goto(f"/login?lang={lang}")
    for n, login in enumerate((Login(METTE, verified=False), Login("nobody@kunde.example"),
                               Login(METTE, forged=True))):
        idp.next_login = login
        page.goto("/login/sso")
        page.locator("main p").first.wait_for()
        assert page.locator("html").get_attribute("lang") == lang
        accessible(page, f"sso refusal {n} ({lang})")
        shoot(page, f"sso-02-refused-{n}-{lang}")
    page.get_by_role("link", name="Log ind med adgangskode" if lang == "da" else "Log in with your password").click()
    page.get_by_role("heading", name="Log ind" if lang == "da" else "Log in").wait_for()


# --- configuration ------------------------------------------------------------------------------------------


def _settings(tmp_path: Any, oidc: str) -> Any:
    path = tmp_path / "gateway.toml"
    path.write_text('[api]\nrequester_token_secret = "requester-secret-0123456789"\n'
                    f'[portal]\nurl = "https://portal.example"\n[portal.oidc]\n{oidc}\n', encoding="utf-8")
    return load_settings(path, env={})


def test_the_oidc_section_is_optional_and_checked(tmp_path: Any) -> None:
    assert load_settings(None, env={}).portal.oidc is None
    good = 'issuer = "https://idp.example/realm"\nclient_id = "portal"\nclient_secret_env = "PORTAL_OIDC_SECRET"'
    cfg = _settings(tmp_path, good).portal.oidc
    assert cfg.discovery_endpoint == "https://idp.example/realm/.well-known/openid-configuration"
    assert cfg.scopes == ("openid", "email") and cfg.display_name == "single sign-on"
    for bad, key in [(good.replace("https://idp", "http://idp"), "issuer"),
                     (good.replace('"PORTAL_OIDC_SECRET"', '"s3cr3t-value=="'), "client_secret_env"),
                     (good + '\nscopes = ["openid"]', "scopes"), (good + '\nsurprise = 1', "surprise"),
                     (good.replace('client_id = "portal"', 'client_id = ""'), "client_id")]:
        with pytest.raises(ConfigError, match=key) as refused:
            _settings(tmp_path, bad)
        assert "s3cr3t" not in str(refused.value)


def test_without_its_secret_in_the_environment_the_daemon_stops(tmp_path: Any) -> None:
    """Like an IMAP account's missing secret: the HTTP loop fails at start with the variable's name."""
    proc = DaemonProcess(tmp_path, api={"enabled": True, "port": free_port()},
                         **{"portal.oidc": {"issuer": "https://idp.example", "client_id": CLIENT_ID,
                                            "client_secret_env": f"{SECRET_ENV}_MISSING"}})
    with pytest.raises(RuntimeError, match=f"(?s)exited with 1.*{SECRET_ENV}_MISSING is not set"):
        proc.start()


def test_every_sso_text_has_its_english() -> None:
    texts = [t for v in vars(sso).values() if isinstance(v, tuple) for t in v[1:3] if isinstance(t, str)]
    assert len(texts) == 8 and all(t in ENGLISH for t in texts)
