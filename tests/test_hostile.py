"""Hostile and broken mail (RELIABILITY catalogue, SPEC §5–§6): each test is named after its item."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.addresses import canonical
from gateway.app import App, open_app
from gateway.errors import UnusableMail
from gateway.model import Outcome
from gateway.pipeline.parse import Limits, parse_mail, precheck
from store import queries
from store.inbox import IncomingMail
from store.transact import run_in
from tests.conftest import ADDRESS, MailBuilder, add_user, make_settings


async def ingest(app: App, raw: bytes, envelope_from: str | None = "x@borger.example"):
    _, result = await app.ingest_now(IncomingMail(raw, "test", envelope_from, (ADDRESS,)))
    return result


async def cases(app: App) -> list[dict]:
    async with app.sessions() as session:
        return await run_in(session, queries.list_cases, "all")


async def outbox(app: App) -> list[dict]:
    async with app.sessions() as session:
        return await run_in(session, queries.list_outbox)


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
    started = time.perf_counter()
    assert precheck(raw, Limits()) is not None
    result = await ingest(app, raw)
    assert result.action is Outcome.QUARANTINED, name
    assert time.perf_counter() - started < 5.0  # the measured figure (well under 1 s) is in BENCHMARKS.md
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
                     "text/html; charset=utf-16", "base64", "quoted-printable", "8bit", "=?utf-8?b?w6Y?=",
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


async def test_item58_display_name_spoof_uses_addr_spec(app: App, mail: MailBuilder) -> None:
    await add_user(app, "sag@styrelse.example", "Styrelsen")
    result = await ingest(app, mail(sender='"Styrelsen <sag@styrelse.example>" <x@evil.example>'))
    async with app.sessions() as session:
        case = await run_in(session, queries.case_detail, result.case)
    assert case["requester"]["email"] == "x@evil.example"


async def test_item59_several_from_mailboxes_are_quarantined(app: App, mail: MailBuilder) -> None:
    result = await ingest(app, mail(sender="a@borger.example, b@borger.example"))
    assert result.action is Outcome.QUARANTINED and "From" in result.reason


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
