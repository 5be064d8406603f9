"""Data protection (issue 21): the retention periods with a frozen clock, two runners at once,
the attachment files on disk, a person's export and erasure, the address they can no longer
register with, the bytes gone from SQLite's files, the audit trail, the HTTP API, and an
export's memory. On SQLite and PostgreSQL, except what is about SQLite's files.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from gateway import lifecycle, privacy
from gateway.app import App, open_app
from gateway.clock import FrozenClock
from gateway.datastore import DataStore
from gateway.errors import ConfigError, NotFound, Refused
from gateway.http.api import build_api
from gateway.jobs import run_timed_jobs
from gateway.model import CommentDraft, Source, StoredAttachment
from gateway.retention import sweep_blobs
from gateway.settings import load_settings
from gateway.tokens import api_token_hash
from store import api_tokens, queries, writes
from store import retention as store_retention
from store.inbox import IncomingMail
from store.person import ERASED_TEXT
from store.transact import run_in
from tests.cli_proc import run_cli
from tests.conftest import ADDRESS, ROOT, add_user, build_mail, detail, make_settings
from tests.daemon_proc import DaemonProcess

JENS = "jens@kunde.example"
METTE = "mette@kunde.example"
AGENT = "anne@sa.example"
ORG = "Kunde A/S"
SUBJECT = "Hemmelig sag om Quetzalcoatl-fakturaen"
BODY = "Mit CPR-nummer er ikke noget I skal vide, men Xylofonbetaling 4711 er forkert."
ATTACHMENT = "Lønseddel-Zanzibar-2026.pdf"
FILE_BYTES = b"%PDF-1.4 " + bytes(range(256)) * 8 + b"Kaleidoskop-indhold-9931"
SECRETS = (SUBJECT, "Xylofonbetaling", ATTACHMENT, "Kaleidoskop-indhold-9931")
AGENT_TOKEN = "gwt_privacy-agent-token-0123456789"


async def ingest(app: App, raw: bytes, sender: str | None = None) -> Any:
    return (await app.ingest_now(IncomingMail(raw, "pipe", sender, (ADDRESS,))))[1]


def secret_mail(sender: str = JENS, **extra: Any) -> bytes:
    return build_mail(sender, SUBJECT, BODY, attachments=[(ATTACHMENT, FILE_BYTES, "application/pdf")], **extra)


async def rows(app: App, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    async with app.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]


async def send_all(app: App) -> None:
    while await app.sender.run_once():
        pass


def done(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in actions if a.get("done")]


def blob_path(app: App, data: bytes = FILE_BYTES) -> Path:
    return app.blobs.path(hashlib.sha256(data).hexdigest())


# --- retention ------------------------------------------------------------------------------------------


async def test_each_retention_period_with_a_frozen_clock(tmp_path: Path, clock: FrozenClock) -> None:
    settings = make_settings(tmp_path, retention={"blob_grace_s": 0})
    async with open_app(settings, clock=clock) as app:
        start = clock.now()
        await add_user(app, AGENT, "Anne Agent", agent=True)
        assert (await ingest(app, secret_mail())).case == "SAG-000001"
        away = await ingest(app, build_mail(JENS, "Fravær", "Jeg er væk", headers={"Auto-Submitted": "auto-replied"}))
        nofrom = await ingest(app, b"To: " + ADDRESS.encode() + b"\r\nSubject: " + SUBJECT.encode() +
                              b"\r\nMessage-ID: <q@x.example>\r\n\r\nUden afsender\r\n")
        assert (away.action.value, nofrom.action.value) == ("ignored", "quarantined")
        await lifecycle.close(app.desk, "SAG-000001", AGENT, "løst")
        await send_all(app)  # the receipt and "lukket", sent at the start

        async def on_day(days: int, dry_run: bool = False) -> list[dict[str, Any]]:
            clock.set(start + timedelta(days=days))
            return [a for a in await run_timed_jobs(app.jobs, dry_run=dry_run) if a["job"] != "close_done_cases"]

        assert done(await on_day(29)) == []
        preview = await on_day(31, dry_run=True)
        assert {(a["job"], a.get("inbound_id")) for a in preview} == {
            ("set_aside_mail", away.inbound_id), ("set_aside_mail", nofrom.inbound_id),
            ("sent_mail", None)} and not done(preview)
        assert await rows(app, "SELECT count(*) FROM inbound_raw") == [(3,)]  # a dry run changes nothing
        acts = done(await on_day(31))
        assert Counter(a["job"] for a in acts) == {"set_aside_mail": 2, "sent_mail": 2}
        set_aside = await rows(app, "SELECT state, subject, from_addr, reason FROM inbound_mail WHERE id IN (:a, :b)",
                               a=away.inbound_id, b=nofrom.inbound_id)
        assert set_aside == [("expired", None, None, None)] * 2
        assert await rows(app, "SELECT inbound_id FROM inbound_raw") == [(1,)]
        assert await app.inbox.reprocess(nofrom.inbound_id) == 0  # nothing left to process
        for context, name in await rows(app, "SELECT context, recipient_name FROM outbox"):
            context = json.loads(context) if isinstance(context, str) else context
            assert "case_subject" not in context and name == "" and context["case_number"] == "SAG-000001"

        assert done(await on_day(89)) == []
        acts = done(await on_day(91))
        assert [(a["job"], a["case"], a["inbound_ids"]) for a in acts] == [("raw_mail", "SAG-000001", [1])]
        assert await rows(app, "SELECT count(*) FROM inbound_raw") == [(0,)]
        case = await detail(app, "SAG-000001")
        assert case["subject"] == SUBJECT and BODY in case["comments"][0]["visible_text"]
        assert blob_path(app).exists()

        assert done(await on_day(1825)) == []
        acts = done(await on_day(1827))
        sha = hashlib.sha256(FILE_BYTES).hexdigest()
        assert [(a["job"], a.get("case") or a.get("sha256")) for a in acts] == [
            ("closed_cases", "SAG-000001"), ("blob_files", sha)]
        assert not blob_path(app).exists()  # gone from the disk
        case = await detail(app, "SAG-000001")
        assert (case["subject"], case["comments"], case["parties"], case["assignee"]) == ("", [], [], None)
        assert case["requester"]["email"] == store_retention.ANONYMOUS and case["status"] == "lukket"
        assert [h["to"] for h in case["history"]] == ["registreret", "lukket"]
        assert {h["by"] for h in case["history"]} == {""} and case["created_at"] == start.isoformat()
        assert await rows(app, "SELECT subject, from_addr, state FROM inbound_mail WHERE id = 1") == [
            (None, None, "expired")]
        assert done(await on_day(1900)) == []  # idempotent


async def test_retention_zero_keeps_data_and_the_old_key_is_refused(tmp_path: Path, clock: FrozenClock) -> None:
    settings = make_settings(tmp_path, retention={"raw_mail_days": 0, "closed_case_days": 0})
    async with open_app(settings, clock=clock) as app:
        await add_user(app, AGENT, "Anne Agent", agent=True)
        await ingest(app, secret_mail())
        await lifecycle.close(app.desk, "SAG-000001", AGENT)
        clock.advance(days=10_000)
        assert not [a for a in done(await run_timed_jobs(app.jobs)) if a["job"] in ("raw_mail", "closed_cases")]
        assert await rows(app, "SELECT count(*) FROM inbound_raw") == [(1,)]
    config = tmp_path / "old.toml"
    config.write_text("[storage]\nraw_retention_days = 365\n")
    with pytest.raises(ConfigError, match=r"storage.raw_retention_days: renamed to retention.raw_mail_days"):
        load_settings(config, env={})
    with pytest.raises(ConfigError, match="retention.sent_mail_days: must not be negative"):
        load_settings(None, env={"GATEWAY_RETENTION__SENT_MAIL_DAYS": "-1", "GATEWAY_API__ENABLED": "false"})


async def test_two_nodes_at_once_delete_each_thing_once(tmp_path: Path) -> None:
    """Two `gateway maintenance` processes at the same moment against one store (two cron jobs
    on two nodes): every item is done by exactly one of them."""
    proc = DaemonProcess(tmp_path, retention={"blob_grace_s": 0})
    start = FrozenClock().now()
    async with open_app(proc.settings, clock=FrozenClock(start)) as app:
        await add_user(app, AGENT, "Anne Agent", agent=True)
        for i in range(6):
            attachment = [(f"bilag-{i}.pdf", FILE_BYTES + bytes([i]), "application/pdf")]
            await ingest(app, build_mail(f"kunde{i}@kunde.example", f"Sag {i}", "Tekst", attachments=attachment))
            await ingest(app, build_mail(f"kunde{i}@kunde.example", "Fravær", "Væk",
                                         headers={"Auto-Submitted": "auto-replied"}))
            await lifecycle.close(app.desk, f"SAG-{i + 1:06d}", AGENT)
        await send_all(app)
        files = [blob_path(app, FILE_BYTES + bytes([i])) for i in range(6)]
    at = (start + timedelta(days=6 * 365)).isoformat()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}

    def maintenance(*extra: str) -> list[dict[str, Any]]:
        rc, out, err = run_cli(["--config", str(proc.config_path), "maintenance", "--at", at, "--json", *extra],
                               env, ROOT)
        assert rc == 0, err
        return json.loads(out)  # type: ignore[no-any-return]

    def key(action: dict[str, Any]) -> tuple[Any, ...]:
        return action["job"], action.get("case") or action.get("inbound_id") or action.get("outbox_id") \
            or action.get("sha256")

    preview: dict[str, set[Any]] = {}
    for job, item in map(key, maintenance("--dry-run")):
        preview.setdefault(job, set()).add(item)
    assert {job: len(items) for job, items in preview.items()} == {"closed_cases": 6, "set_aside_mail": 6,
                                                                   "sent_mail": 12}
    first, second = await asyncio.gather(asyncio.to_thread(maintenance), asyncio.to_thread(maintenance))
    both = [key(a) for a in done(first) + done(second)]
    assert sorted(both) == sorted(set(both)), "something was done twice"
    by_job: dict[str, set[Any]] = {}
    for job, item in both:
        by_job.setdefault(job, set()).add(item)
    assert by_job["closed_cases"] == preview["closed_cases"] and by_job["set_aside_mail"] == preview["set_aside_mail"]
    # A notification is pruned with its case, or by the sent-mail job when that came first: once either way.
    assert by_job.get("sent_mail", set()) <= preview["sent_mail"]
    assert by_job.get("raw_mail", set()) <= preview["closed_cases"] and len(by_job["blob_files"]) == 6
    async with open_app(proc.settings, clock=FrozenClock(start)) as app:
        assert await rows(app, "SELECT count(*) FROM outbox WHERE pruned_at IS NULL") == [(0,)]
        assert await rows(app, "SELECT count(*) FROM inbound_raw") == [(0,)]
        assert await rows(app, "SELECT count(*) FROM support_case WHERE anonymised_at IS NULL") == [(0,)]
    assert not any(f.exists() for f in files)
    assert done(maintenance()) == []


# --- the attachment files -------------------------------------------------------------------------------


class PutBetweenChecks:
    """The store's transactions, with an ingest storing a blob again between the sweep's first
    reference check and the move that comes after it (the race `sweep_blobs` must survive)."""

    def __init__(self, app: App, data: bytes) -> None:
        self._tx, self._app, self._data, self.checks = app.tx, app, data, 0

    async def read(self, fn: Any, *args: Any) -> Any:
        result = await self._tx.read(fn, *args)
        if fn is store_retention.referenced:
            self.checks += 1
            if self.checks == 1:
                self._app.blobs.put(self._data)
        return result


async def test_blob_sweep_keeps_shared_named_fresh_and_concurrently_stored_files(app: App) -> None:
    await add_user(app, JENS, "Jens Jensen")
    await add_user(app, METTE, "Mette Madsen")
    shared, lonely, fresh, racing = (b"shared" * 100, b"lonely" * 100, b"fresh" * 100, b"racing" * 100)
    shas = {name: app.blobs.put(data) for name, data in
            (("shared", shared), ("lonely", lonely), ("fresh", fresh), ("racing", racing))}
    old = time.time() - 7200
    for name in ("shared", "lonely", "racing"):
        os.utime(app.blobs.path(shas[name]), (old, old))
    for who, name in ((JENS, "shared"), (METTE, "shared"), (JENS, "lonely")):
        await add_comment(app, who, [StoredAttachment(f"{name}.bin", 600, shas[name], "application/octet-stream")])
    data = app.data_store()
    cutoff = time.time() - 3600
    assert await sweep_blobs(data, None, cutoff) == [{"job": "blob_files", "sha256": shas["racing"], "done": True}]

    await privacy.erase_person(data, JENS, "cli:test", "art. 17")  # the lonely file goes; the shared one stays
    assert not app.blobs.exists(shas["lonely"]) and app.blobs.exists(shas["shared"])
    await privacy.erase_person(data, METTE, "cli:test", "art. 17")
    assert not app.blobs.exists(shas["shared"])
    assert app.blobs.exists(shas["fresh"])  # nobody names it, but it is younger than the grace

    # Stored again while the sweep runs: `put` finds the file, touches it, and it must survive.
    app.blobs.put(racing)
    os.utime(app.blobs.path(shas["racing"]), (old, old))
    racer = PutBetweenChecks(app, racing)
    raced = DataStore(racer, app.engine, app.blobs, app.clock)  # type: ignore[arg-type]
    assert await sweep_blobs(raced, [shas["racing"]], cutoff) == [] and racer.checks == 2
    assert app.blobs.get(shas["racing"]) == racing
    os.utime(app.blobs.path(shas["racing"]), (old, old))
    assert await sweep_blobs(data, [shas["racing"]], cutoff) != []  # without the race it goes
    assert list(app.blobs.root.glob(".gc-*")) == []


async def add_comment(app: App, email: str, files: list[StoredAttachment], text_: str = "tekst") -> None:
    async with app.sessions() as session, session.begin():
        user = await run_in(session, queries.require_user, email)
        number = await run_in(session, writes.next_case_number, "SAG-", 6)
        case_id = await run_in(session, writes.create_case, number, "Emne", queries.user_ref(user), app.clock.now())
        await run_in(session, writes.add_comment, case_id, user.id,
                     CommentDraft(text_, text_, None, tuple(files)), Source.EMAIL, app.clock.now())


# --- a person's export and erasure ---------------------------------------------------------------------


async def seeded(app: App) -> None:
    await add_user(app, JENS, "Jens Jensen", ORG)
    await add_user(app, METTE, "Mette Madsen", ORG)
    await add_user(app, AGENT, "Anne Agent", agent=True)
    assert (await ingest(app, secret_mail())).case == "SAG-000001"
    await lifecycle.share(app.desk, "SAG-000001", METTE, JENS)
    await lifecycle.reply(app.desk, "SAG-000001", "Vi kigger på det.", AGENT,
                          [lifecycle.NewAttachment("svar.txt", "text/plain", b"Agentens svarbilag")])
    await ingest(app, build_mail(JENS, f"SV: [SAG-000001] {SUBJECT}", "Xylofonbetaling er stadig forkert.",
                                 attachments=[(ATTACHMENT, FILE_BYTES, "application/pdf")]))
    await lifecycle.note(app.desk, "SAG-000001", "Intern note om kunden", AGENT)
    await send_all(app)


def read_zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        return {name: zf.read(name) for name in zf.namelist()}


def check_manifest(files: dict[str, bytes]) -> dict[str, Any]:
    manifest = json.loads(files["manifest.json"])
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == set(files) - {"manifest.json"}
    for name, entry in listed.items():
        assert (entry["size"], entry["sha256"]) == (len(files[name]), hashlib.sha256(files[name]).hexdigest())
    return manifest  # type: ignore[no-any-return]


@pytest.mark.parametrize("policy", ["register", "reject"])
async def test_export_erase_export_then_the_address_mails_again(tmp_path: Path, clock: FrozenClock,
                                                                policy: str) -> None:
    settings = make_settings(tmp_path, policy={"unknown_sender": policy})
    async with open_app(settings, clock=clock) as app:
        await seeded(app)
        data = app.data_store()
        first = await privacy.export_person(data, JENS, tmp_path / "before.zip", "cli:dpo", "art. 15 request")
        assert {k: first[k] for k in ("cases", "comments", "attachments", "mails", "raw_mails")} == {
            "cases": 1, "comments": 3, "attachments": 3, "mails": 2, "raw_mails": 2}
        files = read_zip(tmp_path / "before.zip")
        manifest = check_manifest(files)
        assert (manifest["address"], manifest["reason"], manifest["exported_by"]) == (JENS, "art. 15 request",
                                                                                       "cli:dpo")
        case = json.loads(files["cases/SAG-000001.json"])
        assert case["role"] == "requester" and case["case"]["subject"] == SUBJECT
        assert [c["author"] for c in case["comments"]] == [JENS, AGENT, JENS]  # the internal note is left out
        assert files["attachments/SAG-000001/1-1-" + ATTACHMENT] == FILE_BYTES
        assert any(name.endswith("-svar.txt") for name in files)
        assert json.loads(files["person.json"])["user"]["name"] == "Jens Jensen"
        assert {n["event"] for n in json.loads(files["notifications.json"])} >= {"receipt", "reply"}
        raw = [files[n] for n in files if n.startswith("mails/")]
        assert len(raw) == 2 and all(b"Xylofonbetaling" in r for r in raw)
        assert len(files[next(n for n in files if n.startswith("mails/"))]) == \
            (await rows(app, "SELECT length(raw) FROM inbound_raw ORDER BY inbound_id"))[0][0]

        survey = await privacy.erase_person(data, JENS, "cli:dpo", "art. 17 request", dry_run=True)
        assert survey["comments"] == 2 and survey["attachments"] == 2 and survey["mails"] == 2
        assert (await detail(app, "SAG-000001"))["subject"] == SUBJECT  # a dry run changes nothing
        erased = await privacy.erase_person(data, JENS, "cli:dpo", "art. 17 request")
        assert erased["files_deleted"] == 1 and not blob_path(app).exists()
        assert app.blobs.exists(hashlib.sha256(b"Agentens svarbilag").hexdigest())  # the agent's file stays

        await privacy.export_person(data, JENS, tmp_path / "after.zip", "cli:dpo", "was it erased?")
        after = read_zip(tmp_path / "after.zip")
        check_manifest(after)
        for name, content in after.items():
            if name == "audit.json":  # it tells of the erasure, with the reasons given
                continue
            for secret in (*SECRETS, "Jens Jensen"):
                assert secret.encode() not in content, (name, secret)
            # the address the export was asked for is named in its manifest and person.json only
            assert name in ("manifest.json", "person.json") or JENS.encode() not in content, name
        person = json.loads(after["person.json"])
        assert person["blocked"] and person["user"]["email"].startswith("slettet-")
        case = json.loads(after["cases/SAG-000001.json"])
        assert case["case"]["subject"] == ERASED_TEXT and case["case"]["status"] == "registreret"
        assert [c["visible_text"] for c in case["comments"] if c["mine"]] == [ERASED_TEXT] * 2
        assert [c["attachments"] for c in case["comments"] if c["mine"]] == [[], []]
        assert [m["state"] for m in json.loads(after["mails.json"])] == ["expired"] * 2
        assert {n["state"] for n in json.loads(after["notifications.json"])} <= {"sent", "cancelled"}
        assert not [n for n in after if n.startswith(("mails/", "attachments/SAG-000001/1-"))]
        assert [e["action"] for e in json.loads(after["audit.json"])] == ["export", "erase"]

        # The colleague keeps the case; notifications go to her, never to the erased person.
        await lifecycle.set_status(app.desk, "SAG-000001", "udfoert", AGENT)
        assert {r for (r,) in await rows(app, "SELECT recipient FROM outbox WHERE state = 'pending'")} == {METTE}

        # The erased address writes again: the unknown-sender policy, and no user is made.
        again = await ingest(app, build_mail(JENS, f"SV: [SAG-000001] {SUBJECT}", "Hej igen"))
        if policy == "register":
            assert (again.action.value, again.case) == ("quarantined", None) and "erased" in again.reason
        else:
            assert again.action.value == "rejected"
        assert await rows(app, "SELECT count(*) FROM app_user WHERE email = :e", e=JENS) == [(0,)]
        await privacy.allow_address(data, JENS, "cli:dpo", "the person asked to be a customer again")
        with pytest.raises(NotFound):
            await privacy.allow_address(data, JENS, "cli:dpo", "twice")
        anew = await ingest(app, build_mail(JENS, "Ny sag", "Jeg er tilbage"))
        if policy == "register":
            assert anew.action.value == "created" and (await detail(app, anew.case))["requester"]["email"] == JENS


async def test_erasure_refusals_and_an_address_that_never_became_a_user(tmp_path: Path, clock: FrozenClock) -> None:
    settings = make_settings(tmp_path, policy={"unknown_sender": "reject"})
    async with open_app(settings, clock=clock) as app:
        await add_user(app, AGENT, "Anne Agent", agent=True)
        data = app.data_store()
        with pytest.raises(Refused, match="agent"):
            await privacy.erase_person(data, AGENT, "cli:dpo", "no")
        with pytest.raises(lifecycle.InvalidInput, match="reason"):
            await privacy.erase_person(data, JENS, "cli:dpo", "  ")
        with pytest.raises(NotFound, match="nothing is stored"):
            await privacy.erase_person(data, JENS, "cli:dpo", "art. 17")
        rejected = await ingest(app, secret_mail())
        assert rejected.action.value == "rejected"
        erased = await privacy.erase_person(data, JENS, "cli:dpo", "art. 17")
        assert erased["user"] is False and erased["mails"] == 1 and erased["notifications_cancelled"] == 1
        assert await rows(app, "SELECT state, from_addr, subject FROM inbound_mail") == [("expired", None, None)]
        assert await rows(app, "SELECT state, recipient FROM outbox") == [("cancelled", "")]
        (tmp_path / "x.zip").write_bytes(b"")
        with pytest.raises(Refused, match="exists"):
            await privacy.export_person(data, JENS, tmp_path / "x.zip", "cli:dpo", "again")


@pytest.mark.sqlite_only
async def test_erased_bytes_are_gone_from_the_database_files(app: App) -> None:
    """Grep the SQLite file and its WAL, byte for byte, for what was erased — while the store is
    open (closing it checkpoints and removes the WAL, which would hide a leftover)."""
    await seeded(app)
    await add_user(app, "ole@andet.example", "Ole")
    await ingest(app, build_mail("ole@andet.example", "Oles egen sag", "Oles tekst"))  # someone else's stays
    db = Path(app.engine.url.database or "")

    in_mail = base64.b64encode(FILE_BYTES)[:60].decode()  # the attachment as the raw mail carries it
    wanted = (SUBJECT, "Xylofonbetaling", ATTACHMENT, "Jens Jensen", in_mail, "Oles tekst")

    def found() -> set[str]:
        blob = db.read_bytes() + (Path(f"{db}-wal").read_bytes() if Path(f"{db}-wal").exists() else b"")
        return {s for s in wanted if s.encode() in blob}

    assert found() == set(wanted)  # the search finds them while they are there
    async with app.engine.connect() as conn:
        assert (await conn.execute(text("PRAGMA secure_delete"))).scalar() == 1
    result = await privacy.erase_person(app.data_store(), JENS, "cli:dpo", "art. 17")
    assert result["wal_truncated"] is True
    assert found() == {"Oles tekst"}
    assert not any(FILE_BYTES[-24:] in p.read_bytes() for p in app.blobs.root.rglob("*") if p.is_file())


# --- the audit trail and the API --------------------------------------------------------------------


async def test_audit_lists_privacy_actions_and_agent_actions_newest_first(app: App, clock: FrozenClock) -> None:
    await seeded(app)
    data = app.data_store()
    clock.advance(minutes=1)
    await privacy.export_person(data, JENS, app.settings.path("e.zip"), AGENT, "art. 15")
    clock.advance(minutes=1)
    await privacy.erase_person(data, JENS, "cli:dpo", "art. 17", via=None)
    clock.advance(minutes=1)
    await privacy.allow_address(data, JENS, "cli:dpo", "asked again")
    entries = await privacy.audit_list(data)
    assert [(e["action"], e["actor"]) for e in entries[:3]] == [("allow", "cli:dpo"), ("erase", "cli:dpo"),
                                                               ("export", AGENT)]
    assert entries[1]["subject"] == JENS and entries[1]["reason"] == "art. 17"
    history = [(e["action"], e["case"]) for e in entries[3:]]
    assert ("note", "SAG-000001") in history and ("reply", "SAG-000001") in history
    ats = [e["at"] for e in entries]
    assert ats == sorted(ats, reverse=True)
    assert len(await privacy.audit_list(data, limit=2)) == 2
    older = await privacy.audit_list(data, before=clock.now() - timedelta(seconds=90))
    assert [e["action"] for e in older if e["source"] == "audit"] == ["export"]


async def test_api_erase_export_and_allow_are_for_agents(app: App, tmp_path: Path) -> None:
    await seeded(app)
    async with app.sessions() as session, session.begin():
        agent = await run_in(session, queries.require_user, AGENT)
        await run_in(session, api_tokens.add, api_tokens.AGENT, api_token_hash(AGENT_TOKEN), app.clock.now(),
                     agent.id)
    bearer = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    transport = httpx.ASGITransport(app=build_api(app.http))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as api:
        token = (await api.post("/users/token", json={"email": JENS}, headers=bearer)).json()["token"]
        as_jens = {"Authorization": f"Bearer {token}"}
        assert (await api.post("/users/erase", json={"email": JENS, "reason": "x"}, headers=as_jens)).status_code == 403
        assert (await api.post("/users/erase", json={"email": JENS}, headers=bearer)).status_code == 422
        dry = await api.post("/users/erase", json={"email": JENS, "reason": "art. 17", "dry_run": True}, headers=bearer)
        assert dry.status_code == 200 and dry.json()["comments"] == 2
        exported = await api.post("/users/export", json={"email": JENS, "reason": "art. 15"}, headers=bearer)
        assert exported.status_code == 200 and exported.headers["content-type"] == "application/zip"
        (tmp_path / "api.zip").write_bytes(exported.content)
        assert SUBJECT.encode() in read_zip(tmp_path / "api.zip")["cases/SAG-000001.json"]
        erased = await api.post("/users/erase", json={"email": JENS, "reason": "art. 17"}, headers=bearer)
        assert erased.status_code == 200 and erased.json()["files_deleted"] == 1
        assert (await api.get("/cases/SAG-000001", headers=as_jens)).status_code == 401  # the token went too
        allowed = await api.post("/users/allow", json={"email": JENS, "reason": "asked"}, headers=bearer)
        assert allowed.json() == {"email": JENS, "blocked": False}
        assert (await api.post("/users/allow", json={"email": JENS, "reason": "x"}, headers=bearer)).status_code == 404
    audit = await privacy.audit_list(app.data_store(), limit=3)
    assert [(e["action"], e["actor"]) for e in audit] == [("allow", AGENT), ("erase", AGENT), ("export", AGENT)]


# --- an export's memory -----------------------------------------------------------------------------


PEAK = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); " \
       "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"


def peak_rss_kb(*argv: str) -> int:
    """The peak resident memory of `gateway ARGV` in a process of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    out = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "gateway", *argv], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=600).stdout
    return int(out.strip().splitlines()[-1])


@pytest.mark.sqlite_only
async def test_an_export_of_hundreds_of_megabytes_keeps_memory_bounded(tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path)  # only its configuration file
    big = 24 * 1024 * 1024
    async with open_app(proc.settings, clock=FrozenClock()) as app:
        await add_user(app, JENS, "Jens Jensen")
        files = []
        for i in range(12):  # 288 MB of attachments
            sha = app.blobs.put(bytes([i]) * 64 + os.urandom(big - 64))
            files.append(StoredAttachment(f"scan-{i}.bin", big, sha, "application/octet-stream"))
        await add_comment(app, JENS, files)
        raw = build_mail(JENS, "Stor mail", "x", attachments=[("stor.bin", os.urandom(16 << 20), "application/pdf")])
        await app.accept(IncomingMail(raw, "pipe", JENS, (ADDRESS,)))  # 22 MB raw, still queued
    config = ["--config", str(proc.config_path)]
    baseline = peak_rss_kb(*config, "users", "list", "--json")
    out = tmp_path / "export.zip"
    peak = await asyncio.to_thread(peak_rss_kb, *config, "users", "export", JENS, "--out", str(out), "--reason", "t")
    assert out.stat().st_size > 12 * big
    with zipfile.ZipFile(out) as zf:
        assert len([n for n in zf.namelist() if n.startswith("attachments/")]) == 12
        assert zf.getinfo("mails/1.eml").file_size == len(raw)
    print(f"peak RSS: export {peak // 1024} MB, listing {baseline // 1024} MB")
    assert peak - baseline < 40 * 1024, f"export peaked at {peak // 1024} MB, a listing at {baseline // 1024} MB"


async def test_a_file_another_node_has_set_aside_is_not_a_leftover(app: App) -> None:
    """Two nodes sweep at once: one has just moved a named file aside to check it again, the
    other clears leftovers. The aside keeps the content's old mtime, but it is not a leftover:
    taking it would lose a file a comment names (CI, stop 26: FileNotFoundError on put-back)."""
    sha = app.blobs.put(b"kept" * 100)
    old = time.time() - 7200
    os.utime(app.blobs.path(sha), (old, old))
    aside = app.blobs.set_aside(sha)
    assert aside is not None and aside.stat().st_mtime < time.time() - 3600
    assert app.blobs.stale_temporaries(time.time() - 3600) == []  # moved a moment ago
    app.blobs.put_back(aside, sha)
    assert app.blobs.exists(sha)
    assert app.blobs.stale_temporaries(time.time() + 1) == []  # nothing left aside


async def test_a_sweep_dated_in_the_future_leaves_files_in_progress_and_clears_old_leftovers(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """`maintenance --at` a date years ahead dates its cut-off there; a temporary file another
    process is writing (or has just set aside) is still no leftover: only real time ages them."""
    from gateway import retention

    app.blobs.put(b"something" * 10)
    in_progress = [app.blobs.root / ".tmp-writing", app.blobs.root / f".gc-{'0' * 64}-{'1' * 32}"]
    for path in in_progress:
        path.write_bytes(b"half")
    years_ahead = time.time() + 6 * 365 * 86400
    await sweep_blobs(app.data_store(), None, years_ahead)
    assert all(path.exists() for path in in_progress)
    monkeypatch.setattr(retention, "LEFTOVER_S", -60.0)  # as if they were an hour and more old
    await sweep_blobs(app.data_store(), None, years_ahead)
    assert not any(path.exists() for path in in_progress)
