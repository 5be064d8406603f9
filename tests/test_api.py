"""The HTTP API: every endpoint in-process (httpx over ASGI), auth, errors, and a schemathesis
run against the OpenAPI document served by a real uvicorn on 127.0.0.1 that must find no 500."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import credentials, lifecycle
from gateway.app import App, open_app
from gateway.clock import FrozenClock
from gateway.http import api as api_module
from gateway.http.api import build_api
from gateway.model import Status
from gateway.tokens import RequesterClaims, api_token_hash, requester_claims, requester_token
from store import api_tokens, queries
from store.models import ImapFolderState
from store.transact import run_in
from tests.conftest import add_user, free_port, make_settings

# Tokens with known text, stored as the gateway stores them (hashes), so helpers can name them.
AGENT_TOKEN = "gwt_agent-token-for-tests-0123456789"
OTHER_AGENT_TOKEN = "gwt_other-agent-token-for-tests-0123456789"
SERVICE_TOKEN = "gwt_service-token-for-tests-0123456789"
LEGACY_TOKEN = "legacy-shared-token-from-the-config-0123"
REQUESTER = "jens@kunde.example"
COLLEAGUE = "mette@kunde.example"
OUTSIDER = "ole@andet.example"
AGENT = "anne@sa.example"
OTHER_AGENT = "bo@sa.example"
ORG = "Kunde A/S"


async def seed(app: App) -> list[str]:
    await add_user(app, REQUESTER, "Jens Jensen", ORG)
    await add_user(app, COLLEAGUE, "Mette Madsen", ORG)
    await add_user(app, OUTSIDER, "Ole Olsen", "Andet ApS")
    await add_user(app, AGENT, "Anne Agent", agent=True)
    await add_user(app, OTHER_AGENT, "Bo Agent", agent=True)
    async with app.sessions() as session, session.begin():
        for token, who in ((AGENT_TOKEN, AGENT), (OTHER_AGENT_TOKEN, OTHER_AGENT)):
            user = await run_in(session, queries.require_user, who)
            await run_in(session, api_tokens.add, api_tokens.AGENT, api_token_hash(token), app.clock.now(), user.id)
        await run_in(session, api_tokens.add, api_tokens.SERVICE, api_token_hash(SERVICE_TOKEN), app.clock.now(),
                     name="portal")
    numbers = []
    for who in (REQUESTER, REQUESTER, OUTSIDER):
        async with app.sessions() as session, session.begin():
            from store import writes

            user = await run_in(session, queries.require_user, who)
            number = await run_in(session, writes.next_case_number, "SAG-", 6)
            await run_in(session, writes.create_case, number, "Faktura", queries.user_ref(user), app.clock.now())
        numbers.append(number)
    return numbers


def settings_for(tmp_path: Path, port: int = 0):
    return make_settings(tmp_path, api={"agent_tokens": (LEGACY_TOKEN,), "port": port})


@pytest.fixture
async def gw(tmp_path: Path, clock: FrozenClock) -> AsyncIterator[App]:
    async with open_app(settings_for(tmp_path), clock=clock) as app:
        await seed(app)
        yield app


@pytest.fixture
async def client(gw: App) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_api(gw.http))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


def agent(acting: str | None = AGENT, token: str = AGENT_TOKEN) -> dict[str, str]:
    """An agent's own token; `acting` may name that agent (and no other)."""
    headers = {"Authorization": f"Bearer {token}"}
    if acting:
        headers["X-Acting-User"] = acting
    return headers


def service(acting: str | None = AGENT, token: str = SERVICE_TOKEN) -> dict[str, str]:
    """A service token, acting for the agent it names."""
    return agent(acting, token)


def requester(app: App, email: str = REQUESTER, issued: datetime | None = None, generation: int = 0) -> dict[str, str]:
    claims = RequesterClaims(email, int((issued or app.clock.now()).timestamp()),
                             app.settings.api.requester_token_lifetime_s, generation)
    return {"Authorization": f"Bearer {requester_token(app.settings.api.requester_token_secret, claims)}"}


# --- tokens -----------------------------------------------------------------------------------------


def test_requester_tokens_are_bound_and_unforgeable() -> None:
    secret = "a-secret-of-sufficient-length"
    claims = RequesterClaims(REQUESTER, 1_767_600_000, 3600, 2)
    token = requester_token(secret, claims)
    assert requester_claims(secret, token) == claims
    assert requester_claims("another-secret-of-some-length", token) is None
    prefix, payload, mac = token.split(".")
    for forged in (RequesterClaims(OUTSIDER, 1_767_600_000, 3600, 2), RequesterClaims(REQUESTER, 1_767_600_000, 10**9, 2),
                   RequesterClaims(REQUESTER, 1_767_600_000, 3600, 3)):
        other = base64.urlsafe_b64encode(
            f"{forged.email}\n{forged.issued_at}\n{forged.lifetime_s}\n{forged.generation}".encode()).decode()
        assert requester_claims(secret, f"{prefix}.{other.rstrip('=')}.{mac}") is None  # other claims, same MAC
    assert requester_claims(secret, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert requester_claims(secret, "SAG-000001") is None
    assert claims.valid_at(claims.issued_at) and claims.valid_at(claims.issued_at + 3599)
    assert not claims.valid_at(claims.issued_at + 3600) and not claims.valid_at(claims.issued_at - 3600)


def _old_format_token(secret: str, email: str) -> str:
    """`r1.<address>.<mac>` as the gateway made them before tokens expired (issue 17 item 4)."""
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    mac = hmac.new(secret.encode(), b"gateway-api-requester\x00" + email.encode(), hashlib.sha256).digest()[:18]
    return f"r1.{b64(email.encode())}.{b64(mac)}"


async def test_item17_4_old_format_tokens_are_refused(client: httpx.AsyncClient, gw: App) -> None:
    for secret in (gw.settings.mail.reply_token_secret, gw.settings.api.requester_token_secret):
        old = {"Authorization": f"Bearer {_old_format_token(secret, REQUESTER)}"}
        assert (await client.get("/cases", headers=old)).status_code == 401
    # a new-format token signed with the reply-token secret is no requester token either
    claims = RequesterClaims(REQUESTER, int(gw.clock.now().timestamp()), 3600, 0)
    reply_signed = {"Authorization": f"Bearer {requester_token(gw.settings.mail.reply_token_secret, claims)}"}
    assert (await client.get("/cases", headers=reply_signed)).status_code == 401
    assert (await client.get("/cases", headers=requester(gw))).status_code == 200


async def test_item17_4_requester_tokens_expire(client: httpx.AsyncClient, gw: App, clock: FrozenClock) -> None:
    issued = await client.post("/users/token", headers=agent(None), json={"email": REQUESTER})
    token = {"Authorization": f"Bearer {issued.json()['token']}"}
    assert issued.json()["expires_at"] == (clock.now().replace(microsecond=0) + timedelta(hours=1)).isoformat()
    clock.advance(minutes=59)
    assert (await client.get("/cases", headers=token)).status_code == 200
    clock.advance(minutes=1)
    expired = await client.get("/cases", headers=token)
    assert expired.status_code == 401 and "expired" in expired.json()["error"]
    assert expired.headers["www-authenticate"].startswith("Bearer")


async def test_item17_4_revoke_tokens_refuses_every_earlier_one(client: httpx.AsyncClient, gw: App) -> None:
    issued = [(await client.post("/users/token", headers=agent(None), json={"email": who})).json()["token"]
              for who in (REQUESTER, REQUESTER, COLLEAGUE)]
    assert await credentials.revoke_requester_tokens(gw.tokens, REQUESTER.upper()) == {"email": REQUESTER, "revoked": True}
    for token, status in zip(issued, (401, 401, 200), strict=True):
        response = await client.get("/cases", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == status
        if status == 401:
            assert "revoked" in response.json()["error"]
    fresh = (await client.post("/users/token", headers=agent(None), json={"email": REQUESTER})).json()["token"]
    assert (await client.get("/cases", headers={"Authorization": f"Bearer {fresh}"})).status_code == 200
    with pytest.raises(lifecycle.NotFound):
        await credentials.revoke_requester_tokens(gw.tokens, "nobody@kunde.example")


@pytest.mark.parametrize(("api", "message"), [
    ({"requester_token_secret": ""}, "at least 16 characters"),
    ({"requester_token_secret": "too-short"}, "at least 16 characters"),
    ({"requester_token_secret": "development-only-secret-change-me"}, "must differ from mail.reply_token_secret"),
    ({"requester_token_lifetime_s": 0}, "60 s to 30 days"),
])
def test_item17_4_requester_token_settings(tmp_path: Path, api: dict[str, Any], message: str) -> None:
    from gateway.errors import ConfigError
    from gateway.settings import load_settings
    from tests.conftest import ROOT

    env = {f"GATEWAY_API__{key.upper()}": str(value) for key, value in api.items()}
    with pytest.raises(ConfigError, match=message):
        load_settings(ROOT / "config" / "gateway.toml", env=env)
    load_settings(ROOT / "config" / "gateway.toml", env={**env, "GATEWAY_API__ENABLED": "false",
                                                         "GATEWAY_API__REQUESTER_TOKEN_LIFETIME_S": "3600"})
    chosen = load_settings(ROOT / "config" / "gateway.toml",
                           env={"GATEWAY_API__REQUESTER_TOKEN_SECRET": "from-the-environment-0123"})
    assert chosen.api.requester_token_secret == "from-the-environment-0123"
    assert chosen.api.requester_token_lifetime_s == 3600


# --- agent and service tokens (issue 17 item 3) -----------------------------------------------------


async def test_item17_3_an_agent_token_acts_only_as_its_agent(client: httpx.AsyncClient, gw: App) -> None:
    """The attack: one token, and a header naming whichever agent the caller likes."""
    body = {"status": "paabegyndt"}
    for headers in (agent(OTHER_AGENT), agent(None) | {"X-Acting-User": OTHER_AGENT.upper()}):
        response = await client.post("/cases/SAG-000001/status", headers=headers, json=body)
        assert response.status_code == 403 and "its own agent" in response.json()["error"]
    response = await client.post("/cases/SAG-000001/status", headers=agent(None), json={**body, "as": OTHER_AGENT})
    assert response.status_code == 403
    assert (await client.post("/cases/SAG-000001/status", headers=agent(None), json=body)).status_code == 200
    assert (await client.post("/cases/SAG-000001/note", headers=agent(None, OTHER_AGENT_TOKEN),
                              json={"text": "Bo"})).status_code == 200
    case = (await client.get("/cases/SAG-000001", headers=agent(None))).json()
    assert [(h["by"], h["via"]) for h in case["history"]][1:] == [(AGENT, None)]
    assert [(c["author"], c["via"]) for c in case["comments"]] == [(OTHER_AGENT, None)]


async def test_item17_3_a_service_token_is_recorded_with_both_names(client: httpx.AsyncClient, gw: App) -> None:
    assert (await client.post("/cases/SAG-000001/status", headers=service(None),
                              json={"status": "paabegyndt"})).status_code == 422
    assert (await client.post("/cases/SAG-000001/status", headers=service(REQUESTER),
                              json={"status": "paabegyndt"})).status_code == 403
    assert (await client.post("/cases/SAG-000001/status", headers=service("nobody@sa.example"),
                              json={"status": "paabegyndt"})).status_code == 403
    r = await client.post("/cases/SAG-000001/status", headers=service(OTHER_AGENT), json={"status": "paabegyndt"})
    assert r.status_code == 200
    r = await client.post("/cases/SAG-000001/reply", headers=service(None), json={"text": "Svar", "as": AGENT})
    assert r.status_code == 200
    assert (await client.get("/cases?status=all", headers=service(None))).status_code == 200  # reads need no agent
    case = (await client.get("/cases/SAG-000001", headers=agent(None))).json()
    assert (case["history"][-1]["by"], case["history"][-1]["via"]) == (OTHER_AGENT, "portal")
    assert [(c["author"], c["via"]) for c in case["comments"]] == [(AGENT, "portal")]


async def test_item17_3_deprecated_config_tokens_act_as_a_service(client: httpx.AsyncClient, gw: App) -> None:
    legacy = {"Authorization": f"Bearer {LEGACY_TOKEN}"}
    r = await client.post("/cases/SAG-000001/status", headers=legacy, json={"status": "paabegyndt"})
    assert r.status_code == 422  # a service names the agent it acts for
    r = await client.post("/cases/SAG-000001/status", headers={**legacy, "X-Acting-User": AGENT},
                          json={"status": "paabegyndt"})
    assert r.status_code == 200
    case = (await client.get("/cases/SAG-000001", headers=agent(None))).json()
    assert (case["history"][-1]["by"], case["history"][-1]["via"]) == (AGENT, "api.agent_tokens")


async def test_item17_3_issue_list_revoke(client: httpx.AsyncClient, gw: App, clock: FrozenClock) -> None:
    issued = await credentials.issue_api_token(gw.tokens, agent=AGENT.upper())
    assert issued["kind"] == "agent" and issued["agent"] == AGENT and issued["token"].startswith("gwt_")
    mine = {"Authorization": f"Bearer {issued['token']}"}
    clock.advance(minutes=5)
    assert (await client.get("/cases", headers=mine)).status_code == 200
    listed = {t["id"]: t for t in await credentials.list_api_tokens(gw.tokens)}
    assert listed[issued["id"]]["last_used_at"] == clock.now().isoformat()
    assert listed[issued["id"]]["revoked_at"] is None and listed[issued["id"]]["agent"] == AGENT
    assert issued["token"] not in repr(listed) and api_token_hash(issued["token"]) not in repr(listed)
    assert await credentials.revoke_api_token(gw.tokens, issued["id"]) == {"id": issued["id"], "revoked": True,
                                                                    "changed": True}
    refused = await client.get("/cases", headers=mine)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    assert (await credentials.revoke_api_token(gw.tokens, issued["id"]))["changed"] is False
    with pytest.raises(lifecycle.NotFound):
        await credentials.revoke_api_token(gw.tokens, 9999)
    with pytest.raises(lifecycle.Refused, match="not an agent"):
        await credentials.issue_api_token(gw.tokens, agent=REQUESTER)
    with pytest.raises(lifecycle.InvalidInput):
        await credentials.issue_api_token(gw.tokens, service="\x00bad")
    async with gw.sessions() as session:
        stored = await run_in(session, api_tokens.listing)
    assert all(set(row) == {"id", "kind", "agent", "service", "created_at", "last_used_at", "revoked_at"}
               for row in stored)


# --- auth ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer "},
    {"Authorization": "Bearer wrong-token"}, {"Authorization": "Bearer r1.amVuc0BrdW5kZS5leGFtcGxl.AAAAAAAAAAAAAAAAAAAAAAAA"},
    {"Authorization": "Bearer gwt_no-such-token-0123456789"}, {"Authorization": f"Bearer {AGENT_TOKEN}x"},
    {"Authorization": "Bearer ÿÿÿ".encode("latin-1")},
])
async def test_no_or_wrong_token_is_401(client: httpx.AsyncClient, headers: dict[str, Any]) -> None:
    for method, path in (("GET", "/cases"), ("GET", "/cases/SAG-000001"), ("POST", "/cases/SAG-000001/status"),
                         ("POST", "/cases/SAG-000001/comments"), ("GET", "/users/search?org=x"),
                         ("POST", "/users/token")):
        response = await client.request(method, path, headers=headers, json={"status": "udfoert"})
        assert response.status_code == 401, (method, path)
        assert "error" in response.json() and response.headers["www-authenticate"].startswith("Bearer")


async def test_requester_may_not_use_agent_actions(client: httpx.AsyncClient, gw: App) -> None:
    mine = requester(gw)
    for path, body in (("status", {"status": "udfoert"}), ("assign", {"agent": AGENT}), ("reply", {"text": "x"}),
                       ("note", {"text": "x"})):
        response = await client.post(f"/cases/SAG-000001/{path}", headers=mine, json=body)
        assert response.status_code == 403, path
    assert (await client.post("/users/token", headers=mine, json={"email": REQUESTER})).status_code == 403


async def test_requester_acts_only_on_own_cases(client: httpx.AsyncClient, gw: App) -> None:
    ole = requester(gw, OUTSIDER)
    assert (await client.get("/cases/SAG-000001", headers=ole)).status_code == 403
    assert (await client.post("/cases/SAG-000001/comments", headers=ole, json={"text": "hej"})).status_code == 403
    assert (await client.post("/cases/SAG-000001/close", headers=ole, json={})).status_code == 403
    assert (await client.post("/cases/SAG-000001/share", headers=ole, json={"email": OUTSIDER})).status_code == 403
    assert (await client.get(f"/cases?user={REQUESTER}", headers=ole)).status_code == 403
    mine = (await client.get("/cases?status=all", headers=ole)).json()
    assert [c["number"] for c in mine["items"]] == ["SAG-000003"] and mine["next"] is None
    # a requester token never acts as someone else
    response = await client.post("/cases/SAG-000003/close", headers={**ole, "X-Acting-User": REQUESTER}, json={})
    assert response.status_code == 403


async def test_requester_token_for_an_agent_is_refused(client: httpx.AsyncClient, gw: App) -> None:
    assert (await client.get("/cases", headers=requester(gw, AGENT))).status_code == 403
    assert (await client.get("/cases", headers=requester(gw, "erased@kunde.example"))).status_code == 401


# --- endpoints ------------------------------------------------------------------------------------------


async def test_issue_token_then_use_it(client: httpx.AsyncClient) -> None:
    response = await client.post("/users/token", headers=agent(None), json={"email": "JENS@kunde.example"})
    assert response.status_code == 200
    token = response.json()["token"]
    listed = await client.get("/cases", headers={"Authorization": f"Bearer {token}"})
    assert [c["number"] for c in listed.json()["items"]] == ["SAG-000002", "SAG-000001"]
    assert (await client.post("/users/token", headers=agent(None), json={"email": AGENT})).status_code == 409
    assert (await client.post("/users/token", headers=agent(None), json={"email": "x@y.example"})).status_code == 404


async def test_case_list_filters(client: httpx.AsyncClient, gw: App, clock: FrozenClock) -> None:
    clock.advance(minutes=1)  # the most recently changed case comes first
    await lifecycle.set_status(gw.desk, "SAG-000002", Status.UDFOERT, AGENT)
    numbers = {f: [c["number"] for c in (await client.get(f"/cases?{f}", headers=agent(None))).json()["items"]]
               for f in ("status=active", "status=done", "status=all", "status=udfoert", f"user={OUTSIDER}", "")}
    assert numbers == {"status=active": ["SAG-000003", "SAG-000001"], "status=done": ["SAG-000002"],
                       "status=all": ["SAG-000002", "SAG-000003", "SAG-000001"], "status=udfoert": ["SAG-000002"],
                       f"user={OUTSIDER}": ["SAG-000003"], "": ["SAG-000003", "SAG-000001"]}
    assert (await client.get("/cases?status=open", headers=agent(None))).status_code == 422
    assert (await client.get("/cases?user=not-an-address", headers=agent(None))).status_code == 422


async def test_detail_hides_internal_notes_from_requesters(client: httpx.AsyncClient, gw: App) -> None:
    assert (await client.post("/cases/SAG-000001/note", headers=agent(), json={"text": "Intern"})).status_code == 200
    assert (await client.post("/cases/SAG-000001/reply", headers=agent(), json={"text": "Svar"})).status_code == 200
    as_agent = (await client.get("/cases/SAG-000001", headers=agent(None))).json()
    as_requester = (await client.get("/cases/sag-000001", headers=requester(gw))).json()
    assert [c["visible_text"] for c in as_agent["comments"]] == ["Intern", "Svar"]
    assert [c["visible_text"] for c in as_requester["comments"]] == ["Svar"]
    assert (await client.get("/cases/SAG-999999", headers=agent(None))).status_code == 404
    assert (await client.get("/cases/%00", headers=agent(None))).status_code == 404


async def test_agent_actions(client: httpx.AsyncClient, gw: App) -> None:
    r = await client.post("/cases/SAG-000001/assign", headers=agent(), json={"agent": AGENT})
    assert r.status_code == 200 and r.json()["status"] == "tildelt" and len(r.json()["notifications"]) == 1
    pdf = base64.b64encode(b"%PDF-1.4 svar").decode()
    r = await client.post("/cases/SAG-000001/reply", headers=agent(), json={
        "text": "Se vedhæftede", "attachments": [{"name": "../../svar.pdf", "content_type": "application/pdf",
                                                  "data": pdf}]})
    assert r.status_code == 200
    r = await client.post("/cases/SAG-000001/status", headers=agent(), json={"status": "udfoert", "reason": "Løst"})
    assert r.status_code == 200 and r.json()["previous_status"] == "tildelt"
    r = await client.post("/cases/SAG-000001/share", headers=agent(), json={"email": COLLEAGUE})
    assert r.status_code == 200 and r.json()["party"] == COLLEAGUE
    r = await client.post("/cases/SAG-000001/close", headers=agent(), json={"reason": "Dublet"})
    assert r.status_code == 200 and r.json()["status"] == "lukket"
    case = (await client.get("/cases/SAG-000001", headers=agent(None))).json()
    assert case["comments"][0]["source"] == "api"
    assert case["comments"][0]["attachments"][0]["name"] == "svar.pdf"
    assert [h["to"] for h in case["history"]] == ["registreret", "tildelt", "udfoert", "lukket"]
    assert case["history"][-1]["by"] == AGENT and case["close_reason"] == "Dublet"


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("status", {"status": "open"}, 422, "unknown status"),
    ("status", {}, 422, "required"),
    ("status", {"status": 7}, 422, "string"),
    ("assign", {"agent": COLLEAGUE}, 409, "not an agent"),
    ("share", {"email": OUTSIDER}, 409, "own organisation"),
    ("reply", {"text": ""}, 422, "empty"),
    ("reply", {"text": "x", "attachments": [{"data": "not base64!"}]}, 422, "base64"),
    ("reply", {"text": "x", "attachments": "file"}, 422, "list"),
    ("note", b'{"text": "\\ud800 lone surrogate \\u0000"}', 200, ""),
])
async def test_bad_input_is_a_4xx_with_a_message(client: httpx.AsyncClient, path: str, body: Any,
                                                 status: int, message: str) -> None:
    if isinstance(body, bytes):
        response = await client.post(f"/cases/SAG-000001/{path}", headers=agent(), content=body)
    else:
        response = await client.post(f"/cases/SAG-000001/{path}", headers=agent(), json=body)
    assert response.status_code == status
    if message:
        assert message in response.json()["error"]


async def test_malformed_bodies(client: httpx.AsyncClient) -> None:
    url = "/cases/SAG-000001/status"
    assert (await client.post(url, headers=agent(), content=b"{not json")).status_code == 400
    assert (await client.post(url, headers=agent(), content=b"[" * 100000)).status_code == 400
    assert (await client.post(url, headers=agent(), json=["status"])).status_code == 422
    headers = {**agent(), "Content-Type": "text/plain"}
    assert (await client.post(url, headers=headers, content=b"status=udfoert")).status_code == 415
    assert (await client.post("/cases/SAG-000001/unknown", headers=agent(), json={})).status_code == 404
    assert (await client.get("/cases/SAG-000001/status", headers=agent())).status_code == 405


async def test_illegal_transition_is_409(client: httpx.AsyncClient, gw: App) -> None:
    await lifecycle.close(gw.desk, "SAG-000001", REQUESTER, "Fortrudt")
    response = await client.post("/cases/SAG-000001/status", headers=agent(), json={"status": "paabegyndt"})
    assert response.status_code == 409 and "never be reopened" in response.json()["error"]


async def test_requester_comment_json_and_multipart(client: httpx.AsyncClient, gw: App) -> None:
    await lifecycle.set_status(gw.desk, "SAG-000001", Status.AFVENTER_REKVIRENT, AGENT)
    data = base64.b64encode(b"bilag").decode()
    r = await client.post("/cases/SAG-000001/comments", headers=requester(gw),
                          json={"text": "Her er bilaget", "attachments": [{"name": "bilag.txt", "data": data}]})
    assert r.status_code == 201 and r.json()["status"] == "paabegyndt"
    r = await client.post("/cases/SAG-000001/comments", headers=requester(gw), data={"text": "Og et billede"},
                          files={"file": ("foto.png", b"\x89PNG data", "image/png")})
    assert r.status_code == 201, r.text
    comments = (await client.get("/cases/SAG-000001", headers=requester(gw))).json()["comments"]
    assert [(c["visible_text"], [a["name"] for a in c["attachments"]]) for c in comments] == [
        ("Her er bilaget", ["bilag.txt"]), ("Og et billede", ["foto.png"])]
    assert gw.blobs.get(comments[1]["attachments"][0]["sha256"]) == b"\x89PNG data"
    bad = await client.post("/cases/SAG-000001/comments", headers={**requester(gw),
                            "Content-Type": "multipart/form-data"}, content=b"garbage")
    assert bad.status_code == 422
    assert (await client.post("/cases/SAG-000001/comments", headers=agent(), json={"text": "x"})).status_code == 403


async def test_requester_close_and_share(client: httpx.AsyncClient, gw: App) -> None:
    mine = requester(gw)
    assert (await client.post("/cases/SAG-000001/share", headers=mine, json={"email": OUTSIDER})).status_code == 409
    r = await client.post("/cases/SAG-000001/share", headers=mine, json={"email": COLLEAGUE})
    assert r.status_code == 200 and r.json()["changed"]
    mette = requester(gw, COLLEAGUE)
    assert (await client.get("/cases/SAG-000001", headers=mette)).status_code == 200
    assert (await client.post("/cases/SAG-000001/close", headers=mette, json={})).status_code == 403
    r = await client.post("/cases/SAG-000001/close", headers=mine, json={"reason": "Fortrudt"})
    assert r.status_code == 200 and r.json()["status"] == "lukket"
    assert (await client.post("/cases/SAG-000001/close", headers=mine, json={})).status_code == 409


async def test_user_search(client: httpx.AsyncClient, gw: App) -> None:
    r = await client.get("/users/search", params={"text": "mette", "org": ORG}, headers=agent(None))
    assert [u["email"] for u in r.json()] == [COLLEAGUE]
    r = await client.get("/users/search", params={"text": "kunde"}, headers=requester(gw))
    assert [u["email"] for u in r.json()] == [REQUESTER, COLLEAGUE]
    r = await client.get("/users/search", params={"text": "ole", "org": "Andet ApS"}, headers=requester(gw))
    assert r.status_code == 403
    assert (await client.get("/users/search", params={"text": "x"}, headers=agent(None))).status_code == 422


async def test_item17_1_unbounce_releases_the_held_mail(client: httpx.AsyncClient, gw: App) -> None:
    from store import writes
    from tests.conftest import outbox

    async with gw.sessions() as session, session.begin():
        assert await run_in(session, writes.mark_bouncing, COLLEAGUE, "bounce: test", gw.clock.now())
    assert (await client.post("/cases/SAG-000001/share", headers=agent(), json={"email": COLLEAGUE})).status_code == 200
    [held] = await outbox(gw)
    assert held["state"] == "held" and held["last_error"] == "recipient is bouncing"
    body = {"email": COLLEAGUE.upper()}
    assert (await client.post("/users/unbounce", headers=requester(gw), json=body)).status_code == 403
    r = await client.post("/users/unbounce", headers=service(None), json=body)
    assert r.status_code == 200 and r.json() == {"email": COLLEAGUE, "was_bouncing": True, "released": 1}
    [released] = await outbox(gw)
    assert released["state"] == "pending" and released["last_error"] is None
    assert (await client.post("/users/unbounce", headers=agent(), json={"email": "x@y.example"})).status_code == 404
    assert (await client.post("/users/unbounce", headers=agent(), json={"email": "no address"})).status_code == 422


# --- operations --------------------------------------------------------------------------------------------


async def test_healthz(gw: App) -> None:
    alive = {"worker": True, "sender": True}
    transport = httpx.ASGITransport(app=build_api(gw.http, loops=lambda: alive))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        ok = await c.get("/healthz")
        assert ok.status_code == 200 and ok.json() == {"status": "ok", "store": True, "loops": alive}
        alive["sender"] = False
        dead = await c.get("/healthz")
        assert dead.status_code == 503 and dead.json()["loops"]["sender"] is False
    assert await _broken_store_health(gw) == (503, False)


async def _broken_store_health(gw: App) -> tuple[int, bool]:
    from dataclasses import replace

    from sqlalchemy.ext.asyncio import create_async_engine

    broken = create_async_engine("sqlite+aiosqlite:////nonexistent/dir/gateway.db")
    try:
        transport = httpx.ASGITransport(app=build_api(replace(gw.http, engine=broken)))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
            r = await c.get("/healthz")
        return r.status_code, r.json()["store"]
    finally:
        await broken.dispose()


async def test_metrics(client: httpx.AsyncClient, gw: App, clock: FrozenClock) -> None:
    """Read from the store (tests/test_operations.py checks every figure against a daemon's run)."""
    from store.inbox import IncomingMail
    from tests.conftest import ADDRESS, build_mail

    await gw.ingest_now(IncomingMail(build_mail(sender="ny@borger.example"), "pipe", None, (ADDRESS,)))
    async with gw.sessions() as session, session.begin():
        session.add(ImapFolderState(account="kb", folder="INBOX", last_fetch_at=datetime(2026, 1, 5, 9, tzinfo=UTC)))
    assert (await client.post("/cases/SAG-000001/status", headers=agent(), json={"status": "udfoert"})).status_code == 200
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in ('gateway_mails_processed_total{outcome="created"} 1.0', 'gateway_mails_received_total{source="pipe"} 1.0',
                 "gateway_processing_seconds_count 1.0", "gateway_mails_quarantined_total 0.0",
                 'gateway_inbox_depth{state="pending"} 0.0', "gateway_outbox_depth{state=\"pending\"} ",
                 'gateway_imap_last_fetch_timestamp_seconds{account="kb",folder="INBOX"} 1.7676036e+09',
                 'gateway_case_actions_total{action="status"}'):
        assert line in text, line
    assert all(name.startswith("gateway_") for name in _metric_names(text))
    assert "_created" not in text


def _metric_names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


async def test_openapi_document_is_valid(client: httpx.AsyncClient) -> None:
    import schemathesis

    doc = (await client.get("/openapi.json")).json()
    schemathesis.openapi.from_dict(doc).validate()
    assert set(doc["paths"]) >= {"/cases", "/cases/{number}", "/cases/{number}/status", "/cases/{number}/assign",
                                 "/cases/{number}/reply", "/cases/{number}/note", "/cases/{number}/share",
                                 "/cases/{number}/close", "/cases/{number}/comments", "/users/search",
                                 "/users/token", "/users/unbounce", "/healthz", "/metrics"}


async def test_api_loop_serves_on_port_zero_and_stops(gw: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.http.api")
    stop = asyncio.Event()
    task = asyncio.create_task(api_module.api_loop(gw.http, stop))
    for _ in range(200):
        ports = [getattr(r, "port", None) for r in caplog.records if r.getMessage() == "api.listening"]
        if ports or task.done():
            break
        await asyncio.sleep(0.02)
    assert ports and ports[0], "api.listening was never logged"
    assert any(r.getMessage() == "api.deprecated_agent_tokens" for r in caplog.records)  # LEGACY_TOKEN is set
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}") as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/cases")).status_code == 401
    stop.set()
    await asyncio.wait_for(task, 10)


# --- the served API, fuzzed -----------------------------------------------------------------------------


class ServedApi:
    """`api_loop` on a real port, in its own thread and event loop (schemathesis is synchronous)."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.settings = settings_for(tmp_path, self.port)
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.stop: asyncio.Event | None = None
        self.requester = RequesterClaims(REQUESTER, int(FrozenClock().now().timestamp()), 3600, 0)
        self.secret = self.settings.api.requester_token_secret
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        async with open_app(self.settings, clock=FrozenClock()) as app:
            await seed(app)
            task = asyncio.create_task(api_module.api_loop(app.http, self.stop))
            while not _listening(self.port):
                await asyncio.sleep(0.02)
            self.ready.set()
            await task

    def __enter__(self) -> ServedApi:
        self.thread.start()
        assert self.ready.wait(20), "the API did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(20)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedApi]:
    with ServedApi(tmp_path) as server:
        yield server


def test_schemathesis_finds_no_server_error(served: ServedApi) -> None:
    import schemathesis
    from hypothesis import strategies as st
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    base = f"http://127.0.0.1:{served.port}"
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    who = st.sampled_from([
        agent(AGENT), agent(None), service(AGENT), service(None),
        {"Authorization": f"Bearer {requester_token(served.secret, served.requester)}"},
        {"Authorization": "Bearer nonsense"},
    ])
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        documented = set(operation.definition.raw["responses"])
        variants = [operation.as_strategy(), operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)]
        if "{number}" in operation.path:  # a real case, so the actions get past the lookup
            variants.append(operation.as_strategy(path_parameters={"number": "SAG-000002"}))
        for strategy in variants:
            # failures are collected and reported together below; an operation with nothing to
            # make invalid (GET /healthz) has no negative cases
            with contextlib.suppress(AssertionError, Unsatisfiable):
                fuzz(strategy, who, base, operation.label, documented, failures)
    assert not failures, "\n".join(sorted(set(failures))[:20])


def fuzz(strategy: Any, who: Any, base: str, label: str, documented: set[str], failures: list[str]) -> None:
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy, headers=who)
    def run(case: Any, headers: dict[str, str]) -> None:
        response = case.call(base_url=base, headers=headers)
        server_error = response.status_code >= 500 and response.status_code != 503
        if server_error or str(response.status_code) not in documented:
            failures.append(f"{label}: {response.status_code} {response.text[:200]}")
            raise AssertionError(failures[-1])

    run()
