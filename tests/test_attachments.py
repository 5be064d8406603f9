"""Attachments out (issue 17, item 12): `GET /cases/{number}/attachments/{id}` for whoever may
see the case and the comment, as a download no browser renders or caches, and
`gateway cases attachment NUMBER ID --out FILE`; every JSON answer of the API is `nosniff`
and `no-store` too. The API in-process (httpx over ASGI), the CLI as the console script runs it."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from gateway.app import App, open_app
from gateway.clock import FrozenClock
from gateway.http.api import build_api
from store import queries
from store.inbox import IncomingMail
from store.models import Attachment, Comment
from store.transact import run_in
from tests.cli_proc import run_cli
from tests.conftest import ADDRESS, ROOT, build_mail
from tests.daemon_proc import DaemonProcess
from tests.test_api import COLLEAGUE, OUTSIDER, REQUESTER, agent, requester, seed, settings_for

NAME = 'Faktura "marts" æøå.pdf'
PDF = b"%PDF-1.4\n<script>alert(1)</script>\n%%EOF\n"
SECRET = b"only for agents"
PRIVATE = {"x-content-type-options": "nosniff", "cache-control": "private, no-store"}


async def _case_with_files(app: App) -> tuple[int, int, int]:
    """SAG-000004 by mail from the requester with a file; an internal note's file on it; a file
    on SAG-000003, the outsider's case. Their attachment ids."""
    raw = build_mail(REQUESTER, "Faktura", attachments=[(NAME, PDF, "application/pdf")])
    await app.ingest_now(IncomingMail(raw, "pipe", None, (ADDRESS,)))
    async with app.sessions() as session, session.begin():
        case = await run_in(session, queries.require_case, "SAG-000004")
        other = await run_in(session, queries.require_case, "SAG-000003")
        ids = []
        for case_id, public, data in ((case.id, False, SECRET), (other.id, True, b"other")):
            comment = Comment(case_id=case_id, created_at=app.clock.now(), source="agent", public=public,
                              visible_text="x")
            session.add(comment)
            await session.flush()
            sha = app.blobs.put(data)
            row = Attachment(comment_id=comment.id, name="intern.txt", size=len(data), sha256=sha,
                             content_type="text/html")
            session.add(row)
            await session.flush()
            ids.append(row.id)
    detail = (await _detail(app, "SAG-000004"))["comments"][0]["attachments"][0]
    return detail["id"], ids[0], ids[1]


async def _detail(app: App, number: str) -> dict:  # type: ignore[type-arg]
    async with app.sessions() as session:
        return await run_in(session, queries.case_detail, number)


@pytest.fixture
async def gw(tmp_path: Path, clock: FrozenClock) -> AsyncIterator[App]:
    async with open_app(settings_for(tmp_path), clock=clock) as app:
        await seed(app)
        yield app


@pytest.fixture
async def client(gw: App) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_api(gw.http)), base_url="http://gw") as c:
        yield c


async def test_an_attachment_is_a_download_for_who_may_see_it(client: httpx.AsyncClient, gw: App) -> None:
    public, internal, elsewhere = await _case_with_files(gw)
    url = "/cases/SAG-000004/attachments/{}"
    for headers in (agent(None), requester(gw, REQUESTER)):
        r = await client.get(url.format(public), headers=headers)
        assert r.status_code == 200 and r.content == PDF
        assert r.headers["content-type"] == "application/octet-stream"
        assert {k: r.headers[k] for k in PRIVATE} == PRIVATE
        assert r.headers["content-disposition"] == (
            "attachment; filename=\"Faktura _marts_ aeoea.pdf\"; "
            "filename*=UTF-8''Faktura%20%22marts%22%20%C3%A6%C3%B8%C3%A5.pdf")
    assert (await client.get(url.format(internal), headers=agent(None))).content == SECRET
    assert (await client.get(url.format(internal), headers=requester(gw, REQUESTER))).status_code == 404
    shared = await client.post("/cases/SAG-000004/share", headers=agent(), json={"email": COLLEAGUE})
    assert shared.status_code == 200, shared.text
    assert (await client.get(url.format(public), headers=requester(gw, COLLEAGUE))).status_code == 200
    assert (await client.get(url.format(public), headers=requester(gw, OUTSIDER))).status_code == 403
    assert (await client.get(url.format(public))).status_code == 401
    for bad in (elsewhere, 999, 2**63, 2**70):  # another case's file, none, beyond any row
        r = await client.get(url.format(bad), headers=agent(None))
        assert r.status_code == 404 and r.headers["x-content-type-options"] == "nosniff", (bad, r.text)
    assert (await client.get(f"/cases/SAG-999999/attachments/{public}", headers=agent(None))).status_code == 404


async def test_a_missing_blob_is_404_not_500(client: httpx.AsyncClient, gw: App) -> None:
    public, _, _ = await _case_with_files(gw)
    row = (await _detail(gw, "SAG-000004"))["comments"][0]["attachments"][0]
    gw.blobs.path(row["sha256"]).unlink()
    r = await client.get(f"/cases/SAG-000004/attachments/{public}", headers=agent(None))
    assert r.status_code == 404 and "missing" in r.json()["error"]


async def test_every_json_answer_is_nosniff_and_no_store(client: httpx.AsyncClient, gw: App) -> None:
    answers = [await client.get("/cases", headers=agent(None)), await client.get("/cases/SAG-000001", headers=agent(None)),
               await client.get("/cases"), await client.get("/nowhere"), await client.get("/openapi.json"),
               await client.get("/metrics"), await client.post("/cases/SAG-000001/status", headers=agent(),
                                                               json={"status": "bogus"}),
               await client.post("/cases/SAG-000001/note", headers=agent(), content=b"{", )]
    assert [r.status_code for r in answers] == [200, 200, 401, 404, 200, 200, 422, 400]
    for r in answers:
        assert {k: r.headers.get(k) for k in PRIVATE} == PRIVATE, (r.request.url, dict(r.headers))


@pytest.mark.parametrize(("name", "fallback"), [
    ("faktura.pdf", "faktura.pdf"), ("Årsopgørelse 2025.pdf", "Arsopgoerelse 2025.pdf"),
    ('a"b\\c;d\r\nX-Evil: 1.txt', "a_b_c_d__X-Evil_ 1.txt"), ("日本.txt", "txt"),
    ("", "attachment"), ("...", "attachment"),
])
def test_the_download_name_is_safe_in_a_header(name: str, fallback: str) -> None:
    from gateway.attachments import ascii_name, download_headers

    headers = download_headers(name)
    value = headers["Content-Disposition"]
    assert "\r" not in value and "\n" not in value and value.isascii()
    assert ascii_name(name) == fallback
    assert unquote(value.split("filename*=UTF-8''", 1)[1]) == name


async def test_cli_saves_an_attachment(tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path)  # its configuration only: no daemon needed
    async with open_app(proc.settings, clock=FrozenClock(), subprocess_parse=False) as app:
        raw = build_mail(REQUESTER, "Faktura", attachments=[(NAME, PDF, "application/pdf")])
        await app.ingest_now(IncomingMail(raw, "pipe", None, (ADDRESS,)))
        [file] = (await _detail(app, "SAG-000001"))["comments"][0]["attachments"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    out = tmp_path / "saved.pdf"

    def cli(*args: str) -> tuple[int, str, str]:
        return run_cli(["--config", str(proc.config_path), *args], env, ROOT)

    rc, stdout, err = await asyncio.to_thread(cli, "cases", "attachment", "SAG-000001", str(file["id"]), "--out",
                                              str(out))
    assert rc == 0, err
    assert out.read_bytes() == PDF and str(out) in stdout and not list(tmp_path.glob(".*.part"))
    rc, _, err = await asyncio.to_thread(cli, "cases", "attachment", "SAG-000001", "99", "--out", str(out))
    assert rc == 67 and err.strip() == "gateway: no attachment 99 on SAG-000001"
    rc, shown, err = await asyncio.to_thread(cli, "cases", "show", "SAG-000001", "--json")
    assert rc == 0 and json.loads(shown)["comments"][0]["attachments"][0]["id"] == file["id"]
