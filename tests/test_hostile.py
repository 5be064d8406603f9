"""Hostile and broken mail (the reliability catalogue, rules §5–§6): each test is named after its item."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from gateway import lifecycle
from gateway.addresses import canonical
from gateway.app import App, open_app
from gateway.errors import UnusableMail
from gateway.model import Outcome, Status
from gateway.pipeline.parse import Limits, parse_mail, precheck
from gateway.pipeline.plan import NO_SUBJECT, NO_TEXT
from gateway.tokens import reply_address
from store import queries, writes
from store.inbox import IncomingMail
from store.transact import run_in
from tests.conftest import ADDRESS, MailBuilder, add_user, detail, make_settings, outbox, worker_of


async def ingest(app: App, raw: bytes, envelope_from: str | None = "x@borger.example"):
    _, result = await app.ingest_now(IncomingMail(raw, "test", envelope_from, (ADDRESS,)))
    return result


async def cases(app: App) -> list[dict]:
    async with app.sessions() as session:
        return await run_in(session, queries.list_cases, "all")


def nested(depth: int) -> bytes:
    head = b"From: a@borger.example\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    parts = b"".join(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
                     for i in range(depth))
    return head + parts + b"Content-Type: text/plain\r\n\r\nbottom\r\n"


def flat(parts: int) -> bytes:
    body = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(parts))
    return (b"From: a@borger.example\r\nSubject: flat\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + body + b"--b--\r\n")


def encoded_subject(words: int) -> bytes:
    subject = b" ".join([b"=?utf-8?q?=C3=A6?="] * words)
    return b"From: a@borger.example\r\nSubject: " + subject + b"\r\n\r\nbody\r\n"


# --- parser bombs (items 38-41) --------------------------------------------------------------------


@pytest.mark.parametrize("name, raw", [
    ("item38_nesting_1000", nested(1000)),
    ("item39_flat_100k_parts", flat(100_000)),
    ("item40_10k_encoded_words", encoded_subject(10_000)),
    ("item41_100k_folded_lines", b"From: a@borger.example\r\nSubject: x" + b"\r\n y" * 100_000 + b"\r\n\r\nb\r\n"),
])
async def test_item38_item39_item40_item41_parser_bombs_are_quarantined_cheaply(app: App, name: str, raw: bytes) -> None:
    started = time.process_time()  # CPU of this process and its store thread, whatever else runs
    assert precheck(raw, Limits()) is not None
    result = await ingest(app, raw)
    assert result.action is Outcome.QUARANTINED, name
    assert time.process_time() - started < 5.0  # the measured figure (well under 1 s) is in docs/benchmarks.md
    async with app.sessions() as session:
        [row] = await run_in(session, queries.list_inbox, "quarantined")
    assert row["size"] == len(raw)  # kept, never dropped
    assert await cases(app) == []


def test_item38_moderate_nesting_still_parses() -> None:
    assert "bottom" in parse_mail(nested(50)).text


# --- malformed MIME, fuzzed (item 43, 44) -------------------------------------------------------------

_header_names = st.sampled_from(["Subject", "From", "To", "Content-Type", "Content-Transfer-Encoding",
                                 "Message-ID", "In-Reply-To", "References", "Content-Disposition", "X-Junk"])
_values = st.one_of(
    st.text(max_size=80),
    st.sampled_from(['multipart/mixed; boundary="b"', "multipart/alternative; boundary=", "text/plain; charset=x-bogus",
                     "text/html; charset=utf-16", "text/plain; charset=utf-7", "=?utf-7?q?+2AA-?=", "base64", "quoted-printable", "8bit", "=?utf-8?b?w6Y?=",
                     "=?bogus?q?=FF?=", "attachment; filename*=utf-8''%FF%FE", "<a@b>", "a@@b", ""]))


@st.composite
def broken_mail(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(st.tuples(_header_names, _values), max_size=8))
    lines = [f"{k}: {v}".encode("utf-8", "surrogatepass") for k, v in headers]
    body = draw(st.binary(max_size=400))
    parts = draw(st.lists(st.tuples(_values, st.binary(max_size=120)), max_size=3))
    chunks = [b"--b\r\nContent-Type: " + v.encode("utf-8", "surrogatepass") + b"\r\n\r\n" + data for v, data in parts]
    tail = draw(st.sampled_from([b"--b--\r\n", b"", b"--b", b"\r\n.\r\n"]))
    raw = b"\r\n".join(lines) + b"\r\n\r\n" + body + b"\r\n" + b"\r\n".join(chunks) + tail
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]  # truncated anywhere
    return raw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(raw=broken_mail())
def test_item43_malformed_mime_never_escapes(raw: bytes) -> None:
    try:
        mail = parse_mail(raw)
    except UnusableMail:
        return
    assert "\x00" not in mail.text and "\n" not in mail.subject and "\r" not in mail.subject


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory):
    settings = make_settings(tmp_path_factory.mktemp("fuzz"))
    asyncio.run(_open_and_close(settings))  # migrate once
    return settings


async def _open_and_close(settings) -> None:
    async with open_app(settings):
        pass


async def _ingest_fuzzed(settings, raw: bytes) -> None:
    async with open_app(settings, migrate=False) as app:
        accepted, result = await app.ingest_now(IncomingMail(raw, "fuzz", None, (ADDRESS,)))
        assert accepted.duplicate or (result is not None and not result.retry), result
        async with app.sessions() as session:
            rows = await run_in(session, queries.list_inbox)
        assert all(r["state"] in ("done", "quarantined") and r["outcome"] for r in rows)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(raw=broken_mail())
def test_item43_fuzzed_mails_all_get_a_recorded_outcome(fuzz_store, raw: bytes) -> None:
    if raw.strip():
        asyncio.run(_ingest_fuzzed(fuzz_store, raw))


async def test_item43_utf7_lone_surrogates_become_a_case(app: App) -> None:
    """UTF-7 decodes "+2AA-" to an unpaired surrogate, which no store can encode: found by the
    fuzzer above as a mail that failed at every write. Each place it can enter is shown a U+FFFD."""
    raw = (b"From: =?utf-7?q?Jens+2AA-?= <jens@borger.example>\r\nTo: " + ADDRESS.encode() + b"\r\n"
           b"Subject: =?utf-7?q?Sag+2AA-?=\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
           b"--b\r\nContent-Type: text/html; charset=utf-7\r\n\r\n<p>Hej +2AA- der</p>\r\n"
           b"--b\r\nContent-Type: application/pdf\r\n"
           b"Content-Disposition: attachment; filename*=utf-7''%2B2AA-.pdf\r\n\r\nxx\r\n--b--\r\n")
    result = await ingest(app, raw)
    assert result.case is not None, result
    async with app.sessions() as session:
        case = await run_in(session, queries.case_detail, result.case)
    comment = case["comments"][0]
    assert case["subject"] == "Sag\ufffd"
    assert "Hej \ufffd der" in comment["full_text"]
    assert comment["attachments"][0]["name"] == "\ufffd.pdf"


# --- storage safety (items 32, 33, 45, 52) ----------------------------------------------------------------


async def test_item45_attachment_names_are_sanitised(app: App, mail: MailBuilder) -> None:
    names = ["../../../etc/cron.d/x", "..\\..\\win.ini", "/etc/passwd", "CON.txt", "evil\u202egpj.exe",
             "nul\x00byte.pdf", "a" * 10_000 + ".pdf"]
    raw = mail(attachments=[(n, b"data %d" % i, "application/octet-stream") for i, n in enumerate(names)])
    result = await ingest(app, raw)
    async with app.sessions() as session:
        shown = [a["name"] for a in (await run_in(session, queries.case_detail, result.case))["comments"][0]["attachments"]]
    assert shown[:3] == ["x", "win.ini", "passwd"]
    assert shown[3] == "_CON.txt"
    assert "\u202e" not in shown[4] and "\x00" not in shown[5]
    assert len(shown[6]) <= 200 and shown[6].endswith(".pdf")
    for path in app.blobs.root.rglob("*"):
        assert app.blobs.root in path.parents  # nothing outside the storage root


async def test_item32_nul_and_item52_newline_in_subject_are_stored_safely(app: App) -> None:
    raw = (b"From: jens@borger.example\r\nTo: " + ADDRESS.encode() + b"\r\n"
           b"Subject: =?utf-8?q?Sag=0ABcc:_evil@angriber.example?= \x00nul\r\n\r\nbody \x00 with nul\r\n")
    result = await ingest(app, raw)
    async with app.sessions() as session:
        case = await run_in(session, queries.case_detail, result.case)
    assert "\n" not in case["subject"] and "\x00" not in case["subject"]
    assert "\x00" not in case["comments"][0]["full_text"]


async def test_item33_overlong_fields_are_capped(app: App, mail: MailBuilder) -> None:
    result = await ingest(app, mail(subject="Lang " * 1400))  # 7 KB: under the 8 KB header cap
    assert result.action is Outcome.CREATED
    async with app.sessions() as session:
        assert len((await run_in(session, queries.case_detail, result.case))["subject"]) <= 500


# --- identity (items 54-61, 63, 70) -------------------------------------------------------------------------


async def test_item57_reply_to_never_decides_identity(app: App, mail: MailBuilder) -> None:
    await ingest(app, mail())
    result = await ingest(app, mail(sender="mallory@angriber.example", subject="Re: [SAG-000001] x",
                                    headers={"Reply-To": "jens@borger.example"}))
    assert result.case == "SAG-000002"


@pytest.mark.parametrize("address, expected", [
    ("Alice@Example.ORG", "alice@example.org"),
    ("alice@EXAMPLE.org.", "alice@example.org"),
    ("alice@bücher.example", "alice@xn--bcher-kva.example"),
    ('"alice@example.org"@evil.com', None),  # item 60
    ("alice@example.org@evil.com", None),
    ("аlice@example.org", "аlice@example.org"),  # Cyrillic а: kept exactly, never equal to alice
    ("alice@exаmple.org", "alice@xn--exmple-4nf.org"),
])
def test_item60_item61_canonical_addresses(address: str, expected: str | None) -> None:
    assert canonical(address) == expected
    if expected and "а" in address:
        assert canonical(address) != canonical("alice@example.org")


def test_address_answers_kept_for_values_seen_before_are_the_same() -> None:
    """canonical(), mailboxes() and the From reading keep their answers for short values seen
    before (gateway/addresses.py): the same answers as worked out anew, a caller's change to its
    list never reaches the next caller, and a long value is worked out every time."""
    import email

    from gateway.addresses import CACHED_CHARS, _mailboxes_of, mailboxes
    from gateway.pipeline.headers import senders

    values = ['Jens Hansen <Jens@Borger.EXAMPLE>, "Åse" <aase@bücher.example>', "x@evil.example"]
    first = mailboxes(values)
    first.append(("mallory", "m@evil.example"))
    assert mailboxes(values) == _mailboxes_of(values, 100) == [
        ("Jens Hansen", "jens@borger.example"), ("Åse", "aase@xn--bcher-kva.example"), ("", "x@evil.example")]
    long_value = ", ".join(f"u{i}@borger.example" for i in range(CACHED_CHARS // 10))
    assert len(long_value) > CACHED_CHARS and len(mailboxes([long_value])) == 100
    assert canonical("A" * 64 + "@" + "b" * (CACHED_CHARS + 10) + ".example") is None  # a label too long
    for raw, doubt in ((b"From: Jens <jens@borger.example>\r\n\r\nx", False),
                       (b"From: Jens jens@borger.example <x@evil.example>\r\n\r\nx", None)):
        message = email.message_from_bytes(raw)
        answers, defects = [], []
        for _ in range(2):
            found: set[str] = set()
            answers.append(senders(message, defects=found))
            defects.append(found)
        assert answers[0] == answers[1] and defects[0] == defects[1]
        if doubt is False:
            assert answers[0] == [("Jens", "jens@borger.example")] and not defects[0]


async def test_item58_display_name_spoof_uses_addr_spec(app: App, mail: MailBuilder) -> None:
    await add_user(app, "sag@styrelse.example", "Styrelsen")
    result = await ingest(app, mail(sender='"Styrelsen <sag@styrelse.example>" <x@evil.example>'))
    async with app.sessions() as session:
        case = await run_in(session, queries.case_detail, result.case)
    assert case["requester"]["email"] == "x@evil.example"


async def test_item59_several_from_mailboxes_are_quarantined(app: App, mail: MailBuilder) -> None:
    result = await ingest(app, mail(sender="a@borger.example, b@borger.example"))
    assert result.action is Outcome.QUARANTINED and "From" in result.reason


@pytest.mark.parametrize("edit", [
    lambda raw: raw.replace(b"From: jens@borger.example\n", b""),
    lambda raw: raw.replace(b"From: jens@borger.example\n", b"From: jens@borger.example\nFrom: ole@andet.example\n"),
    lambda raw: raw.replace(b"From: jens@borger.example\n", b"From: <>\n"),
], ids=["no From", "two From headers", "empty From"])
async def test_item59_zero_or_two_from_headers_are_quarantined(app: App, mail: MailBuilder, edit) -> None:
    raw = edit(mail())
    assert raw != mail()
    result = await ingest(app, raw)
    assert result.action is Outcome.QUARANTINED and "From" in result.reason, result
    assert await cases(app) == []


async def test_item59_sender_never_decides_identity(app: App, mail: MailBuilder) -> None:
    """Sender ≠ From ("on behalf of", common for secretaries and shared mailboxes) is not
    quarantined: identity comes from the single From alone, the Sender header never counts
    (rules §5), so a forged Sender gains nothing. The catalogue's quarantine is for the From cases."""
    await add_user(app, "jens@borger.example", "Jens")
    result = await ingest(app, mail(headers={"Sender": "ole@andet.example"}))
    assert result.action is Outcome.CREATED
    assert (await detail(app, result.case))["requester"]["email"] == "jens@borger.example"
    forged = await ingest(app, mail(sender="ole@andet.example", headers={"Sender": "jens@borger.example"},
                                    subject=f"Re: [{result.case}] x"))
    assert forged.case != result.case
    assert (await detail(app, forged.case))["requester"]["email"] == "ole@andet.example"


async def test_item70_mail_from_our_own_address_is_a_loop(app: App, mail: MailBuilder) -> None:
    result = await ingest(app, mail(sender=ADDRESS.upper()))
    assert result.action is Outcome.IGNORED and await cases(app) == []


@pytest.mark.parametrize("policy, outcome", [("mark", Outcome.COMMENTED), ("enforce", Outcome.QUARANTINED)])
async def test_item55_item62_forged_authentication_results(tmp_path, clock, mail: MailBuilder, policy: str,
                                                       outcome: Outcome) -> None:
    settings = make_settings(tmp_path, policy={"sender_authentication": policy, "authserv_id": "mx.statens-adm.example"})
    async with open_app(settings, clock=clock) as app:
        await add_user(app, "jens@borger.example", "Jens")
        ok = "mx.statens-adm.example; dmarc=pass header.from=borger.example"
        first = await ingest(app, mail(headers={"Authentication-Results": ok}))
        assert first.action is Outcome.CREATED
        # the sender's own A-R claiming our authserv-id sits below ours, which says fail
        raw = mail(subject="Re: [SAG-000001] x", body="forged")
        raw = (b"Authentication-Results: mx.statens-adm.example; dmarc=fail header.from=borger.example\r\n" + raw
               .replace(b"Subject:", b"Authentication-Results: mx.statens-adm.example; dmarc=pass\r\nSubject:", 1))
        result = await ingest(app, raw)
        assert result.action is outcome


async def test_item63_gateway_headers_from_outside_steer_nothing(app: App, mail: MailBuilder) -> None:
    await ingest(app, mail())
    result = await ingest(app, mail(sender="mallory@angriber.example", headers={
        "X-Gateway-Case": "SAG-000001", "X-Gateway-Loop": "yes", "X-Gateway-Trusted": "true"}))
    assert result.action is Outcome.CREATED and result.case == "SAG-000002"
    parsed = parse_mail(mail(headers={"X-Gateway-Case": "SAG-000001", "X-Other": "kept"}))
    assert parsed.header("x-gateway-case") is None and parsed.header("x-other") == "kept"


# --- loops and automated mail (items 71-77) -------------------------------------------------------------------


async def test_item71_auto_reply_on_a_case_changes_nothing(app: App, mail: MailBuilder) -> None:
    await ingest(app, mail())
    receipt = (await outbox(app))[0]["message_id"]
    result = await ingest(app, mail(subject="Autosvar: x", in_reply_to=receipt,
                                    headers={"Auto-Submitted": "auto-replied"}))
    assert result.action is Outcome.IGNORED and result.case == "SAG-000001"
    async with app.sessions() as session:
        case = await run_in(session, queries.case_detail, "SAG-000001")
    assert case["status"] == "registreret" and len(case["comments"]) == 1
    assert len(await outbox(app)) == 1


@pytest.mark.parametrize("headers, subject", [
    ({"Precedence": "bulk"}, "Nyhedsbrev"),
    ({"List-Id": "<nyheder.borger.example>"}, "Nyhedsbrev"),
    ({"X-Auto-Response-Suppress": "All"}, "Hej"),
    ({}, "Fraværende: Spørgsmål om min faktura"),
    ({}, "Out of office: Re: x"),
])
async def test_item73_item77_automated_mail_gets_no_answer(app: App, mail: MailBuilder, headers: dict, subject: str) -> None:
    result = await ingest(app, mail(subject=subject, headers=headers))
    assert result.action is Outcome.IGNORED
    assert await outbox(app) == []


async def test_item75_null_sender_gets_nothing(app: App, mail: MailBuilder) -> None:
    result = await ingest(app, mail(sender="MAILER-DAEMON@mx.borger.example", subject="Returned mail"),
                          envelope_from="")
    assert result.action is Outcome.IGNORED and await outbox(app) == []


async def test_item72_two_auto_responders_stop_after_the_limit(tmp_path, clock, mail: MailBuilder) -> None:
    """An auto-responder without Auto-Submitted answers each of our receipts with a new mail."""
    settings = make_settings(tmp_path, policy={"max_auto_answers_per_day": 5, "max_mails_per_sender_per_hour": 8})
    async with open_app(settings, clock=clock) as app:
        results = [await ingest(app, mail(sender="robot@borger.example", subject=f"Vedr. din henvendelse {i}",
                                          body=f"Tak for din mail nummer {i}")) for i in range(12)]
        rows = await outbox(app)
    actions = [r.action for r in results]
    assert actions[:8] == [Outcome.CREATED] * 8
    assert actions[8:] == [Outcome.IGNORED] * 4 and "loop" in results[-1].reason
    assert [r["state"] for r in rows] == ["pending"] * 5 + ["held"] * 3
    assert "rate limit" in rows[-1]["last_error"]


async def test_item85_spec6_notifications_per_case_and_recipient_are_capped(app: App, mail: MailBuilder) -> None:
    from gateway.model import Event
    from store import outbox as queue

    await ingest(app, mail())  # the receipt is the first mail on the case
    limits = queue.RateLimits(per_case_10_minutes=3, per_case_hour=4)
    async with app.sessions() as session, session.begin():
        case = await run_in(session, queries.require_case, "SAG-000001")
        jens = queue.Recipient("jens@borger.example", "Jens", "da")
        for minute in range(6):
            app.clock.advance(minutes=3 if minute else 0)  # type: ignore[attr-defined]
            await run_in(session, queue.enqueue, case, Event.STATUS, [jens], app.clock.now(), "gw.example", limits=limits)
    states = [r["state"] for r in await outbox(app)]
    # at minutes 0, 0, 3, 6, 9, 12, 15: three sent in any 10 minutes, four in the hour
    assert states == ["pending", "pending", "pending", "held", "held", "pending", "held"]


# --- helpers for the items below: the store as it is, table by table ---------------------------------------

AUTHSERV = "mx.statens-adm.example"
# What one mail may write when it is applied: none of it may be left half-written (item 28).
APPLIED_TABLES = ("support_case", "comment", "attachment", "status_change", "case_party", "message_index",
                  "outbox", "app_user")


async def ingest_to(app: App, raw: bytes, to: tuple[str, ...], envelope_from: str | None = "x@borger.example"):
    _, result = await app.ingest_now(IncomingMail(raw, "test", envelope_from, to))
    return result


async def table_counts(app: App) -> dict[str, int]:
    async with app.sessions() as session:
        return {name: (await session.execute(text(f"SELECT COUNT(*) FROM {name}"))).scalar_one()
                for name in APPLIED_TABLES}


async def inbox_rows(app: App) -> list[dict]:
    async with app.sessions() as session:
        return await run_in(session, queries.list_inbox)


async def set_status(app: App, number: str, status: Status) -> None:
    async with app.sessions() as session, session.begin():
        case = await run_in(session, queries.require_case, number)
        await run_in(session, writes.set_status, case.id, status, app.clock.now(), None, "test")


def without_message_id(raw: bytes) -> bytes:
    stripped = re.sub(rb"(?im)^message-id:[^\n]*\n", b"", raw)
    assert b"message-id" not in stripped.lower()
    return stripped


def dated(raw: bytes, value: str) -> bytes:
    changed, n = re.subn(rb"(?im)^date:[^\n]*\n", b"Date: " + value.encode() + b"\n", raw, count=1)
    assert n == 1
    return changed


# --- durability and processing (items 28, 35, 37) -----------------------------------------------------------


async def test_item28_outbox_failure_inside_apply_leaves_nothing_half_written(app: App, mail: MailBuilder,
                                                                               monkeypatch, clock) -> None:
    """The case, its comment, its history and its receipt are one transaction: when queueing the
    notification fails, none of them is committed and the mail waits in the inbox for a retry."""
    import store.outbox as queue_module

    def broken(session, rows, numbered=False) -> None:
        raise RuntimeError("outbox enqueue failed")

    before = await table_counts(app)
    monkeypatch.setattr(queue_module, "_insert", broken)
    failed = await ingest(app, mail())
    assert failed.retry and "outbox enqueue failed" in failed.reason
    assert await table_counts(app) == before  # no case without its outbox row, no user, no index row
    [row] = await inbox_rows(app)
    assert (row["state"], row["attempts"], row["outcome"], row["case"]) == ("pending", 1, None, None)
    assert "outbox enqueue failed" in row["last_error"]

    monkeypatch.undo()
    clock.advance(hours=1)  # past the retry back-off
    [created] = await app.worker.run_once()
    assert created.action is Outcome.CREATED
    counts = await table_counts(app)
    assert (counts["support_case"], counts["comment"], counts["outbox"]) == (1, 1, 1)
    assert [o["case"] for o in await outbox(app)] == [created.case]

    # A reply that changes the status and queues a notice to the case's party: comment, status and
    # notice go together too.
    await add_user(app, "mette@borger.example", "Mette")
    async with app.sessions() as session, session.begin():
        case_id = (await run_in(session, queries.require_case, created.case)).id
        mette = await run_in(session, queries.require_user, "mette@borger.example")
        await run_in(session, writes.add_party, case_id, mette.id, app.clock.now(), None)
    await set_status(app, created.case, Status.AFVENTER_REKVIRENT)
    before = await table_counts(app)
    monkeypatch.setattr(queue_module, "_insert", broken)
    failed = await ingest(app, mail(subject=f"Re: [{created.case}] x", body="Her er svaret"))
    assert failed.retry
    assert await table_counts(app) == before
    case = await detail(app, created.case)
    assert case["status"] == "afventer_rekvirent" and len(case["comments"]) == 1
    monkeypatch.undo()
    clock.advance(hours=1)
    [replied] = await app.worker.run_once()
    assert (replied.action, replied.case) == (Outcome.COMMENTED, created.case)
    case = await detail(app, created.case)
    assert case["status"] == "paabegyndt" and len(case["comments"]) == 2
    assert [(o["event"], o["recipients"]) for o in await outbox(app)] == [
        ("receipt", ["jens@borger.example"]), ("status", ["mette@borger.example"])]


async def test_item35_mail_without_message_id_is_deduplicated_by_content(app: App, mail: MailBuilder) -> None:
    raw = without_message_id(mail())
    first = await ingest(app, raw)
    assert first.action is Outcome.CREATED
    # the same mail again, by another path and with the trace headers a relay adds on top
    relayed = (b"Received: from mx2.borger.example by mx.statens-adm.example; Mon, 5 Jan 2026 10:00:05 +0000\n"
               b"Return-Path: <jens@borger.example>\nDelivered-To: " + ADDRESS.encode() + b"\n" + raw)
    accepted, second = await app.ingest_now(IncomingMail(relayed, "imap:other", None, (ADDRESS,)))
    assert accepted.duplicate and second is None
    assert [c["number"] for c in await cases(app)] == [first.case]
    # another mail without a Message-ID is another case
    other = await ingest(app, without_message_id(mail(body="Et helt andet spørgsmål om min pension.")))
    assert other.action is Outcome.CREATED and other.case != first.case
    assert len(await cases(app)) == 2
    rows = await inbox_rows(app)
    assert len(rows) == 2 and all(r["message_id"] is None for r in rows)
    assert "pension" in (await detail(app, other.case))["comments"][0]["full_text"]


async def test_item37_dates_in_2099_and_1970_never_order_cases_or_comments(app: App, mail: MailBuilder) -> None:
    """Comments are ordered by when they were received, cases by when they were last touched;
    the Date header (here 2099 and 1970) decides neither."""
    start = app.clock.now()

    def at(hours: int) -> datetime:
        return (start + timedelta(hours=hours)).replace(tzinfo=None)

    def stored(value: str) -> datetime:
        return datetime.fromisoformat(value).replace(tzinfo=None)

    future, past = "Thu, 01 Jan 2099 00:00:00 +0000", "Thu, 01 Jan 1970 00:00:00 +0000"
    a = await ingest(app, dated(mail(subject="Fremtiden", body="Første"), future))
    app.clock.advance(hours=1)  # type: ignore[attr-defined]
    b = await ingest(app, dated(mail(subject="Fortiden", body="Anden sag"), past))
    app.clock.advance(hours=1)  # type: ignore[attr-defined]
    c = await ingest(app, mail(subject="Nutiden", body="Tredje sag"))
    assert [r.action for r in (a, b, c)] == [Outcome.CREATED] * 3
    assert [x["number"] for x in await cases(app)] == [c.case, b.case, a.case]

    for hours, date, body in ((3, past, "Svar dateret 1970"), (4, future, "Svar dateret 2099"),
                              (5, None, "Svar uden mærkelig dato")):
        app.clock.set(start + timedelta(hours=hours))  # type: ignore[attr-defined]
        raw = mail(subject=f"Re: [{a.case}] Fremtiden", body=body)
        result = await ingest(app, dated(raw, date) if date else raw)
        assert (result.action, result.case) == (Outcome.COMMENTED, a.case)
    case = await detail(app, a.case)
    assert [x["visible_text"] for x in case["comments"]] == [
        "Første", "Svar dateret 1970", "Svar dateret 2099", "Svar uden mærkelig dato"]
    assert [stored(x["created_at"]) for x in case["comments"]] == [at(0), at(3), at(4), at(5)]
    assert stored(case["created_at"]) == at(0) and stored(case["updated_at"]) == at(5)
    assert [x["number"] for x in await cases(app)] == [a.case, c.case, b.case]


# --- MIME (items 42, 44, 49, 50) ----------------------------------------------------------------------------


@pytest.mark.parametrize("raised_limits", [False, True], ids=["default header caps", "header caps raised"])
async def test_item42_twenty_thousand_addresses_are_bounded_and_never_notified(tmp_path, clock, raised_limits: bool
                                                                              ) -> None:
    """20k addresses in To/Cc with Cc sharing on. Under the default header caps the mail is a header
    bomb and quarantined cheaply; with the caps raised so that it is parsed, only the requester and
    the registered colleague it is shared with (rules §5) get mail, and no user is made up from a header."""
    worker = {"max_header_bytes": 4_000_000, "max_header_line_bytes": 4_000_000} if raised_limits else {}
    settings = make_settings(tmp_path, policy={"cc_sharing": True, "sender_authentication": "mark",
                                               "authserv_id": AUTHSERV}, worker=worker)
    async with open_app(settings, clock=clock) as app:
        await add_user(app, "jens@borger.example", "Jens", org="Borger A/S")
        await add_user(app, "mette@borger.example", "Mette", org="Borger A/S")
        await add_user(app, "ole@andet.example", "Ole", org="Andet ApS")
        users_before = (await table_counts(app))["app_user"]
        to = [f"modtager{i}@liste{i % 97}.example" for i in range(10_000)]
        cc = ["mette@borger.example", "ole@andet.example", *(f"kopi{i}@liste{i % 89}.example" for i in range(10_000))]
        raw = (b"From: Jens <jens@borger.example>\r\nTo: " + ",\r\n ".join([ADDRESS, *to]).encode()
               + b"\r\nCc: " + ",\r\n ".join(cc).encode()
               + f"\r\nAuthentication-Results: {AUTHSERV}; dmarc=pass header.from=borger.example\r\n".encode()
               + b"Subject: Til alle\r\nMessage-ID: <mange@borger.example>\r\n\r\nHej alle sammen.\r\n")
        assert len(raw) > 400_000
        started = time.process_time()
        result = await ingest(app, raw)
        assert time.process_time() - started < 10.0
        rows = await outbox(app)
        assert (await table_counts(app))["app_user"] == users_before
        if not raised_limits:
            assert result.action is Outcome.QUARANTINED and "header" in result.reason
            assert rows == [] and await cases(app) == []
            return
        assert result.action is Outcome.CREATED
        assert sorted((r["event"], r["recipients"][0]) for r in rows) == [
            ("receipt", "jens@borger.example"), ("shared", "mette@borger.example")]
        assert [p["email"] for p in (await detail(app, result.case))["parties"]] == ["mette@borger.example"]


H44 = b"From: jens@borger.example\r\nTo: " + ADDRESS.encode() + b"\r\nSubject: Graensetilfaelde\r\nMIME-Version: 1.0\r\n"
MIXED = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
PLAIN = b"--b\r\nContent-Type: text/plain\r\n\r\n"


@pytest.mark.parametrize("raw, shown, defect", [
    (H44 + MIXED + b"Teksten uden nogen graense.\r\n", ["Teksten uden nogen graense."], "StartBoundaryNotFoundDefect"),
    (H44 + MIXED + PLAIN + b"Den forste del.\r\n" + PLAIN + b"Den anden del lukkes aldrig.\r\n",
     ["Den forste del.", "Den anden del lukkes aldrig."], "CloseBoundaryNotFoundDefect"),
    (H44 + MIXED + PLAIN + b"Den synlige del.\r\n--b--\r\nSkjult efterskrift efter den sidste graense.\r\n",
     ["Den synlige del.", "Skjult efterskrift efter den sidste graense."], None),
    (H44 + MIXED + b"Skjult forord foran den forste graense.\r\n" + PLAIN + b"Den synlige del.\r\n--b--\r\n",
     ["Den synlige del.", "Skjult forord foran den forste graense."], None),
], ids=["missing boundary", "unclosed boundary", "hidden epilogue", "hidden preamble"])
async def test_item44_broken_boundaries_keep_every_text_for_staff(app: App, raw: bytes, shown: list[str],
                                                                  defect: str | None) -> None:
    """Best-effort parts, and nothing hidden from staff: every text of the mail is in the stored full
    text or in an attachment. The parser's defects are exposed on `ParsedMail.defects`; the store
    keeps no column for them, so "recorded" is checked on the parsed value only."""
    if defect:
        assert defect in parse_mail(raw).defects
    result = await ingest(app, raw)
    assert result.action is Outcome.CREATED
    [comment] = (await detail(app, result.case))["comments"]
    kept = "\n".join([comment["full_text"],
                      *(app.blobs.get(a["sha256"]).decode("utf-8", "replace") for a in comment["attachments"])])
    for snippet in shown:
        assert snippet in kept, snippet


async def test_item49_forwarded_message_never_routes_or_authorises(app: App, mail: MailBuilder) -> None:
    """A forward whose attached message/rfc822 is from the requester of SAG-1, about SAG-1 (tag,
    In-Reply-To our receipt): the outer sender, a stranger to that case, gets a case of their own."""
    from email import message_from_bytes, policy
    from email.message import EmailMessage

    first = await ingest(app, mail())
    receipt = (await outbox(app))[0]["message_id"]
    inner = message_from_bytes(mail(subject=f"Re: [{first.case}] Spørgsmål om min faktura", in_reply_to=receipt,
                                    body="Indre tekst fra Jens, som ikke må lande på hans sag."),
                               policy=policy.default)
    outer = EmailMessage()
    outer["From"] = "Mallory <mallory@angriber.example>"
    outer["To"] = ADDRESS
    outer["Subject"] = "Fwd: videresendt"
    outer["Message-ID"] = "<fwd@angriber.example>"
    outer.set_content("Se den vedhæftede mail.")
    outer.add_attachment(inner, disposition="attachment", filename="original.eml")
    result = await ingest(app, outer.as_bytes())

    assert result.action is Outcome.CREATED and result.case != first.case
    own = await detail(app, result.case)
    assert own["requester"]["email"] == "mallory@angriber.example" and own["parties"] == []
    [comment] = own["comments"]
    assert [a["content_type"] for a in comment["attachments"]] == ["message/rfc822"]
    assert b"Indre tekst fra Jens" in app.blobs.get(comment["attachments"][0]["sha256"])
    untouched = await detail(app, first.case)
    assert len(untouched["comments"]) == 1 and untouched["parties"] == []
    assert [(o["event"], o["case"], o["recipients"]) for o in await outbox(app)] == [
        ("receipt", first.case, ["jens@borger.example"]), ("receipt", result.case, ["mallory@angriber.example"])]


def _mime(content_type: str, body: bytes, subject: bytes = b"Subject: Uden tekst\r\n") -> bytes:
    return (b"From: jens@borger.example\r\nTo: " + ADDRESS.encode() + b"\r\n" + subject
            + b"Message-ID: <" + uuid.uuid4().hex.encode() + b"@borger.example>\r\nMIME-Version: 1.0\r\n"
            + b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)


@pytest.mark.parametrize("raw, subject, visible, files", [
    (_mime("text/plain", b"", subject=b""), NO_SUBJECT, NO_TEXT, []),
    (_mime("text/plain", b"\r\n   \r\n\t\r\n"), "Uden tekst", NO_TEXT, []),
    (_mime('multipart/mixed; boundary="b"',
           b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=faktura.pdf\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQgZGF0YQ==\r\n--b--\r\n"), "Uden tekst", NO_TEXT,
     ["faktura.pdf"]),
    (_mime("text/html; charset=utf-8", b"<html><body><p>Hej <b>Kundebetjening</b>,</p><p>Min faktura er forkert."
                                       b"</p></body></html>", subject=b"Subject: HTML\r\n"), "HTML",
     "Hej Kundebetjening,\n\nMin faktura er forkert.", []),
], ids=["empty", "whitespace only", "attachment only", "html only"])
async def test_item50_empty_attachment_only_and_html_only_mails_open_readable_cases(
        app: App, raw: bytes, subject: str, visible: str, files: list[str]) -> None:
    result = await ingest(app, raw)
    assert result.action is Outcome.CREATED
    case = await detail(app, result.case)
    [comment] = case["comments"]
    assert case["subject"] == subject
    assert comment["visible_text"] == visible
    assert [a["name"] for a in comment["attachments"]] == files
    assert [o["event"] for o in await outbox(app)] == ["receipt"]


# --- identity and authorisation (items 56, 65, 68) ------------------------------------------------------------


@pytest.mark.parametrize("results", [
    f"{AUTHSERV}; dmarc=none header.from=borger.example; dkim=none; spf=none smtp.mailfrom=borger.example",
    f"{AUTHSERV}; dmarc=none header.from=borger.example; dkim=pass header.d=nyhedsbrev-tjeneste.example",
    None,
    "mx.borger.example; dmarc=pass header.from=borger.example; dkim=pass header.d=borger.example",
], ids=["dmarc none", "dkim of another domain", "no results at all", "only another server's results"])
async def test_item56_unauthenticated_reply_is_never_appended(tmp_path, clock, mail: MailBuilder,
                                                              results: str | None) -> None:
    """rules §5 under `enforce`: a mail claiming a registered address that our MTA did not see pass
    DMARC (or aligned DKIM/SPF) is quarantined. The catalogue allows a new flagged case; the rules win,
    so the test expects a quarantine: no comment on the case and no new case."""
    settings = make_settings(tmp_path, policy={"sender_authentication": "enforce", "authserv_id": AUTHSERV})
    async with open_app(settings, clock=clock) as app:
        await add_user(app, "jens@borger.example", "Jens")
        first = await ingest(app, mail(headers={"Authentication-Results":
                                                f"{AUTHSERV}; dmarc=pass header.from=borger.example"}))
        assert first.action is Outcome.CREATED
        receipt = (await outbox(app))[0]["message_id"]
        reply = mail(subject=f"Re: [{first.case}] Spørgsmål om min faktura", in_reply_to=receipt,
                     body="Svar uden godkendt afsender", headers={"Authentication-Results": results} if results else {})
        result = await ingest(app, reply)
        assert result.action is Outcome.QUARANTINED and "unauthenticated" in result.reason
        assert [c["number"] for c in await cases(app)] == [first.case]
        assert len((await detail(app, first.case))["comments"]) == 1
        assert len(await outbox(app)) == 1
        async with app.sessions() as session:
            [held] = await run_in(session, queries.list_inbox, "quarantined")
        assert held["outcome"] == "quarantined"


@pytest.mark.parametrize("registered", [False, True], ids=["unknown sender", "registered user of another organisation"])
async def test_item65_non_party_writing_to_a_valid_reply_token_address_gets_its_own_case(
        app: App, mail: MailBuilder, registered: bool) -> None:
    """rules §5: mail about a case from anyone but its requester and parties is a new mail from that
    sender (the catalogue's staff quarantine is not what the rules ask), whatever address it came to."""
    outsider = "signup@tredjepart.example"
    if registered:
        await add_user(app, outsider, "Tredjepart", org="Tredjepart ApS")
    first = await ingest(app, mail())
    token_address = reply_address(app.settings.mail.reply_token_secret, ADDRESS, first.case)
    # the token is valid: the requester's mail to it lands on the case
    own = await ingest_to(app, mail(subject="Svar", to=token_address, body="Jens via token"), (token_address,))
    assert (own.action, own.case) == (Outcome.COMMENTED, first.case)

    result = await ingest_to(app, mail(sender=outsider, subject="Bekræft din konto", to=token_address,
                                       body="Klik her for at bekræfte din konto"), (token_address,))
    assert result.action is Outcome.CREATED and result.case != first.case
    assert "not a party" in result.reason
    case = await detail(app, first.case)
    assert [c["visible_text"] for c in case["comments"]][-1] == "Jens via token"
    assert len(case["comments"]) == 2 and case["parties"] == []
    assert all("bekræfte" not in c["full_text"] for c in case["comments"])
    assert [(o["case"], o["recipients"]) for o in await outbox(app)] == [
        (first.case, ["jens@borger.example"]), (result.case, [outsider])]


@pytest.mark.parametrize("removal", ["party row deleted", "moved to another organisation"])
async def test_item68_access_removed_after_a_notification_is_checked_when_the_reply_arrives(
        app: App, mail: MailBuilder, removal: str) -> None:
    """Mette was a party (a colleague in Jens's organisation) and got the `shared` notification. Her
    access is then taken away in the store; her reply to that notification must not reach the case
    (catalogue 68; rules §1/§5: cases are shared with colleagues of the requester's organisation)."""
    await add_user(app, "jens@borger.example", "Jens", org="Borger A/S")
    await add_user(app, "mette@borger.example", "Mette", org="Borger A/S")
    first = await ingest(app, mail())
    await lifecycle.share(app.desk, first.case, "mette@borger.example", "jens@borger.example")
    [shared] = [o for o in await outbox(app) if o["event"] == "shared"]
    token_address = reply_address(app.settings.mail.reply_token_secret, ADDRESS, first.case)

    def reply(body: str) -> bytes:
        return mail(sender="mette@borger.example", subject=f"Re: [{first.case}] Spørgsmål om min faktura",
                    to=token_address, in_reply_to=shared["message_id"], body=body)

    allowed = await ingest_to(app, reply("Mette svarer som part"), (token_address,))
    assert (allowed.action, allowed.case) == (Outcome.COMMENTED, first.case)

    async with app.sessions() as session, session.begin():
        mette = {"email": "mette@borger.example"}
        if removal == "party row deleted":
            await session.execute(text("DELETE FROM case_party WHERE user_id = "
                                       "(SELECT id FROM app_user WHERE email = :email)"), mette)
        else:
            other = await run_in(session, writes.ensure_organisation, "Andet ApS")
            await session.execute(text("UPDATE app_user SET organisation_id = :org WHERE email = :email"),
                                  {**mette, "org": other.id})

    result = await ingest_to(app, reply("Mette svarer efter at have mistet adgangen"), (token_address,))
    assert result.action is Outcome.CREATED and result.case != first.case, result
    assert "not a party" in result.reason
    comments = (await detail(app, first.case))["comments"]
    assert [c["visible_text"] for c in comments] == [comments[0]["visible_text"], "Mette svarer som part"]
    assert (await detail(app, result.case))["requester"]["email"] == "mette@borger.example"


# --- portal rendering: what is stored (item 87) ------------------------------------------------------------

HOSTILE_HTML = """<html><head><meta http-equiv="refresh" content="0;url=javascript:alert(7)">
<script>alert('xss')</script><style>p { background: url(javascript:alert(8)) }</style></head>
<body onload="alert(6)"><p>Min faktura er forkert.</p>
<img src="x" onerror="alert(1)"><a href="javascript:alert(2)">klik her</a>
<a href="JaVaScRiPt:alert(3)">og her</a><svg onload="alert(4)"><circle r="1"/></svg>
<iframe src="javascript:alert(5)"></iframe><form action="javascript:alert(9)"><input onfocus="alert(10)" autofocus>
</form><div style="background-image: url('javascript:alert(11)')" onmouseover="alert(12)">Mvh Jens</div>
</body></html>"""


async def test_item87_stored_comment_html_and_text_are_sanitised(app: App) -> None:
    raw = _mime("text/html; charset=utf-8", HOSTILE_HTML.encode(), subject=b"Subject: HTML angreb\r\n")
    result = await ingest(app, raw)
    assert result.action is Outcome.CREATED
    async with app.sessions() as session:
        [(html, visible, full)] = (await session.execute(
            text("SELECT html, visible_text, full_text FROM comment"))).all()
    assert html and "Min faktura er forkert." in html and "Mvh Jens" in html
    lowered = html.lower()
    for needle in ("<script", "onerror", "onload", "onfocus", "onmouseover", "javascript:", "<svg", "<iframe",
                   "<meta", "<form", "alert("):
        assert needle not in lowered, needle
    # No quoted history: stored once, unless splitting off the signature ("Mvh Jens", issue 22)
    # changed the spacing between it and the text.
    assert full in ("", "Min faktura er forkert.\n\nklik her og her\nMvh Jens")
    for value in (visible, full or visible):
        assert "Min faktura er forkert." in value
        assert "alert(" not in value and "javascript:" not in value.lower() and "<script" not in value.lower()


@pytest.mark.parametrize("results, signature, expected", [
    ("dkim=pass header.d=borger.example; dmarc=pass header.from=borger.example", "l=120; ", False),
    ("dkim=pass header.d=borger.example; dmarc=pass header.from=borger.example", "", True),
    ("dkim=pass header.d=borger.example; spf=pass smtp.mailfrom=jens@borger.example", "l=120; ", True),
    ("dkim=pass header.d=borger.example", "L = 0; ", False),
], ids=["l= voids dkim and dmarc", "no l=: pass", "aligned spf still counts", "l=0 any case"])
def test_item64_dkim_body_length_tag_is_not_trusted(mail: MailBuilder, results: str, signature: str,
                                                    expected: bool) -> None:
    """A signature with `l=` covers only the first bytes of the body; a trailer appended after
    them is unsigned, so our MTA's dkim=pass (and a DMARC pass resting on it) proves nothing
    about the text we would store. Only an aligned SPF pass still authenticates."""
    from gateway.pipeline.identify import authenticated

    raw = mail(headers={
        "Authentication-Results": f"mx.statens-adm.example; {results}",
        "DKIM-Signature": f"v=1; a=rsa-sha256; d=borger.example; s=s1; {signature}h=from:subject; bh=x; b=y"},
        body="Signed start.\n\nAppended by someone else: pay to account 1234.")
    assert authenticated(parse_mail(raw), "mx.statens-adm.example", "enforce") is expected


# --- completing items 27, 54, 57, 69 ------------------------------------------------------------------------


def delivered(app: App) -> list[tuple[tuple[str, ...], str]]:
    """What the maildir transport delivered: (Delivered-To recipients, every header and text part decoded)."""
    from email import message_from_bytes
    from email import policy as email_policy
    from pathlib import Path

    folder = Path(app.settings.base_dir) / "outbound" / "new"
    found = []
    for path in sorted(folder.iterdir()) if folder.exists() else []:
        msg = message_from_bytes(path.read_bytes(), policy=email_policy.default)
        texts = [f"{name}: {value}" for name, value in msg.items()]
        texts += [part.get_content() for part in msg.walk() if part.get_content_maintype() == "text"]
        found.append((tuple(msg.get_all("Delivered-To") or ()), "\n".join(texts)))
    return found


async def outbox_contexts(app: App) -> list[tuple[str, str, str | None, dict]]:
    """Every outbox row with the context its mail is rendered from: (event, recipient, case, context)."""
    from sqlalchemy import select

    from store.models import Outbox, SupportCase

    async with app.sessions() as session:
        rows = (await session.execute(
            select(Outbox.event, Outbox.recipient, SupportCase.number, Outbox.context)
            .join(SupportCase, Outbox.case_id == SupportCase.id, isouter=True).order_by(Outbox.id))).all()
    return [(event, recipient, number, dict(context)) for event, recipient, number, context in rows]


async def test_item27_poison_mail_is_quarantined_while_the_others_keep_flowing(app: App, mail: MailBuilder,
                                                                               caplog, clock) -> None:
    """One mail makes processing raise every time. It sits in the middle of the queue; the mails
    before and after it (and those arriving while it is retried) all become cases in the same
    runs. After `worker.max_attempts` tries it is quarantined with its error, and the operator's
    signals say so: the quarantined counter, the processed counter and the inbox depth on the
    /metrics scrape, and a `mail.quarantined` warning in the log."""
    import logging

    from gateway import metrics
    from gateway.pipeline.plan import make_plan

    def poisoned(parsed, *args, **kwargs):
        if "POISON" in parsed.subject:
            raise RuntimeError("worker crashes on this mail")
        return make_plan(parsed, *args, **kwargs)

    worker = worker_of(app, planner=poisoned)
    max_attempts = app.settings.worker.max_attempts
    assert max_attempts >= 2

    def good(i: int) -> bytes:
        return mail(sender=f"borger{i}@borger.example", subject=f"Spørgsmål nummer {i}", body=f"God mail {i}")

    ids = [(await app.accept(IncomingMail(raw, "test", "x@borger.example", (ADDRESS,)))).inbound_id
           for raw in (good(1), mail(subject="POISON pill", body="Giftig"), good(2), good(3))]
    poison_id = ids[1]
    created: set[int] = set()
    runs = 0
    with caplog.at_level(logging.INFO, logger="gateway"):
        while True:
            runs += 1
            results = await worker.run_once()
            by_id = {r.inbound_id: r for r in results}
            poison = by_id.pop(poison_id)
            # every good mail claimed in this run became a case in this run: nothing waits behind the poison
            assert all(r.action is Outcome.CREATED and not r.retry for r in by_id.values()), results
            created |= set(by_id)
            rows = {r["id"]: r for r in await inbox_rows(app)}
            # and every good mail accepted so far is done after this run, none left waiting behind it
            assert {i: rows[i]["state"] for i in ids if i != poison_id} == {i: "done" for i in ids if i != poison_id}
            assert rows[poison_id]["attempts"] == runs
            assert "worker crashes on this mail" in rows[poison_id]["last_error"]
            if not poison.retry:
                break
            assert runs < max_attempts
            assert rows[poison_id]["state"] == "pending" and rows[poison_id]["outcome"] is None
            # new mail keeps arriving while the poison is retried, and is not held up by it
            ids.append((await app.accept(IncomingMail(good(10 + runs), "test", "x@borger.example",
                                                      (ADDRESS,)))).inbound_id)
            clock.advance(hours=1)  # past the retry back-off (tests/test_pipeline.py checks its length)
    assert runs == max_attempts
    assert poison.action is Outcome.QUARANTINED and "worker crashes on this mail" in poison.reason
    assert created == set(ids) - {poison_id}
    assert await worker.run_once() == []  # quarantined: never claimed again

    held = rows[poison_id]
    assert (held["state"], held["outcome"], held["case"]) == ("quarantined", "quarantined", None)
    assert f"processing failed {max_attempts} times" in held["reason"]
    assert "RuntimeError: worker crashes on this mail" in held["reason"]
    numbers = [c["number"] for c in await cases(app)]
    assert len(numbers) == len(ids) - 1
    assert all(rows[i]["state"] == "done" and rows[i]["case"] in numbers for i in ids if i != poison_id)
    assert sorted(o["recipients"][0] for o in await outbox(app)) == sorted(
        [f"borger{i}@borger.example" for i in (1, 2, 3)] + [f"borger{10 + r}@borger.example" for r in range(1, runs)])

    # the alert's inputs, from the store on every /metrics scrape
    scraped = (await metrics.StoreMetrics(app.engine).render()).decode()
    assert "gateway_mails_quarantined_total 1.0" in scraped
    assert 'gateway_mails_processed_total{outcome="quarantined"} 1.0' in scraped
    assert f'gateway_mails_processed_total{{outcome="created"}} {float(len(ids) - 1)}' in scraped
    assert 'gateway_inbox_depth{state="quarantined"} 1.0' in scraped
    assert 'gateway_inbox_depth{state="pending"} 0.0' in scraped
    warnings = [r for r in caplog.records if r.getMessage() == "mail.quarantined" and r.levelno == logging.WARNING]
    assert [getattr(r, "inbound_id", None) for r in warnings] == [poison_id]
    retries = [r for r in caplog.records if r.getMessage() == "mail.retry"]
    assert [getattr(r, "inbound_id", None) for r in retries] == [poison_id] * (max_attempts - 1)


@pytest.mark.parametrize("route", ["subject tag", "reply token address", "tag, token and In-Reply-To our receipt"])
async def test_item54_answer_to_an_outsider_never_reveals_the_other_case(app: App, mail: MailBuilder,
                                                                        route: str) -> None:
    """Mallory writes with a valid reference to Jens's case. She gets a receipt for a case of her
    own; neither the queued row (its context, from which subject and text are rendered) nor the
    delivered mail (headers, text and HTML) names Jens's case number, its title, or its thread."""
    title = "Restskat på 48.917 kr. for Jens Hansen"
    first = await ingest(app, mail(subject=title, body="Min restskat er forkert beregnet."))
    [receipt] = await outbox(app)
    token_address = reply_address(app.settings.mail.reply_token_secret, ADDRESS, first.case)
    to = token_address if "token" in route else ADDRESS
    subject = f"Re: [{first.case}] Hvad er status?" if "tag" in route else "Hvad er status?"
    raw = mail(sender="Mallory <mallory@angriber.example>", subject=subject, to=to, body="Vis mig sagen.",
               in_reply_to=receipt["message_id"] if "In-Reply-To" in route else None)
    result = await ingest_to(app, raw, (to,))

    assert result.action is Outcome.CREATED and result.case != first.case
    assert "not a party" in result.reason
    assert len((await detail(app, first.case))["comments"]) == 1
    async with app.sessions() as session:
        thread_of_first = set((await session.execute(text(
            "SELECT message_id FROM message_index m JOIN support_case c ON c.id = m.case_id "
            "WHERE c.number = :n"), {"n": first.case})).scalars())
    assert receipt["message_id"] in thread_of_first
    secrets = [first.case, title, "Restskat", "48.917", "Jens",
               token_address, *thread_of_first]

    rows = await outbox_contexts(app)
    mine = [r for r in rows if r[1] == "mallory@angriber.example"]
    assert [(event, number) for event, _, number, _ in mine] == [("receipt", result.case)]
    context = mine[0][3]
    assert context["case_number"] == result.case and context["case_subject"] == "Hvad er status?"
    flat = repr(context)
    for secret in secrets:
        assert secret not in flat, secret
    assert [(event, rcpt) for event, rcpt, _, _ in rows] == [
        ("receipt", "jens@borger.example"), ("receipt", "mallory@angriber.example")]

    assert await app.sender.run_once() == 2
    [(recipients, shown)] = [d for d in delivered(app) if "mallory@angriber.example" in d[0]]
    assert recipients == ("mallory@angriber.example",)
    assert result.case in shown  # her own case is named
    assert reply_address(app.settings.mail.reply_token_secret, app.settings.mail.from_address, result.case) in shown
    for secret in secrets:
        assert secret not in shown, secret


@pytest.mark.parametrize("registered", [True, False], ids=["registered requester", "new requester"])
async def test_item57_notifications_go_to_the_registered_address_never_to_reply_to(app: App, mail: MailBuilder,
                                                                                   registered: bool) -> None:
    """Jens writes with `Reply-To: jens.privat@fremmed.example` on every mail. The receipt, the
    agent's assignment, status changes and public reply (gateway.lifecycle) all go to the address
    of his user (From), and the Reply-To address never receives, or becomes, anything."""
    jens, elsewhere = "jens@borger.example", "jens.privat@fremmed.example"
    if registered:
        await add_user(app, jens, "Jens", org="Borger A/S")
    await add_user(app, "agent@statens-adm.example", "Agent", agent=True)
    header = {"Reply-To": f"Jens privat <{elsewhere}>"}
    first = await ingest(app, mail(headers=header))
    assert first.action is Outcome.CREATED
    assert (await detail(app, first.case))["requester"]["email"] == jens

    agent = "agent@statens-adm.example"
    assert (await lifecycle.assign(app.desk, first.case, agent, agent))["notifications"]
    assert (await lifecycle.set_status(app.desk, first.case, Status.AFVENTER_REKVIRENT, agent))["notifications"]
    assert (await lifecycle.reply(app.desk, first.case, "Send venligst kvitteringen.", agent))["notifications"]
    answer = await ingest(app, mail(subject=f"Re: [{first.case}] Spørgsmål om min faktura",
                                    body="Her er kvitteringen.", headers=header))
    assert (answer.action, answer.case) == (Outcome.COMMENTED, first.case)
    assert (await lifecycle.set_status(app.desk, first.case, Status.UDFOERT, agent))["notifications"]

    rows = await outbox(app)
    assert [r["event"] for r in rows] == ["receipt", "status", "status", "reply", "status"]
    assert all(r["recipients"] == [jens] for r in rows), rows
    async with app.sessions() as session:
        users = set((await session.execute(text("SELECT email FROM app_user"))).scalars())
    assert elsewhere not in users
    assert await app.sender.run_once() == len(rows)
    sent = delivered(app)
    assert len(sent) == len(rows)
    for recipients, shown in sent:
        assert recipients == (jens,)
        assert f"To: Jens <{jens}>" in shown or f"To: {jens}" in shown, shown[:400]
        assert elsewhere not in shown


@pytest.mark.parametrize("thread", ["In-Reply-To our receipt", "answer to the requester's forward"])
@pytest.mark.parametrize("sharing", [False, True], ids=["default policy", "cc sharing on, authenticated"])
async def test_item69_non_party_colleague_answering_a_forwarded_notification_gets_own_case(
        tmp_path, clock, mail: MailBuilder, thread: str, sharing: bool) -> None:
    """Mette works in Jens's organisation but the case was never shared with her. Jens forwards
    his receipt to her and she answers it with every reference a party would have: In-Reply-To
    (or References) our receipt's Message-ID, the case tag in the subject, sent to the signed
    reply-token address. Same organisation is not enough (rules §5: only the requester and the
    users it is shared with): nothing reaches Jens's case, she gets a case of her own."""
    policy: dict = {"cc_sharing": True, "sender_authentication": "mark", "authserv_id": AUTHSERV} if sharing else {}
    settings = make_settings(tmp_path, policy=policy)
    passed = {"Authentication-Results": f"{AUTHSERV}; dmarc=pass header.from=borger.example"} if sharing else {}
    async with open_app(settings, clock=clock) as app:
        await add_user(app, "jens@borger.example", "Jens", org="Borger A/S")
        await add_user(app, "mette@borger.example", "Mette", org="Borger A/S")
        first = await ingest(app, mail(headers=passed))
        [receipt] = await outbox(app)
        token_address = reply_address(app.settings.mail.reply_token_secret, ADDRESS, first.case)
        if thread == "In-Reply-To our receipt":
            refs = {"In-Reply-To": receipt["message_id"], "References": receipt["message_id"]}
        else:
            forward = "<videresendt-1@borger.example>"
            refs = {"In-Reply-To": forward, "References": f"{receipt['message_id']} {forward}"}
        raw = mail(sender="Mette <mette@borger.example>", to=token_address,
                   subject=f"Re: VS: [{first.case}] Spørgsmål om min faktura",
                   body="Jeg er Jens' kollega og svarer på hans vegne.\n\n"
                        "---------- Videresendt besked ----------\nTak for din henvendelse.",
                   headers={**refs, **passed})
        result = await ingest_to(app, raw, (token_address,))

        assert result.action is Outcome.CREATED and result.case != first.case, result
        assert "not a party" in result.reason
        untouched = await detail(app, first.case)
        assert len(untouched["comments"]) == 1 and untouched["parties"] == []
        assert untouched["status"] == "registreret"
        assert all("kollega" not in c["full_text"] for c in untouched["comments"])
        own = await detail(app, result.case)
        assert own["requester"]["email"] == "mette@borger.example" and own["parties"] == []
        assert "kollega" in own["comments"][0]["full_text"]
        assert [(o["event"], o["case"], o["recipients"]) for o in await outbox(app)] == [
            ("receipt", first.case, ["jens@borger.example"]), ("receipt", result.case, ["mette@borger.example"])]
        [row] = [r for r in await inbox_rows(app) if r["case"] == result.case]
        assert row["outcome"] == "created" and "not a party" in row["reason"]

        # Jens, the requester, answering the same way still lands on his case
        own_reply = await ingest_to(app, mail(to=token_address, subject=f"Re: [{first.case}] x", body="Jens svarer",
                                              headers={"In-Reply-To": receipt["message_id"], **passed}),
                                    (token_address,))
        assert (own_reply.action, own_reply.case) == (Outcome.COMMENTED, first.case)
