"""The operator's commands for API tokens, requester-token revocation and bouncing marks
(issue 17, items 1, 3, 4), run as `gateway …` processes against the store an in-process API uses."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway import credentials
from gateway.app import App, open_app
from gateway.clock import FrozenClock
from gateway.http.api import build_api
from store import writes
from store.transact import run_in
from tests.cli_proc import run_cli
from tests.conftest import ROOT, add_user, make_settings, outbox

AGENT = "anne@sa.example"
CUSTOMER = "jens@kunde.example"


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[App]:
    # The system clock: the CLI processes write `created_at` and `last_used_at` with it.
    async with open_app(make_settings(tmp_path)) as app:
        await add_user(app, AGENT, "Anne Agent", agent=True)
        await add_user(app, CUSTOMER, "Jens Jensen", "Kunde A/S")
        yield app


async def gateway(app: App, *args: str) -> tuple[int, str, str]:
    """`gateway ARGS` in a process of its own, on the same store as `app`."""
    s = app.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {"GATEWAY_DATABASE__URL": s.database.url, "GATEWAY_STORAGE__BLOB_DIR": s.storage.blob_dir,
            "GATEWAY_OUTBOUND__TRANSPORT": s.outbound.transport, "GATEWAY_BASE_DIR": s.base_dir}
    return await asyncio.to_thread(run_cli, ["--config", str(ROOT / "config" / "gateway.toml"), *args], env,
                                   Path(s.base_dir))


async def status_with(app: App, token: str) -> int:
    transport = httpx.ASGITransport(app=build_api(app.http))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        return (await client.get("/cases", headers={"Authorization": f"Bearer {token}"})).status_code


async def test_item17_3_tokens_issue_list_revoke(gw: App) -> None:
    rc, out, err = await gateway(gw, "tokens", "issue", "--agent", AGENT)
    assert rc == 0, err
    [token] = out.split()
    assert token.startswith("gwt_") and len(token) >= 40 and "shown only now" in err
    rc, out, err = await gateway(gw, "tokens", "issue", "--service", "portal", "--json")
    assert rc == 0, err
    service = json.loads(out)
    assert service["kind"] == "service" and service["service"] == "portal" and service["token"].startswith("gwt_")
    assert await status_with(gw, token) == 200 and await status_with(gw, service["token"]) == 200

    rc, out, err = await gateway(gw, "tokens", "list", "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert [(r["id"], r["kind"], r["agent"], r["service"], r["revoked_at"]) for r in rows] == [
        (1, "agent", AGENT, None, None), (2, "service", None, "portal", None)]
    assert all(r["created_at"] and r["last_used_at"] for r in rows)
    assert token not in out and service["token"] not in out
    rc, text, _ = await gateway(gw, "tokens", "list")
    assert rc == 0 and "kind=agent" in text and token not in text

    rc, out, _ = await gateway(gw, "tokens", "revoke", "1")
    assert rc == 0 and "revoked" in out
    assert await status_with(gw, token) == 401 and await status_with(gw, service["token"]) == 200
    rc, out, _ = await gateway(gw, "tokens", "revoke", "1")
    assert rc == 0 and "already" in out
    assert json.loads((await gateway(gw, "tokens", "list", "--json"))[1])[0]["revoked_at"]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["tokens", "issue", "--agent", CUSTOMER], 1, "not an agent"),
    (["tokens", "issue", "--agent", "nobody@sa.example"], 67, "no user"),
    (["tokens", "issue", "--service", "bad\tname"], 64, "service name"),
    (["tokens", "issue"], 64, "--agent"),
    (["tokens", "issue", "--agent", AGENT, "--service", "x"], 64, "not allowed"),
    (["tokens", "revoke", "99"], 67, "no API token 99"),
    (["users", "unbounce", "nobody@kunde.example"], 67, "no user"),
    (["users", "revoke-tokens", "not an address"], 64, "not a valid e-mail address"),
])
async def test_item17_token_commands_refuse_in_one_line(gw: App, args: list[str], code: int, message: str) -> None:
    rc, out, err = await gateway(gw, *args)
    assert rc == code and message in err and "Traceback" not in err


async def test_item17_4_users_revoke_tokens(gw: App) -> None:
    issued = await credentials.issue_requester_token(gw.tokens, CUSTOMER)
    assert await status_with(gw, issued["token"]) == 200
    rc, out, err = await gateway(gw, "users", "revoke-tokens", CUSTOMER.upper(), "--json")
    assert rc == 0, err
    assert json.loads(out) == {"email": CUSTOMER, "revoked": True}
    assert await status_with(gw, issued["token"]) == 401
    assert await status_with(gw, (await credentials.issue_requester_token(gw.tokens, CUSTOMER))["token"]) == 200


async def test_item17_1_users_unbounce(tmp_path: Path) -> None:
    async with open_app(make_settings(tmp_path), clock=FrozenClock()) as app:
        await add_user(app, CUSTOMER, "Jens Jensen")
        async with app.sessions() as session, session.begin():
            await run_in(session, writes.mark_bouncing, CUSTOMER, "bounce: test", app.clock.now())
        from store.inbox import IncomingMail
        from tests.conftest import ADDRESS, build_mail

        await app.ingest_now(IncomingMail(build_mail(sender=CUSTOMER), "test", None, (ADDRESS,)))
        assert [r["state"] for r in await outbox(app)] == ["held"]
        rc, out, err = await gateway(app, "users", "unbounce", CUSTOMER, "--json")
        assert rc == 0, err
        assert json.loads(out) == {"email": CUSTOMER, "was_bouncing": True, "released": 1}
        assert [r["state"] for r in await outbox(app)] == ["pending"]
        rc, out, _ = await gateway(app, "users", "list", "--json")
        assert json.loads(out)[0]["bouncing"] is False
