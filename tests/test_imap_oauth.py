"""OAuth2 IMAP logins (XOAUTH2 / OAUTHBEARER) for Microsoft 365 mailboxes, shared ones included.

Against a private Dovecot with the `oauth2` passdb (tests/dovecot.py) and a stand-in for Entra ID
on 127.0.0.1 (tests/oauth_standin.py: the token endpoint over https with a test CA made here,
the introspection endpoint Dovecot asks). msal trusts the test CA through REQUESTS_CA_BUNDLE,
the ordinary way, so the gateway's own code path is the one tested. Every test has its own
Entra app (client id) and its own mailboxes, so the counts of token grants are its own.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.app import App, open_app
from gateway.clock import SystemClock
from gateway.errors import ConfigError, TokenUnavailable
from gateway.ingest.imap import AccountReader, imap_loop
from gateway.ingest.imap_check import check_accounts
from gateway.ingest.oauth import MsalTokenSource, token_sources
from gateway.settings import ImapAccount, load_settings
from store import queries
from store.models import InboundMail
from store.transact import run_in
from tests.conftest import ROOT, add_user, build_mail, outbox
from tests.dovecot import MISSING, Dovecot, dovecot_binary
from tests.oauth_standin import LIFETIME_S, TENANT, IdentityProvider
from tests.test_imap import (
    _equals,
    case_count,
    events,
    eventually,
    folder,
    imap_settings,
    inbound_count,
    running,
)

SECRET_ENV = "GW_TEST_IMAP_CLIENT_SECRET"
MAILBOXES = tuple(f"box{i}@kundebetjening.test" for i in range(24))
NOT_GRANTED = "afdeling@kundebetjening.test"  # has a passdb, but no app is granted it
_apps = itertools.count(1)


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed for the test CA of the token endpoint (msal speaks only https)")
    root = Path(tempfile.mkdtemp(prefix="gw-idp-"))
    with IdentityProvider(root) as server:
        yield server
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def dovecot(idp: IdentityProvider) -> Iterator[Dovecot]:
    if dovecot_binary() is None:
        pytest.skip(MISSING)
    oauth = {m: idp.introspection_url(m) for m in (*MAILBOXES, NOT_GRANTED)}
    server = Dovecot(spare_users=6, oauth2=oauth)
    server.start()
    server.free_mailboxes = list(MAILBOXES)  # type: ignore[attr-defined]
    yield server
    server.close()


@pytest.fixture
def mailbox(dovecot: Dovecot) -> Iterator[Any]:
    """Hands out mailboxes no other test has used."""
    def take() -> str:
        return str(dovecot.free_mailboxes.pop())  # type: ignore[attr-defined]
    yield take


@pytest.fixture
def app_id(idp: IdentityProvider, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh Entra app granted every test mailbox; its secret in the environment, the test CA trusted."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(idp.ca_file))
    client_id = f"app-{next(_apps)}-{os.getpid()}"
    monkeypatch.setenv(SECRET_ENV, f"secret-of-{client_id}")
    return idp.add_client(client_id, f"secret-of-{client_id}", set(MAILBOXES))


def oauth_account(idp: IdentityProvider, dovecot: Dovecot, username: str, client_id: str,
                  auth: str = "xoauth2", **overrides: Any) -> ImapAccount:
    values: dict[str, Any] = {
        "name": username.split("@")[0], "host": "127.0.0.1", "port": dovecot.port, "tls": "none",
        "username": username, "auth": auth, "tenant": TENANT, "client_id": client_id,
        "client_secret_env": SECRET_ENV, "token_url": idp.token_url(), "poll_interval_s": 60.0}
    return ImapAccount(**{**values, **overrides})


def password_account(dovecot: Dovecot, username: str, **overrides: Any) -> ImapAccount:
    return ImapAccount(**{"name": username.split("@")[0], "host": "127.0.0.1", "port": dovecot.port,
                          "tls": "none", "username": username, "password": dovecot.users[username],
                          "poll_interval_s": 60.0, **overrides})


def mails(n: int, tag: str, sender: str = "borger{i}@borger.example", to: str = "kundebetjening@x.example",
          headers: dict[str, str] | None = None) -> list[bytes]:
    return [build_mail(sender=sender.format(i=i), to=to, subject=f"Spørgsmål {tag}{i}", headers=headers)
            for i in range(n)]


async def cases(app: App) -> list[dict[str, Any]]:
    async with app.sessions() as session:
        listed = await run_in(session, queries.list_cases, "all")
        return [await run_in(session, queries.case_detail, c["number"]) for c in listed]


async def recipients_of_inbound(app: App) -> list[list[str]]:
    table = InboundMail.__table__  # type: ignore[attr-defined]
    async with app.engine.connect() as conn:
        return [list(r) for r in (await conn.execute(select(table.c.envelope_to))).scalars()]


# -- end to end against Dovecot ---------------------------------------------------------------

async def test_shared_mailbox_by_xoauth2_twenty_mails_become_twenty_cases_in_its_name(
        idp: IdentityProvider, dovecot: Dovecot, mailbox: Any, app_id: str, tmp_path: Path) -> None:
    """Kundebetjening's shared mailbox is read by XOAUTH2 with the app token, another of its
    mailboxes by OAUTHBEARER with the same token. The 20 mails come from a customer's shared
    mailbox (fællespostkasse), ten of them sent on its behalf by a colleague (Sender:): the
    guide's FAQ registers them in the fællespostkasse's name, and its notifications go there.
    Each mail read from the shared mailbox has that mailbox's address as its recipient."""
    shared, support = mailbox(), mailbox()
    faelles = "it-support@kommune.example"
    dovecot.append(shared, [*mails(10, "a", sender=f"IT-fællespostkassen <{faelles}>", to=shared),
                            *mails(10, "b", sender=f"IT-fællespostkassen <{faelles}>", to=shared,
                                   headers={"Sender": "Mette Hansen <mette@kommune.example>"})])
    dovecot.append(support, mails(2, "c", to=support))
    settings = imap_settings(tmp_path, oauth_account(idp, dovecot, shared, app_id),
                             oauth_account(idp, dovecot, support, app_id, auth="oauthbearer"))
    async with open_app(settings) as app:
        await add_user(app, faelles, "IT-fællespostkassen", org="Kommunen", shared=True)
    async with running(settings) as app:
        await eventually(lambda: _equals(case_count(app), 22), timeout=30)
        assert await folder(dovecot, shared, "Processed") == 20
        assert await folder(dovecot, support, "Processed") == 2
        # IDLE works as with a password (polling is a minute here)
        await asyncio.to_thread(dovecot.append, shared, mails(1, "idle", to=shared))
        await eventually(lambda: _equals(case_count(app), 23), timeout=3)
        found = await cases(app)
        receipts = [m for m in await outbox(app) if m["event"] == "receipt"]
        recipients = await recipients_of_inbound(app)
    in_its_name = [c for c in found if c["requester"]["email"] == faelles]
    assert len(in_its_name) == 20
    assert {c["requester"]["kind"] for c in in_its_name} == {"shared_mailbox"}
    assert not any(c["requester"]["email"] == "mette@kommune.example" for c in found)
    assert sorted(r["recipients"][0] for r in receipts if r["case"] in {c["number"] for c in in_its_name}) \
        == [faelles] * 20, "notifications go to the fællespostkasse"
    assert recipients.count([shared]) == 21 and recipients.count([support]) == 2
    assert idp.grants[app_id] == 1, "one app token for both mailboxes"
    logins = Path(dovecot.root / "dovecot.log").read_text()
    assert f"user=<{shared}>, method=XOAUTH2" in logins and f"user=<{support}>, method=OAUTHBEARER" in logins


async def test_token_that_expires_mid_run_is_renewed_once_and_nothing_is_lost_or_doubled(
        idp: IdentityProvider, dovecot: Dovecot, mailbox: Any, app_id: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.imap")
    box = mailbox()
    acct = oauth_account(idp, dovecot, box, app_id)
    dovecot.append(box, mails(30, "a", to=box))
    async with running(imap_settings(tmp_path, acct)) as app:
        await eventually(lambda: _positive(inbound_count(app)))
        # The token ends at the IdP before msal expects it, and the server ends the sessions.
        idp.expire_tokens(app_id)
        await asyncio.to_thread(dovecot.kick, box)
        await asyncio.to_thread(dovecot.append, box, mails(10, "b", to=box))
        await eventually(lambda: _equals(case_count(app), 40), timeout=60)
        await eventually(lambda: _equals(folder(dovecot, box, "Processed"), 40), timeout=30)
        assert await inbound_count(app) == 40
        assert await folder(dovecot, box, "INBOX") == 0
    assert idp.grants[app_id] == 2, "renewed once, though both connections were refused"
    assert events(caplog, "imap.token_refused", acct.name)
    assert len(events(caplog, "imap.connected", acct.name)) >= 2


async def _positive(value: Any) -> bool:
    return bool(await value > 0)


async def test_revoked_client_is_a_clear_error_with_back_off_and_the_password_account_goes_on(
        idp: IdentityProvider, dovecot: Dovecot, mailbox: Any, app_id: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.INFO, logger="gateway.imap")
    box, user = mailbox(), dovecot.fresh_user()
    oauth, password = oauth_account(idp, dovecot, box, app_id), password_account(dovecot, user)
    dovecot.append(box, mails(3, "a", to=box))
    dovecot.append(user, mails(3, "b", to=user))
    settings = imap_settings(tmp_path, oauth, password, initial=0.1, cap=0.4)
    async with running(settings) as app:
        await eventually(lambda: _equals(case_count(app), 6), timeout=30)
        idp.revoke_client(app_id)
        await asyncio.to_thread(dovecot.kick, box)
        await asyncio.to_thread(dovecot.append, box, mails(2, "c", to=box))
        await asyncio.to_thread(dovecot.append, user, mails(2, "d", to=user))
        await eventually(lambda: _equals(case_count(app), 8), timeout=30)  # the password account's two
        await asyncio.sleep(2.0)
        assert await case_count(app) == 8, "nothing read from the revoked app's mailbox"
    warnings = [r for r in events(caplog, "imap.unavailable", oauth.name) if "token" in r.problem]  # type: ignore[attr-defined]
    assert warnings, [r.getMessage() for r in caplog.records]
    steps = [r.attempt for r in warnings]  # type: ignore[attr-defined]
    assert steps == sorted(steps) and 3 <= len(steps) <= 30, steps  # backing off, not spinning
    problem: str = warnings[-1].problem  # type: ignore[attr-defined]
    assert f"the client secret in ${SECRET_ENV} is not valid" in problem and "AADSTS7000215" in problem
    assert not events(caplog, "imap.unavailable", password.name)
    assert await folder(dovecot, box, "INBOX") == 2
    assert await check_accounts(settings) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"FAILED {oauth.name}: no OAuth2 token from 127.0.0.1:")
    assert "client secret" in lines[0] and "AADSTS7000215" in lines[0]
    assert lines[1].startswith(f"ok     {password.name}: logged in")


class _NodeA(AccountReader):
    lease_retry_s = 0.2


async def test_restart_and_a_second_node_work_as_with_a_password(
        idp: IdentityProvider, dovecot: Dovecot, mailbox: Any, app_id: str, tmp_path: Path) -> None:
    """A server restart mid-run, then node A stops and node B (same store) takes the account over
    under its lease: no mail lost or doubled, and the one app token serves every session."""
    box = mailbox()
    acct = oauth_account(idp, dovecot, box, app_id)
    settings = imap_settings(tmp_path, acct)
    dovecot.append(box, mails(40, "a", to=box))
    async with open_app(settings, clock=SystemClock()) as app:
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        tokens = token_sources(settings.imap.accounts)
        node_a = asyncio.create_task(imap_loop(app.imap_intake, stop_a, _NodeA, tokens))
        worker = asyncio.create_task(app.worker.run(stop_b))
        await eventually(lambda: _positive(inbound_count(app)))
        await asyncio.to_thread(dovecot.restart)
        await eventually(lambda: _equals(inbound_count(app), 40), timeout=60)
        node_b = asyncio.create_task(imap_loop(app.imap_intake, stop_b, _NodeA))  # its own token source, as a node has
        await asyncio.sleep(0.5)
        stop_a.set()
        await asyncio.wait_for(node_a, 10)
        await asyncio.to_thread(dovecot.append, box, mails(10, "b", to=box))
        await eventually(lambda: _equals(inbound_count(app), 50), timeout=30)
        await eventually(lambda: _equals(case_count(app), 50), timeout=30)
        await eventually(lambda: _equals(folder(dovecot, box, "Processed"), 50), timeout=60)
        stop_b.set()
        await asyncio.wait_for(asyncio.gather(node_b, worker), 10)
    assert await folder(dovecot, box, "INBOX") == 0
    assert idp.grants[app_id] == 2, "one token per node; the restart needed none"


# -- gateway imap check -----------------------------------------------------------------------

@pytest.mark.parametrize(("case", "expected"), [
    ("ok-xoauth2", "ok     box: logged in to 127.0.0.1:{port} as {box} by XOAUTH2; INBOX holds 0 message(s); IDLE"),
    ("ok-oauthbearer", "ok     box: logged in to 127.0.0.1:{port} as {box} by OAUTHBEARER"),
    ("unreachable", "FAILED box: no OAuth2 token from 127.0.0.1:1: cannot reach the token endpoint: Connection refused"),
    ("tenant", "FAILED box: no OAuth2 token from 127.0.0.1:{idp}: tenant 'wrong-tenant' is not known there"),
    ("client", "FAILED box: no OAuth2 token from 127.0.0.1:{idp}: no application 'no-such-app' in tenant"),
    ("secret", "FAILED box: no OAuth2 token from 127.0.0.1:{idp}: the client secret in $" + SECRET_ENV
     + " is not valid"),
    ("expired", "FAILED box: no OAuth2 token from 127.0.0.1:{idp}: the client secret in $" + SECRET_ENV
     + " has expired"),
    ("not-granted", "FAILED box: login refused by 127.0.0.1:{port} for " + NOT_GRANTED + " with a fresh OAuth2 "
     "token: the app is not granted this mailbox"),
    ("no-imap-role", "FAILED box: login refused by 127.0.0.1:{port} for {box} with a fresh OAuth2 token"),
    ("folder", "FAILED box: folder 'Nowhere' does not exist"),
    ("unset", "FAILED box: configuration error: imap.accounts box: client_secret_env: the environment variable "
     "GW_TEST_UNSET is not set"),
], ids=lambda v: v if " " not in v else "")
async def test_check_says_what_is_wrong(idp: IdentityProvider, dovecot: Dovecot, mailbox: Any, app_id: str,
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str], case: str, expected: str) -> None:
    box = MAILBOXES[0]  # looked at, never read from
    overrides: dict[str, Any] = {
        "ok-xoauth2": {}, "ok-oauthbearer": {"auth": "oauthbearer"},
        "unreachable": {"token_url": f"https://127.0.0.1:1/{TENANT}/oauth2/v2.0/token"},
        "tenant": {"tenant": "wrong-tenant", "token_url": idp.token_url("wrong-tenant")},
        "client": {"client_id": "no-such-app"}, "secret": {}, "expired": {},
        "not-granted": {"username": NOT_GRANTED}, "no-imap-role": {}, "folder": {"folder": "Nowhere"},
        "unset": {"client_secret_env": "GW_TEST_UNSET"},
    }[case]
    client_id = app_id
    if case == "secret":
        monkeypatch.setenv(SECRET_ENV, "not-the-secret")
    elif case == "expired":
        client_id = idp.add_client(f"{app_id}-old", f"secret-of-{app_id}", set(MAILBOXES), secret_expired=True)
    elif case == "no-imap-role":
        client_id = idp.add_client(f"{app_id}-mail", f"secret-of-{app_id}", set(MAILBOXES), roles=("Mail.Read",))
    acct = dataclasses.replace(oauth_account(idp, dovecot, box, client_id, name="box"), **overrides)
    monkeypatch.delenv("GW_TEST_UNSET", raising=False)
    rc = await check_accounts(imap_settings(tmp_path, acct))
    out = capsys.readouterr().out
    assert rc == (0 if case.startswith("ok") else 1)
    assert out.count("\n") == 1, out
    assert out.startswith(expected.format(port=dovecot.port, box=box, idp=idp.https_port)), out
    assert f"secret-of-{app_id}" not in out and "not-the-secret" not in out


async def test_server_that_cannot_check_the_token_now_is_told_apart_and_not_renewed(
        idp: IdentityProvider, dovecot: Dovecot, app_id: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Dovecot answers [UNAVAILABLE] when its introspection endpoint fails: the token was not
    refused, so it is not renewed, and the words say to try later rather than blame the app."""
    acct = oauth_account(idp, dovecot, MAILBOXES[0], app_id, name="box")
    idp.introspection_down = True
    try:
        assert await check_accounts(imap_settings(tmp_path, acct)) == 1
    finally:
        idp.introspection_down = False
    out = capsys.readouterr().out
    assert out.startswith(f"FAILED box: 127.0.0.1:{dovecot.port} could not check the OAuth2 token for "
                          f"{MAILBOXES[0]} now (its identity provider did not answer): [UNAVAILABLE]"), out
    assert idp.grants[app_id] == 1


def test_missing_secret_stops_gateway_run_and_check_names_it(idp: IdentityProvider, dovecot: Dovecot,
                                                             tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[database]
url = "sqlite+aiosqlite:///{tmp_path}/gw.db"
[[imap.accounts]]
name = "kundebetjening"
host = "127.0.0.1"
port = {dovecot.port}
tls = "none"
username = "{MAILBOXES[0]}"
auth = "xoauth2"
tenant = "{TENANT}"
client_id = "gateway-app"
client_secret_env = "GW_TEST_NOT_SET"
token_url = "{idp.token_url()}"
""", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "GW_TEST_NOT_SET" and not k.startswith("GATEWAY_")}
    for command in (["imap", "check"], ["run"]):
        done = subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), *command],
                              capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)
        said = done.stdout + done.stderr
        assert "client_secret_env: the environment variable GW_TEST_NOT_SET is not set" in said, said
        assert done.returncode == (1 if command == ["imap", "check"] else 78), said
        assert "Traceback" not in said


# -- the token source alone -------------------------------------------------------------------

def test_token_is_kept_until_a_minute_before_it_expires_and_renewed_once_after_a_refusal(
        idp: IdentityProvider, app_id: str, dovecot: Dovecot) -> None:
    now = [1000.0]
    acct = oauth_account(idp, dovecot, MAILBOXES[0], app_id)
    source = token_sources([acct], clock=lambda: now[0])[acct.name]
    first = source.token()
    now[0] += LIFETIME_S - 61  # a minute and a second left
    assert source.token() == first and idp.grants[app_id] == 1
    now[0] += 2  # less than a minute left: not good enough for a new login
    second = source.token()
    assert second != first and idp.grants[app_id] == 2
    # A refused token: msal would hand the same one back from its cache.
    third = source.renew(second)
    assert third != second and idp.grants[app_id] == 3
    assert source.renew(second) == third and idp.grants[app_id] == 3, "a second caller does not renew again"
    assert "secret" not in repr(source)


def test_token_source_shared_by_the_accounts_of_one_app(idp: IdentityProvider, dovecot: Dovecot,
                                                        app_id: str) -> None:
    a = oauth_account(idp, dovecot, MAILBOXES[0], app_id, name="a")
    b = oauth_account(idp, dovecot, MAILBOXES[1], app_id, name="b", auth="oauthbearer")
    other = oauth_account(idp, dovecot, MAILBOXES[2], "other-app", name="c")
    sources = token_sources([a, b, other, password_account(dovecot, dovecot.fresh_user())])
    assert sources["a"] is sources["b"] and sources["c"] is not sources["a"]
    assert isinstance(sources["a"], MsalTokenSource) and len(sources) == 3
    with pytest.raises(ConfigError, match="GW_TEST_NOPE is not set"):
        token_sources([oauth_account(idp, dovecot, MAILBOXES[0], app_id, client_secret_env="GW_TEST_NOPE")])


def test_token_endpoint_answering_5xx_is_a_temporary_failure(idp: IdentityProvider, dovecot: Dovecot,
                                                             app_id: str, tmp_path: Path) -> None:
    acct = oauth_account(idp, dovecot, MAILBOXES[0], app_id,
                         token_url=f"https://127.0.0.1:{idp.https_port}/{TENANT}/oauth2/v2.0/token")
    source = MsalTokenSource(acct, "x")
    idp_grant = idp.grant
    idp.grant = lambda tenant, form: (503, {"error": "temporarily_unavailable"})  # type: ignore[method-assign]
    try:
        with pytest.raises(TokenUnavailable, match=r"the token endpoint failed \(HTTP Error: 503\); try later"):
            source.token()
    finally:
        idp.grant = idp_grant  # type: ignore[method-assign]


# -- settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("values", "message"), [
    ({"auth": "xoauth2"}, "imap.accounts[0].tenant: required with auth = 'xoauth2'"),
    ({"auth": "oauthbearer", "tenant": "t"}, "imap.accounts[0].client_id: required"),
    ({"auth": "xoauth2", "tenant": "t", "client_id": "c"}, "imap.accounts[0].client_secret_env: required"),
    ({"auth": "xoauth2", "tenant": "t", "client_id": "c", "client_secret_env": "Xy7~Q.abc_def"},
     "client_secret_env: must be the NAME of the environment variable"),
    ({"auth": "xoauth2", "tenant": "t", "client_id": "c", "client_secret_env": "S", "password": "p"},
     "imap.accounts[0].password: not used with auth = 'xoauth2'"),
    ({"auth": "xoauth2", "tenant": "t", "client_id": "c", "client_secret_env": "S",
      "token_url": "http://127.0.0.1/t/oauth2/v2.0/token"}, "imap.accounts[0].token_url: must be https://"),
    ({"auth": "xoauth2", "tenant": "t", "client_id": "c", "client_secret_env": "S",
      "token_url": "https://login.example/other/oauth2/v2.0/token"}, "token_url: its tenant differs"),
    ({"auth": "kerberos"}, "imap.accounts[0].auth: must be one of password, xoauth2, oauthbearer"),
    ({"tenant": "t"}, "imap.accounts[0].tenant: only used with auth"),
    ({"client_secret": "s"}, "unknown key imap.accounts[0].client_secret"),
])
def test_settings_name_the_key(values: dict[str, Any], message: str) -> None:
    env = {"GATEWAY_IMAP__ACCOUNTS": json.dumps([{"name": "kb", "host": "h", "username": "kb@x.example",
                                                  **values}])}
    with pytest.raises(ConfigError) as raised:
        load_settings(None, env=env)
    assert message in str(raised.value)
    assert "Xy7~Q" not in str(raised.value), "a pasted secret is never echoed"


def test_settings_defaults_for_microsoft_365() -> None:
    env = {"GATEWAY_IMAP__ACCOUNTS": json.dumps([{"name": "kb", "host": "outlook.office365.com",
                                                  "username": "kb@x.example", "auth": "xoauth2", "tenant": "t-1",
                                                  "client_id": "c", "client_secret_env": "KB_SECRET"}])}
    acct = load_settings(None, env=env).imap.accounts[0]
    assert acct.scope == "https://outlook.office365.com/.default"
    assert acct.token_endpoint == "https://login.microsoftonline.com/t-1/oauth2/v2.0/token"


# -- no secret and no token in any log line ---------------------------------------------------

def sasl_forms(mailbox: str, token: str) -> list[str]:
    """The token as it travels: raw, and inside the base64 of both SASL strings."""
    xoauth2 = f"user={mailbox}\x01auth=Bearer {token}\x01\x01"
    bearer = f"n,a={mailbox},\x01auth=Bearer {token}\x01\x01"
    return [token, *(base64.b64encode(s.encode()).decode() for s in (xoauth2, bearer))]


async def test_secret_and_tokens_never_appear_in_the_logs_of_a_whole_run(
        idp: IdentityProvider, dovecot: Dovecot, mailbox: Any, app_id: str, tmp_path: Path) -> None:
    """`gateway run` at DEBUG (imapclient's protocol lines included): logins by XOAUTH2 and
    OAUTHBEARER, a token refused and renewed, then the app revoked and its errors logged."""
    from tests.daemon_proc import DaemonProcess

    shared, support = mailbox(), mailbox()
    dovecot.append(shared, mails(3, "a", to=shared))
    dovecot.append(support, mails(2, "b", to=support))
    proc = DaemonProcess(tmp_path, daemon={"log_format": "json", "log_level": "DEBUG", "grace_s": 5.0},
                         imap={"backoff_initial_s": 0.1, "backoff_max_s": 0.5})
    accounts = [oauth_account(idp, dovecot, shared, app_id, name="shared"),
                oauth_account(idp, dovecot, support, app_id, name="support", auth="oauthbearer")]
    with proc.config_path.open("a", encoding="utf-8") as f:
        for a in accounts:
            f.write("\n[[imap.accounts]]\n" + "".join(
                f"{k} = {json.dumps(getattr(a, k))}\n" for k in (
                    "name", "host", "username", "auth", "tenant", "client_id", "client_secret_env", "token_url",
                    "tls")) + f"port = {a.port}\n")
    with proc:
        proc.start()
        deadline = time.monotonic() + 60
        while await proc.scalar("SELECT count(*) FROM support_case") != 5:
            assert time.monotonic() < deadline, proc.tail()
            await asyncio.sleep(0.2)
        idp.expire_tokens(app_id)
        await asyncio.to_thread(dovecot.kick, shared)
        await asyncio.to_thread(dovecot.append, shared, mails(1, "c", to=shared))
        while await proc.scalar("SELECT count(*) FROM support_case") != 6:
            assert time.monotonic() < deadline, proc.tail()
            await asyncio.sleep(0.2)
        idp.revoke_client(app_id)
        await asyncio.to_thread(dovecot.kick, support)
        while not [e for e in proc.events("imap.unavailable") if "AADSTS7000215" in e.get("problem", "")]:
            assert time.monotonic() < deadline, proc.tail()
            await asyncio.sleep(0.2)
        assert proc.stop() == 0
    log = proc.log_path.read_text(errors="replace")
    assert len(proc.events()) > 50 and "imapclient" in log, "a DEBUG run, protocol lines included"
    assert idp.grants[app_id] == 2 and len(idp.issued(app_id)) == 2
    assert proc.events("imap.token_refused") and proc.events("imap.token_acquired")
    secret = f"secret-of-{app_id}"
    leaks = [form for token in idp.issued(app_id) for box in (shared, support) for form in sasl_forms(box, token)
             if form in log]
    assert secret not in log
    assert not leaks, "a token in the logs"
