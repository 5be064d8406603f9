"""The inbox worker end to end against a real SQLite file: cases, comments, threading, rules."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.pool import Pool

from gateway.app import App, open_app
from gateway.apply import handle_all
from gateway.errors import ConfigError
from gateway.model import Outcome, Status
from gateway.worker import SMALL_MAIL
from store import cases, queries, writes
from store.engine import check_durability, make_engine, sync_sqlite_engine
from store.inbox import IncomingMail, claim_mails, read_raw, read_raws
from store.transact import run_in
from tests.conftest import ADDRESS, MailBuilder, add_user, detail, make_settings, outbox, worker_of


async def ingest(app: App, raw: bytes, to: tuple[str, ...] = (ADDRESS,)):
    accepted, result = await app.ingest_now(IncomingMail(raw, "test", "sender@borger.example", to))
    return result


async def set_status(app: App, number: str, status: Status, assignee: str | None = None) -> None:
    async with app.sessions() as session, session.begin():
        case = await run_in(session, queries.require_case, number)
        if assignee:
            agent = await run_in(session, queries.require_user, assignee)
            await run_in(session, cases.assign, case.id, agent.id, app.clock.now())
        await run_in(session, writes.set_status, case.id, status, app.clock.now(), None, "test")


async def test_new_mail_opens_case_with_receipt(app: App, mail: MailBuilder) -> None:
    result = await ingest(app, mail(attachments=[("faktura.pdf", b"%PDF-1.4 data", "application/pdf")]))
    assert result.action is Outcome.CREATED and result.case == "SAG-000001"
    case = await detail(app, "SAG-000001")
    assert case["status"] == "registreret"
    assert case["requester"]["email"] == "jens@borger.example"
    assert case["subject"] == "Spørgsmål om min faktura"
    [comment] = case["comments"]
    assert "spørgsmål om min faktura" in comment["visible_text"]
    assert comment["attachments"][0]["name"] == "faktura.pdf"
    assert app.blobs.get(comment["attachments"][0]["sha256"]) == b"%PDF-1.4 data"
    [receipt] = await outbox(app)
    assert receipt["event"] == "receipt" and receipt["recipients"] == ["jens@borger.example"]
    assert case["history"][0]["to"] == "registreret"


async def test_item36_same_mail_twice_is_one_case(app: App, mail: MailBuilder) -> None:
    raw = mail()
    first = await ingest(app, raw)
    accepted, second = await app.ingest_now(IncomingMail(raw, "imap:other", None, (ADDRESS,)))
    assert first.action is Outcome.CREATED
    assert accepted.duplicate and second is None
    # the same mail delivered via another path with trace headers added is still the same mail
    relayed = b"Received: from mx by gw; Mon, 5 Jan 2026 10:00:00 +0000\r\n" + raw
    accepted, _ = await app.ingest_now(IncomingMail(relayed, "imap:x", None, (ADDRESS,)))
    assert accepted.duplicate
    async with app.sessions() as session:
        assert len(await run_in(session, queries.list_cases, "all")) == 1


async def test_item34_same_message_id_other_content_is_another_mail(app: App, mail: MailBuilder) -> None:
    await ingest(app, mail(message_id="<fixed@borger.example>", body="Første"))
    result = await ingest(app, mail(message_id="<fixed@borger.example>", body="Anden, legitim"))
    assert result is not None and result.action is Outcome.CREATED


async def test_reply_to_receipt_threads_by_message_id(app: App, mail: MailBuilder) -> None:
    await ingest(app, mail())
    receipt_id = (await outbox(app))[0]["message_id"]
    result = await ingest(app, mail(subject="Re: noget helt andet", in_reply_to=receipt_id,
                                    body="Her er mere information.\n\nDen 5. jan. 2026 kl. 10.00 skrev "
                                         "Kundebetjening <kundebetjening@statens-adm.example>:\n> Tak for din henvendelse"))
    assert result.action is Outcome.COMMENTED and result.case == "SAG-000001"
    case = await detail(app, "SAG-000001")
    assert case["comments"][1]["visible_text"] == "Her er mere information."
    assert "Tak for din henvendelse" in case["comments"][1]["full_text"]


async def test_subject_tag_from_requester_threads(app: App, mail: MailBuilder) -> None:
    await ingest(app, mail())
    result = await ingest(app, mail(subject="SV: VS: Re: [SAG-000001] Spørgsmål om min faktura", body="Ny info"))
    assert result.action is Outcome.COMMENTED and result.case == "SAG-000001"


async def test_item54_item69_subject_tag_from_outsider_opens_own_case(app: App, mail: MailBuilder) -> None:
    await ingest(app, mail())
    receipt_id = (await outbox(app))[0]["message_id"]
    result = await ingest(app, mail(sender="mallory@angriber.example", in_reply_to=receipt_id,
                                    subject="Re: [SAG-000001] Spørgsmål om min faktura", body="Lad mig se sagen"))
    assert result.action is Outcome.CREATED and result.case == "SAG-000002"
    assert "not a party" in result.reason
    first = await detail(app, "SAG-000001")
    assert len(first["comments"]) == 1
    second = await detail(app, "SAG-000002")
    assert second["requester"]["email"] == "mallory@angriber.example"


async def test_reply_token_threads_and_forged_token_does_not(app: App, mail: MailBuilder) -> None:
    from gateway.tokens import reply_address

    await ingest(app, mail())
    secret = app.settings.mail.reply_token_secret
    good = reply_address(secret, ADDRESS, "SAG-000001")
    result = await ingest(app, mail(subject="Svar", to=good, body="Svar via token"), to=(good,))
    assert result.action is Outcome.COMMENTED and result.case == "SAG-000001"
    forged = good[:-30] + "x" + good[-29:]
    result = await ingest(app, mail(subject="Svar", to=forged, body="Forfalsket"), to=(forged,))
    assert result.action is Outcome.CREATED


async def test_danish_outlook_quote_is_stripped(app: App, mail: MailBuilder) -> None:
    await ingest(app, mail())
    body = ("Jeg har nu vedhæftet kvitteringen.\n\nMed venlig hilsen\nJens\n\n"
            "Fra: Kundebetjening <kundebetjening@statens-adm.example>\nSendt: 5. januar 2026 10:00\n"
            "Til: Jens <jens@borger.example>\nEmne: [SAG-000001] Spørgsmål om min faktura\n\n"
            "Tak for din henvendelse.")
    await ingest(app, mail(subject="SV: [SAG-000001] Spørgsmål om min faktura", body=body))
    comment = (await detail(app, "SAG-000001"))["comments"][1]
    assert comment["visible_text"].startswith("Jeg har nu vedhæftet kvitteringen.")
    assert "Tak for din henvendelse" not in comment["visible_text"]
    assert "Tak for din henvendelse" in comment["full_text"]


async def test_signature_is_kept_apart_from_the_visible_text(app: App, mail: MailBuilder) -> None:
    """Issue 22: the case page and the agent show or hide the signature; the text is the reply."""
    body = ("Hej\n\nFakturaen er betalt.\n\nMed venlig hilsen\nJens Hansen\nTlf. 12 34 56 78\n\n"
            "Den 5. jan. 2026 kl. 10.00 skrev Kundebetjening <kundebetjening@statens-adm.example>:\n> Tak")
    await ingest(app, mail(body=body))
    [comment] = (await detail(app, "SAG-000001"))["comments"]
    assert comment["visible_text"] == "Hej\n\nFakturaen er betalt."
    assert comment["signature"] == "Med venlig hilsen\nJens Hansen\nTlf. 12 34 56 78"
    assert comment["full_text"].startswith(body.split("\n\nDen 5.")[0])


async def test_a_crlf_mail_without_history_stores_its_text_once(app: App) -> None:
    """A plain mail with CRLF line ends (smtp-source's, most on the wire) and no quoted history:
    its comment row keeps the visible text only (`full_text` ""), and reads back the same."""
    raw = (b"From: Jens <jens@borger.example>\r\nTo: kundebetjening@statens-adm.example\r\n"
           b"Subject: Linjer\r\nMessage-ID: <crlf-1@borger.example>\r\n\r\n"
           + b"".join(b"%dXXXX linje\r\n" % i for i in range(40)))
    await ingest(app, raw)
    [comment] = (await detail(app, "SAG-000001"))["comments"]
    assert "\r" not in comment["full_text"] and comment["full_text"] == comment["visible_text"]
    assert comment["visible_text"].startswith("0XXXX linje\n1XXXX linje")
    async with app.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT full_text FROM comment"))).scalar_one()
    assert stored == ""


async def test_reply_while_waiting_for_requester_goes_back(app: App, mail: MailBuilder) -> None:
    await add_user(app, "agent@statens-adm.example", agent=True)
    await ingest(app, mail())
    await set_status(app, "SAG-000001", Status.AFVENTER_REKVIRENT, assignee="agent@statens-adm.example")
    await ingest(app, mail(subject="Re: [SAG-000001] x", body="Her er svaret"))
    case = await detail(app, "SAG-000001")
    assert case["status"] == "tildelt"
    assert case["history"][-1] == {**case["history"][-1], "from": "afventer_rekvirent", "to": "tildelt"}


async def test_reply_to_done_case_reopens_and_courtesy_does_not(app: App, mail: MailBuilder) -> None:
    await ingest(app, mail())
    await set_status(app, "SAG-000001", Status.UDFOERT)
    thanks = await ingest(app, mail(subject="Re: [SAG-000001] x", body="Mange tak!\n\nMvh Jens"))
    assert thanks.action is Outcome.IGNORED and thanks.case == "SAG-000001"
    assert (await detail(app, "SAG-000001"))["status"] == "udfoert"
    result = await ingest(app, mail(subject="Re: [SAG-000001] x", body="Det virker stadig ikke."))
    assert result.action is Outcome.REOPENED
    case = await detail(app, "SAG-000001")
    assert case["status"] == "paabegyndt"
    assert [c["kind"] for c in case["comments"]] == ["comment", "courtesy", "comment"]


async def test_reply_to_closed_case_opens_linked_case(app: App, mail: MailBuilder) -> None:
    await ingest(app, mail())
    await set_status(app, "SAG-000001", Status.LUKKET)
    result = await ingest(app, mail(subject="Re: [SAG-000001] Spørgsmål om min faktura", body="Nyt problem"))
    assert result.action is Outcome.CREATED and result.case == "SAG-000002"
    new = await detail(app, "SAG-000002")
    assert new["follows"] == "SAG-000001"
    assert (await detail(app, "SAG-000001"))["status"] == "lukket"
    events = [o["event"] for o in await outbox(app)]
    assert events == ["receipt", "followup"]


async def test_auto_reply_and_bounce_never_open_cases(app: App, mail: MailBuilder) -> None:
    ooo = await ingest(app, mail(subject="Fraværende: Spørgsmål", headers={"Auto-Submitted": "auto-replied"}))
    assert ooo.action is Outcome.IGNORED
    own = await ingest(app, mail(sender=ADDRESS, subject="loop"))
    assert own.action is Outcome.IGNORED
    async with app.sessions() as session:
        assert await run_in(session, queries.list_cases, "all") == []
    assert await outbox(app) == []


async def test_item67_shared_mailbox_is_requester(app: App, mail: MailBuilder) -> None:
    await add_user(app, "okonomi@kommune.example", "Økonomiafdelingen", org="Kommunen", shared=True)
    result = await ingest(app, mail(sender="okonomi@kommune.example"))
    case = await detail(app, result.case)
    assert case["requester"] == {"email": "okonomi@kommune.example", "name": "Økonomiafdelingen",
                                 "kind": "shared_mailbox", "role": "customer"}
    assert (await outbox(app))[0]["recipients"] == ["okonomi@kommune.example"]


async def test_unknown_sender_policies(tmp_path, clock, mail: MailBuilder) -> None:
    from gateway.app import open_app
    from tests.conftest import make_settings

    for policy, action in (("reject", Outcome.REJECTED), ("quarantine", Outcome.QUARANTINED)):
        settings = make_settings(tmp_path / policy, policy={"unknown_sender": policy})
        async with open_app(settings, clock=clock) as app:
            result = await ingest(app, mail())
            assert result.action is action
            async with app.sessions() as session:
                assert await run_in(session, queries.list_cases, "all") == []
                inbox = await run_in(session, queries.list_inbox)
            assert inbox[0]["outcome"] == action.value
            events = [o["event"] for o in await outbox(app)]
            assert events == (["rejected"] if policy == "reject" else [])


async def test_unparseable_mail_is_quarantined_not_lost(app: App) -> None:
    nested = b"From: a@b.example\r\nSubject: bomb\r\n" + b"".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode() for i in range(300))
    result = await ingest(app, nested)
    assert result.action is Outcome.QUARANTINED and "boundaries" in result.reason
    async with app.sessions() as session:
        [row] = await run_in(session, queries.list_inbox, "quarantined")
    assert row["size"] == len(nested)


async def test_item27_processing_failure_retries_then_quarantines(app: App, mail: MailBuilder, clock) -> None:
    """Retried with back-off (worker.retry_delay_s, doubled per try), then quarantined."""
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    failing = worker_of(app, planner=broken)
    delay = app.settings.worker.retry_delay_s
    assert delay > 0
    await app.accept(IncomingMail(mail(), "test", "sender@borger.example", (ADDRESS,)))
    results = await failing.run_once()
    clock.advance(seconds=delay - 1)
    assert await failing.run_once() == []  # not before its time
    clock.advance(seconds=1)
    results += await failing.run_once()
    clock.advance(seconds=2 * delay - 1)
    assert await failing.run_once() == []  # the second wait is twice as long
    clock.advance(seconds=1)
    results += await failing.run_once()
    assert [r.retry for r in results] == [True, True, False]
    assert results[-1].action is Outcome.QUARANTINED and "RuntimeError: boom" in results[-1].reason
    assert await app.inbox.reprocess(quarantined=True) == 1
    [again] = await app.worker.run_once()
    assert again.action is Outcome.CREATED


async def test_stale_claim_is_taken_back(app: App, mail: MailBuilder, clock) -> None:
    accepted = await app.accept(IncomingMail(mail(), "test"))
    claimed = await app.tx.run_now(claim_mails, 10, "dead-node", clock.now(), lease_s=60)
    assert [c.id for c in claimed] == [accepted.inbound_id]
    assert await app.worker.run_once() == []  # still leased to the dead node
    clock.advance(seconds=61)
    [result] = await app.worker.run_once()
    assert result.action is Outcome.CREATED


@pytest.mark.parametrize("together", [False, True], ids=["alone", "in-a-group"])
async def test_a_worker_whose_lease_ran_out_applies_nothing(app: App, mail: MailBuilder, clock, together) -> None:
    """A worker stalls past its lease, another worker claims the mail and makes the case; when
    the first one wakes up its transaction rolls back: one case, not two (a mail is never
    applied twice). A mail of its group that it still holds is applied once."""
    late = await app.accept(IncomingMail(mail(subject="Forsinket"), "test"))
    kept = await app.accept(IncomingMail(mail(subject="Beholdt"), "test")) if together else None
    stalled = await app.tx.run_now(claim_mails, 10, app.worker.holder, clock.now(), lease_s=60)
    parsed = [await app.parser.parse(await app.tx.read(read_raw, m.id), m.envelope_from, m.envelope_to)
              for m in stalled]
    clock.advance(seconds=61)
    other = worker_of(app, "other-node")
    [taken] = await other.run_once(only_id=late.inbound_id)
    assert taken.action is Outcome.CREATED

    results = await app.worker._apply_group(list(zip(stalled, parsed, strict=True)))

    by_id = {r.inbound_id: r for r in results}
    assert by_id[late.inbound_id].retry and "another worker" in by_id[late.inbound_id].reason
    async with app.sessions() as session:
        cases = (await session.execute(text("SELECT subject FROM support_case ORDER BY id"))).scalars().all()
        row = (await session.execute(text("SELECT state, outcome, claimed_by FROM inbound_mail WHERE id = :i"),
                                     {"i": late.inbound_id})).one()
    assert cases == (["Forsinket", "Beholdt"] if together else ["Forsinket"])
    assert tuple(row) == ("done", "created", "other-node")
    if kept is not None:
        assert by_id[kept.inbound_id].action is Outcome.CREATED


async def test_upgrade_moves_raw_bytes_of_an_older_store_into_their_own_table(tmp_path) -> None:
    """Migration 0004 on a store with mails in it: every byte is kept, the worker still reads it."""
    from sqlalchemy import text

    from store.engine import make_engine
    from store.migrate import upgrade

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/old.db")
    raw = b"From: a@b.dk\r\nSubject: gammel\r\n\r\n\xe6\xf8\xe5 \x00 bytes"
    try:
        await upgrade(engine, "0003")
        async with engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO inbound_mail (received_at, source, envelope_to, raw, size, sha256, dedup_key, state,"
                " attempts) VALUES ('2026-01-01 00:00:00', 'smtp', '[]', :raw, :size, 'x', 'k', 'pending', 0)"),
                {"raw": raw, "size": len(raw)})
        await upgrade(engine)
        async with engine.connect() as conn:
            columns = {row[1] for row in await conn.execute(text("PRAGMA table_info(inbound_mail)"))}
            moved = (await conn.execute(text("SELECT raw FROM inbound_raw WHERE inbound_id = 1"))).scalar_one()
    finally:
        await engine.dispose()
    assert "raw" not in columns
    assert moved == raw


def test_head_is_the_newest_migration_script() -> None:
    """`upgrade` skips alembic when the store says HEAD: a migration added without moving HEAD
    would never run."""
    from alembic.script import ScriptDirectory

    from store.migrate import HEAD, alembic_config

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD


async def test_upgrade_of_a_store_at_head_reads_one_row_and_an_older_store_is_migrated(tmp_path) -> None:
    from store.engine import make_engine
    from store.migrate import HEAD, current_revision, upgrade

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/fresh.db")
    try:
        assert await current_revision(engine) is None
        await upgrade(engine, "0004")
        assert await current_revision(engine) == "0004"
        await upgrade(engine)
        assert await current_revision(engine) == HEAD
        await upgrade(engine)  # at head: nothing to do, nothing fails
        assert await current_revision(engine) == HEAD
    finally:
        await engine.dispose()


async def test_the_migrations_build_exactly_the_schema_of_the_models(app: App) -> None:
    """alembic's autogenerate finds nothing to add: no index or column lives in one place only.
    (On SQLite, BIGINT and INTEGER are the same 64-bit type; migration 0003 changes PostgreSQL only.)"""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    def diff(sync):
        opts = {"compare_type": sync.dialect.name != "sqlite"}
        return compare_metadata(MigrationContext.configure(sync, opts=opts), SQLModel.metadata)

    async with app.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


@pytest.mark.sqlite_only
async def test_the_per_sender_counts_read_only_the_time_window(app: App) -> None:
    """The loop detector and the rate limits count one address's last hour or day through an
    index on (address, time), so a flood from one address does not slow every mail down."""
    from datetime import UTC, datetime

    from sqlalchemy.dialects import sqlite as sqlite_dialect

    from store.outbox import _AUTO_ANSWERS, _CASE_WINDOWS
    from store.queries import _RECENT_FROM

    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    bound = (_RECENT_FROM.params(address="a@b.dk", since=now, cap=30),
             _AUTO_ANSWERS.params(recipient="a@b.dk", day=now, cap=40),
             _CASE_WINDOWS.params(case_id=1, recipient="a@b.dk", ten=now, hour=now))
    plans = []
    async with app.engine.connect() as conn:
        for stmt in bound:
            sql = str(stmt.compile(dialect=sqlite_dialect.dialect(), compile_kwargs={"literal_binds": True}))
            rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)).all()
            plans.append(" ".join(str(r[-1]) for r in rows))
    assert "ix_inbound_from_processed (from_addr=? AND processed_at>?)" in plans[0], plans[0]
    assert "ix_outbox_recipient_created (recipient=? AND created_at>?)" in plans[1], plans[1]
    assert "ix_outbox_case_recipient_created (case_id=? AND recipient=? AND created_at>?)" in plans[2], plans[2]


# --- catalogue 31: a store whose commits are not durable is refused at start-up ---------------

def _with_pragmas(engine, *pragmas: str) -> None:
    """A connect hook after the engine's own, as a changed engine or a careless operator would add."""
    @event.listens_for(engine.sync_engine, "connect")
    def _after_ours(dbapi_conn, _record) -> None:
        cursor = dbapi_conn.cursor()
        for pragma in pragmas:
            cursor.execute(pragma)
        cursor.close()


@pytest.mark.sqlite_only
async def test_item31_the_engine_runs_sqlite_in_wal_with_synchronous_full(tmp_path) -> None:

    url = f"sqlite+aiosqlite:///{tmp_path}/durable.db"
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
            sync = (await conn.execute(text("PRAGMA synchronous"))).scalar()
        await check_durability(engine)
    finally:
        await engine.dispose()
    assert (journal, sync) == ("wal", 2)  # 2 is FULL
    writer = sync_sqlite_engine(url, 1000)  # the connection of the daemon's inbox writer
    try:
        with writer.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    finally:
        writer.dispose()


@pytest.mark.sqlite_only
def test_only_the_workers_own_connection_defers_its_fsync(tmp_path) -> None:
    """store.engine.defer_fsync: NORMAL on the worker's engine, on the connection it has and on
    any it makes later; every other connection to the file stays FULL (their commits fsync the
    WAL, the worker's frames with it)."""
    from store.engine import defer_fsync

    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    worker, other = sync_sqlite_engine(url, 1000), sync_sqlite_engine(url, 1000)
    try:
        with worker.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
        defer_fsync(worker)
        with worker.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
        worker.dispose()  # a new connection gets it too
        with worker.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
        with other.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    finally:
        worker.dispose()
        other.dispose()


@pytest.mark.sqlite_only
@pytest.mark.parametrize(("pragmas", "refused"), [
    ((), None),
    (("PRAGMA synchronous=EXTRA",), None),
    (("PRAGMA journal_mode=DELETE",), None),  # rollback journal with FULL is durable too
    (("PRAGMA synchronous=NORMAL",), "synchronous=1"),
    (("PRAGMA synchronous=OFF",), "synchronous=0"),
    (("PRAGMA journal_mode=DELETE", "PRAGMA synchronous=NORMAL"), "synchronous=1"),
    (("PRAGMA journal_mode=MEMORY",), "journal_mode=memory"),
    (("PRAGMA journal_mode=OFF",), "journal_mode=off"),
], ids=["wal-full", "wal-extra", "delete-full", "wal-normal", "wal-off", "delete-normal", "memory-journal",
        "no-journal"])
async def test_item31_check_durability_refuses_sqlite_below_full(tmp_path, pragmas, refused) -> None:

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/store.db")
    _with_pragmas(engine, *pragmas)
    try:
        if refused is None:
            await check_durability(engine)
        else:
            with pytest.raises(ConfigError, match=f"SQLite is not durable: .*{refused}"):
                await check_durability(engine)
    finally:
        await engine.dispose()


@pytest.mark.sqlite_only
async def test_item31_start_up_refuses_sqlite_with_synchronous_normal(tmp_path) -> None:
    """open_app (what `gateway run` and every command start with) will not open such a store."""

    path = tmp_path / "normal.db"
    settings = make_settings(tmp_path, database={"url": f"sqlite+aiosqlite:///{path}"})

    def normal(dbapi_conn, _record, _proxy) -> None:  # every checkout, after the engine's own hook
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA database_list")
        if any(row[2] == str(path) for row in cursor.fetchall()):
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(Pool, "checkout", normal)
    try:
        with pytest.raises(ConfigError, match="synchronous=1"):
            async with open_app(settings, migrate=True):
                pass
    finally:
        event.remove(Pool, "checkout", normal)
    async with open_app(settings, migrate=True) as app:  # the same file with the engine's own settings opens
        assert app.engine.dialect.name == "sqlite"


async def test_item31_start_up_refuses_postgresql_without_synchronous_commit(tmp_path) -> None:

    if not os.environ.get("GATEWAY_TEST_DATABASE_URL"):
        pytest.skip("PostgreSQL half: set GATEWAY_TEST_DATABASE_URL")
    settings = make_settings(tmp_path)  # a fresh database of its own
    url = settings.database.url
    engine = make_engine(url)
    try:
        await check_durability(engine)  # the server's default, on
        async with engine.begin() as conn:
            name = (await conn.execute(text("SELECT current_database()"))).scalar_one()
            await conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
        await engine.dispose()  # the setting applies to new sessions
        with pytest.raises(ConfigError, match="synchronous_commit=off"):
            await check_durability(engine)
    finally:
        await engine.dispose()
    with pytest.raises(ConfigError, match="synchronous_commit=off"):
        async with open_app(settings):
            pass


@pytest.mark.sqlite_only
def test_statements_run_by_the_driver_write_what_sqlalchemy_writes(tmp_path) -> None:
    """store/driver.py runs the worker's hot statements on pysqlite with the converters
    SQLAlchemy compiled: each stores the same column values as SQLAlchemy's own execution
    (dates, JSON, booleans, None, NUL-free text), and RETURNING and rowcount agree."""
    from datetime import UTC, datetime

    from store import outbox as queue
    from store import writes as w
    from store.engine import sync_sqlite_engine

    url = make_settings(tmp_path).database.url
    engine = sync_sqlite_engine(url, 5000)
    now = datetime(2026, 11, 28, 3, 4, 5, 678901, tzinfo=UTC)
    user = {"email": "jens@x.dk", "name": "Jens Ærø", "kind": "person", "role": "customer", "created_at": now}
    case = {"number": "SAG-9", "subject": "Spørgsmål", "requester_id": None, "status": "registreret",
            "follows_id": None, "created_at": now, "updated_at": now, "status_changed_at": now}
    row = {"created_at": now, "event": "receipt", "case_id": None, "recipient": "jens@x.dk",
           "recipient_name": "Jens", "language": "da", "message_id": "<m@x>", "attempts": 0, "next_attempt_at": now,
           "context": {"case_subject": "Spørgsmål", "thread_ids": ["<a@b>"], "n": 1, "none": None},
           "state": "pending", "last_error": None}

    def written(via_driver: bool) -> list[tuple[object, ...]]:
        with engine.connect() as conn, conn.begin():
            def run(statement: w.DriverStatement, params: dict, table: str) -> tuple[object, ...]:
                if via_driver:
                    result = statement.execute(conn, params)
                else:
                    result = conn.execute(statement._statement, params)
                new_id = result.fetchone()[0] if table in ("app_user", "support_case") else None
                last = conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY rowid DESC LIMIT 1").one()
                return (new_id, *last)

            made = [run(w._INSERT_USER, user, "app_user")]
            case["requester_id"] = made[0][0]
            made.append(run(w._INSERT_CASE, case, "support_case"))
            row["case_id"] = made[1][0]
            made.append(run(queue._INSERT_OUTBOX, row, "outbox"))
            conn.rollback()
        return made

    try:
        assert written(via_driver=True) == written(via_driver=False)
    finally:
        engine.dispose()


@pytest.mark.sqlite_only
def test_selects_run_by_the_driver_read_what_sqlalchemy_reads(tmp_path) -> None:
    """The worker's SELECTs on pysqlite (store/driver.py): an IN over a fixed list and over a
    parameter of 1, 2 and 3 values, dates bound, counts capped; the rows equal SQLAlchemy's."""
    from datetime import UTC, datetime, timedelta

    from store import outbox as queue
    from store import queries as q
    from store.engine import sync_sqlite_engine

    url = make_settings(tmp_path).database.url
    engine = sync_sqlite_engine(url, 5000)
    now = datetime(2026, 11, 28, 3, 4, 5, tzinfo=UTC)
    try:
        with engine.connect() as conn, conn.begin():
            for i, email in enumerate(["a@x.dk", "b@x.dk", "c@x.dk"]):
                conn.exec_driver_sql(
                    "INSERT INTO app_user (email, name, kind, role, language, created_at, bouncing_since) "
                    "VALUES (?, ?, 'person', 'customer', 'da', '2026-11-28 00:00:00', ?)",
                    (email, f"N{i}", "2026-11-27 00:00:00" if i == 1 else None))
            for i, (event, state, minutes) in enumerate([("receipt", "sent", 5), ("followup", "pending", 30),
                                                          ("status", "sent", 5), ("receipt", "held", 5),
                                                          ("rejected", "sent", 60 * 30)]):
                at = (now - timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S.%f")
                conn.exec_driver_sql(
                    "INSERT INTO outbox (created_at, event, recipient, recipient_name, language, message_id, "
                    "attempts, next_attempt_at, context, state) VALUES (?, ?, 'a@x.dk', 'A', 'da', ?, 0, ?, '{}', ?)",
                    (at, event, f"<o{i}@x>", at, state))
            cases = [
                (q._RUN_USER_REFS, {"emails": ["a@x.dk"]}), (q._RUN_USER_REFS, {"emails": ["c@x.dk", "b@x.dk"]}),
                (q._RUN_USER_REFS, {"emails": ["a@x.dk", "nobody@x.dk", "b@x.dk"]}),
                (q._RUN_USER_REFS, {"emails": []}),
                (queue._RUN_AUTO_ANSWERS, {"recipient": "a@x.dk", "day": now - timedelta(days=1), "cap": 40}),
                (queue._RUN_AUTO_ANSWERS, {"recipient": "a@x.dk", "day": now - timedelta(days=1), "cap": 1}),
                (queue._RUN_AUTO_ANSWERS, {"recipient": "a@x.dk", "day": now - timedelta(minutes=10), "cap": 40}),
                (q._RUN_RECENT_FROM, {"address": "a@x.dk", "since": now - timedelta(hours=1), "cap": 5}),
            ]
            for statement, params in cases:
                by_driver = sorted(statement.rows(conn, params))
                by_sqlalchemy = sorted(tuple(r) for r in conn.execute(statement._statement, params))
                # dates come back as the driver's text: compare what the callers read of them
                assert [tuple(v is not None if isinstance(v, datetime) or k == 7 else v for k, v in enumerate(r))
                        for r in by_driver] == [tuple(v is not None if isinstance(v, datetime) or k == 7 else v
                                                      for k, v in enumerate(r)) for r in by_sqlalchemy], params
            assert queue._RUN_AUTO_ANSWERS.scalar(conn, cases[4][1]) == 2  # receipt, followup; not held, not old
            assert queue._RUN_AUTO_ANSWERS.scalar(conn, cases[5][1]) == 1  # capped
            assert len(q._RUN_USER_REFS.rows(conn, cases[2][1])) == 2
            conn.rollback()
    finally:
        engine.dispose()


class NotingTransactor:
    """The app's transactor, noting the size of each group of mails written in one transaction
    and the inbox ids of each read of several raw mails at once."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.groups: list[int] = []
        self.raws_read: list[list[int]] = []

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if fn is handle_all:
            self.groups.append(len(args[1]))
        return await self._real.run(fn, *args, **kwargs)

    async def read(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if fn is read_raws:
            self.raws_read.append(list(args[0]))
        return await self._real.read(fn, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.mark.parametrize(("quiet", "largest"), [(False, 8), (True, 32)])
async def test_groups_grow_only_while_the_smtp_commits_pause(app: App, mail: MailBuilder, quiet: bool,
                                                             largest: int) -> None:
    """The worker's loop writes up to GROUP_MAX parsed mails a transaction, QUIET_GROUP_MAX
    while no SMTP commit runs or came lately (the daemon's SQLite writer says which)."""
    tx = NotingTransactor(app.tx)
    worker = worker_of(app, tx=tx, smtp_quiet=lambda: quiet)
    for i in range(0, 70, 10):
        await app.accept_many([IncomingMail(mail(subject=f"Gruppe {j}"), "test") for j in range(i, i + 10)])
    stop = asyncio.Event()
    loop = asyncio.create_task(worker.run(stop))
    try:
        for _ in range(300):
            if sum(tx.groups) >= 70:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await loop
    assert sum(tx.groups) == 70
    assert max(tx.groups) == largest, tx.groups


async def test_a_batch_reads_its_small_mails_together_and_a_big_one_alone(app: App, mail: MailBuilder) -> None:
    tx = NotingTransactor(app.tx)
    worker = worker_of(app, tx=tx)
    small = [await app.accept(IncomingMail(mail(subject=f"Lille {i}"), "test")) for i in range(3)]
    big = await app.accept(IncomingMail(mail(subject="Stor", body="x" * (SMALL_MAIL + 1000)), "test"))
    results = await worker.run_once()
    assert tx.raws_read == [[a.inbound_id for a in small]]
    assert {r.inbound_id for r in results} == {a.inbound_id for a in [*small, big]}
    assert all(r.action is Outcome.CREATED for r in results)
    assert (await detail(app, results[-1].case))["subject"] == "Stor"
