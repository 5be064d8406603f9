"""The sender loop against a real SMTP sink: headers, threading round trip, retries, once-only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway import lifecycle
from gateway.app import App, open_app
from gateway.clock import FrozenClock
from gateway.model import Outcome
from gateway.notify.send import backoff
from gateway.settings import OutboundSettings
from gateway.tokens import verify_token
from store import queries
from store.inbox import IncomingMail
from store.models import Outbox, SupportCase
from store.transact import run_in
from tests.conftest import ADDRESS, MailBuilder, add_user, free_port, make_settings
from tests.sink import Sink


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    started = await Sink().start()
    yield started
    await started.stop()


@pytest.fixture
async def relayed(tmp_path: Path, clock: FrozenClock, sink: Sink) -> AsyncIterator[App]:
    settings = make_settings(tmp_path, outbound={"transport": f"smtp://127.0.0.1:{sink.port}", "timeout_s": 5.0})
    async with open_app(settings, clock=clock) as app:
        yield app


async def ingest(app: App, raw: bytes):
    _, result = await app.ingest_now(IncomingMail(raw, "test", None, (ADDRESS,)))
    return result


async def outbox(app: App) -> list[dict]:
    async with app.sessions() as session:
        return await run_in(session, queries.list_outbox)


async def test_receipt_reaches_sink_and_reply_threads_back(relayed: App, sink: Sink, mail: MailBuilder) -> None:
    await ingest(relayed, mail(subject="Mit CPR-nummer er forkert"))
    assert await relayed.sender.run_once() == 1
    [got] = sink.messages
    msg = got.message
    assert got.recipients == ["jens@borger.example"]
    assert msg["To"] == "jens@borger.example"
    assert msg["Subject"].startswith("[SAG-000001]")
    assert msg["Auto-Submitted"] == "auto-replied"
    token = msg["Reply-To"].split("+", 1)[1].split("@", 1)[0]
    assert verify_token(relayed.settings.mail.reply_token_secret, token) == "SAG-000001"
    assert f"{relayed.settings.portal.url}/sager/SAG-000001" in msg.get_body(("plain",)).get_content()
    [row] = await outbox(relayed)
    assert row["state"] == "sent" and row["message_id"] == msg["Message-ID"]
    # the customer answers the notification: threading by our own Message-ID
    result = await ingest(relayed, mail(subject="Re: noget", in_reply_to=msg["Message-ID"], body="Tak, her er mere"))
    assert result.action is Outcome.COMMENTED and result.case == "SAG-000001"


async def test_item80_relay_down_retries_then_sends_once(tmp_path: Path, clock: FrozenClock, mail: MailBuilder) -> None:
    port = free_port()
    settings = make_settings(tmp_path, outbound={"transport": f"smtp://127.0.0.1:{port}", "timeout_s": 2.0,
                                                 "backoff_initial_s": 30.0})
    async with open_app(settings, clock=clock) as app:
        await ingest(app, mail())
        assert await app.sender.run_once() == 1
        [row] = await outbox(app)
        assert row["state"] == "pending" and row["attempts"] == 1 and "connect" in row["last_error"].lower()
        assert await app.sender.run_once() == 0  # backing off
        sink = await Sink().start(port)
        try:
            clock.advance(seconds=60)
            assert await app.sender.run_once() == 1
            clock.advance(seconds=3600)
            assert await app.sender.run_once() == 0
            assert len(sink.messages) == 1
            assert (await outbox(app))[0]["state"] == "sent"
        finally:
            await sink.stop()


def _naive_utc(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at


async def retry_delays(app: App) -> dict[int, float]:
    """Seconds from the (frozen) now to each pending row's next attempt."""
    table = Outbox.__table__  # type: ignore[attr-defined]
    now = _naive_utc(app.clock.now())
    async with app.engine.connect() as conn:
        rows = (await conn.execute(select(table.c.id, table.c.next_attempt_at)
                                   .where(table.c.state == "pending").order_by(table.c.id))).all()
    return {int(r.id): (_naive_utc(r.next_attempt_at) - now).total_seconds() for r in rows}


def test_item80_backoff_is_capped_exponential_with_jitter() -> None:
    cfg = OutboundSettings(backoff_initial_s=10.0, backoff_max_s=100.0)
    previous_top = 0.0
    for attempts in range(1, 9):
        base = min(100.0, 10.0 * 2 ** (attempts - 1))
        samples = [backoff(attempts, cfg) for _ in range(300)]
        assert all(0.8 * base <= d <= 1.2 * base for d in samples), (attempts, min(samples), max(samples))
        assert len(set(samples)) > 250  # jittered, not one fixed delay
        assert max(samples) - min(samples) > 0.2 * base  # spread over most of the ±20 % band
        if base < 100.0:  # below the cap, every delay is longer than any of the try before
            assert min(samples) > previous_top
        previous_top = max(samples)
    assert max(backoff(50, cfg) for _ in range(100)) <= 120.0  # capped (plus jitter), no overflow
    assert all(8.0 <= backoff(0, cfg) <= 12.0 for _ in range(50))


async def test_item80_refusing_relay_spreads_retries_with_growing_jittered_delays(
        tmp_path: Path, clock: FrozenClock, sink: Sink, mail: MailBuilder) -> None:
    """Real path: the relay answers 450 at RCPT; each row gets its own, growing next attempt."""
    settings = make_settings(tmp_path, outbound={"transport": f"smtp://127.0.0.1:{sink.port}", "timeout_s": 5.0,
                                                 "backoff_initial_s": 30.0, "backoff_max_s": 3600.0,
                                                 "max_attempts": 8})
    sink.handler.rcpt_reply = "450 4.2.1 Mailbox busy, try again later"
    async with open_app(settings, clock=clock) as app:
        for n in range(8):
            await ingest(app, mail(sender=f"borger{n}@borger.example", subject=f"Sag nummer {n}"))
        assert len(await outbox(app)) == 8
        rounds: list[list[float]] = []
        for attempt in (1, 2, 3):
            assert await app.sender.run_once() == 8
            rows = await outbox(app)
            assert all(r["state"] == "pending" and r["attempts"] == attempt and "450" in r["last_error"]
                       for r in rows), rows
            delays = list((await retry_delays(app)).values())
            assert len(delays) == 8
            base = 30.0 * 2 ** (attempt - 1)
            assert all(0.8 * base - 1e-3 <= d <= 1.2 * base + 1e-3 for d in delays), (attempt, delays)
            assert len(set(delays)) >= 6, delays  # jitter: the rows do not retry in lockstep
            rounds.append(delays)
            assert await app.sender.run_once() == 0  # nothing due before the earliest retry
            clock.advance(seconds=max(delays) + 1)
        assert min(rounds[1]) > max(rounds[0]) and min(rounds[2]) > max(rounds[1])  # the delays grow
        assert sink.messages == []
        sink.handler.rcpt_reply = None
        assert await app.sender.run_once() == 8
        assert {r["state"] for r in await outbox(app)} == {"sent"}
        assert len({m.message["Message-ID"] for m in sink.messages}) == len(sink.messages) == 8  # no loss


async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_item82_slow_relay_does_not_block_inbound_and_is_retried(
        tmp_path: Path, clock: FrozenClock, sink: Sink, mail: MailBuilder) -> None:
    """The relay sits on its DATA reply far beyond the send timeout. Meanwhile mails keep
    becoming cases; the stuck notification times out, is rescheduled and sent later."""
    timeout_s = 3.0
    settings = make_settings(tmp_path, outbound={"transport": f"smtp://127.0.0.1:{sink.port}",
                                                 "timeout_s": timeout_s, "backoff_initial_s": 30.0,
                                                 "poll_interval_s": 0.1},
                             worker={"poll_interval_s": 0.1})
    sink.handler.data_stall_s = 120.0
    async with open_app(settings, clock=clock) as app:

        async def cases() -> int:
            async with app.engine.connect() as conn:
                table = SupportCase.__table__  # type: ignore[attr-defined]
                return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())

        async def arrive(raw: bytes) -> None:  # what the SMTP listener does: commit, wake the worker
            await app.accept(IncomingMail(raw, "smtp", None, (ADDRESS,)))
            app.worker.wakeup.set()

        async def stalling() -> bool:
            return sink.handler.stalling == 1

        stop = asyncio.Event()
        loops = [asyncio.create_task(app.worker.run(stop)), asyncio.create_task(app.sender.run(stop))]
        try:
            await arrive(mail(sender="first@borger.example", subject="Den første"))
            await _until(stalling, 60, "the sender to be stuck at DATA")
            stuck_at = time.monotonic()
            sink.handler.data_stall_s = 0.0  # later deliveries go through; the stuck one stays stuck
            for n in range(3):
                await arrive(mail(sender=f"borger{n}@borger.example", subject=f"Imens {n}"))

            async def four_cases() -> bool:
                return await cases() == 4

            await _until(four_cases, 60, "the mails that arrived meanwhile to become cases")
            # the worker did not wait for the sender: the first send is still hanging at DATA
            assert sink.handler.stalling == 1 and time.monotonic() - stuck_at < timeout_s
            assert sink.messages == []

            async def first_rescheduled() -> bool:
                first = (await outbox(app))[0]
                return first["state"] == "pending" and first["attempts"] == 1

            async def others_sent() -> bool:
                return [r["state"] for r in (await outbox(app))[1:]] == ["sent"] * 3

            await _until(first_rescheduled, 60, "the stuck send to time out and be rescheduled")
            await _until(others_sent, 60, "the later notifications to be sent")
            rows = await outbox(app)
            first_id = rows[0]["message_id"]
            assert rows[0]["last_error"], rows[0]
            assert 24.0 - 1e-3 <= (await retry_delays(app))[rows[0]["id"]] <= 36.0 + 1e-3  # backed off
            assert first_id not in {m.message["Message-ID"] for m in sink.messages}

            clock.advance(seconds=60)
            app.sender.wakeup.set()

            async def first_sent() -> bool:
                return (await outbox(app))[0]["state"] == "sent"

            await _until(first_sent, 60, "the stuck notification to be retried")
            rows = await outbox(app)
            assert rows[0]["attempts"] == 2
            ids = [m.message["Message-ID"] for m in sink.messages]
            assert len(ids) == 4 and ids.count(first_id) == 1
        finally:
            stop.set()
            app.sender.wakeup.set()
            app.worker.wakeup.set()
            await asyncio.wait_for(asyncio.gather(*loops, return_exceptions=True), 60)


async def test_item81_relay_refuses_with_5xx_fails_without_retry_storm(relayed: App, sink: Sink, mail: MailBuilder) -> None:
    sink.handler.rcpt_reply = "550 5.1.1 No such user"
    await ingest(relayed, mail())
    await relayed.sender.run_once()
    relayed.clock.advance(days=2)  # type: ignore[attr-defined]
    assert await relayed.sender.run_once() == 0
    [row] = await outbox(relayed)
    assert row["state"] == "failed" and row["attempts"] == 1 and "550" in row["last_error"]
    sink.handler.rcpt_reply = None
    assert await relayed.outbox.retry(row["id"], relayed.clock.now()) == 1
    assert await relayed.sender.run_once() == 1
    assert len(sink.messages) == 1


async def test_item29_crash_after_relay_accept_resends_at_most_once(relayed: App, sink: Sink, mail: MailBuilder,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The one protocol window: 250 received, process dies before marking. Same Message-ID again."""
    await ingest(relayed, mail())

    async def crash(*args, **kwargs):
        raise RuntimeError("killed between the relay's 250 and the mark")

    monkeypatch.setattr(relayed.outbox, "mark_sent", crash)
    with pytest.raises(RuntimeError, match="killed"):
        await relayed.sender.run_once()
    monkeypatch.undo()
    assert await relayed.sender.run_once() == 0  # still leased to the dead sender
    relayed.clock.advance(seconds=301)  # type: ignore[attr-defined]
    assert await relayed.sender.run_once() == 1
    relayed.clock.advance(days=1)  # type: ignore[attr-defined]
    assert await relayed.sender.run_once() == 0
    assert len(sink.messages) == 2
    assert sink.messages[0].message["Message-ID"] == sink.messages[1].message["Message-ID"]


async def test_subject_injection_gives_no_extra_header_or_recipient(relayed: App, sink: Sink) -> None:
    raw = (b"From: jens@borger.example\r\nTo: " + ADDRESS.encode() + b"\r\n"
           b"Subject: =?utf-8?q?Sag=0D=0ABcc:_evil@angriber.example?=\r\nMessage-ID: <inj@borger.example>\r\n\r\nHej\r\n")
    await ingest(relayed, raw)
    await relayed.sender.run_once()
    [got] = sink.messages
    assert got.recipients == ["jens@borger.example"]
    assert got.message["Bcc"] is None and b"\nBcc:" not in got.data


AGENT = "anne@statens-adm.example"


def delivery_report(sender: str, cited: str, *failed: str) -> bytes:
    """A multipart/report (RFC 3464) that says `failed` could not be reached by the mail `cited`."""
    recipients = "".join(f"Final-Recipient: rfc822; {who}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
                         for who in failed)
    return (
        f"From: {sender}\r\nTo: {ADDRESS}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <dsn-{abs(hash((sender, cited, failed)))}@mx.borger.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nMailbox unknown\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.borger.example\r\n\r\n"
        f"{recipients}"
        f"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {cited}\r\nSubject: x\r\n--b--\r\n"
    ).encode()


async def test_item74_bounce_of_our_notification_marks_recipient_and_holds(relayed: App, sink: Sink,
                                                                    mail: MailBuilder) -> None:
    await ingest(relayed, mail())
    await relayed.sender.run_once()
    ours = sink.messages[0].message["Message-ID"]
    result = await ingest(relayed, delivery_report("MAILER-DAEMON@mx.borger.example", ours, "jens@borger.example"))
    assert result.action is Outcome.IGNORED and "marked bouncing: jens@borger.example" in result.reason
    await ingest(relayed, mail(subject="Nyt spørgsmål", body="Endnu et"))
    assert await relayed.sender.run_once() == 0
    rows = await outbox(relayed)
    assert [r["state"] for r in rows] == ["sent", "held"]
    assert len(sink.messages) == 1


async def _bouncing(app: App) -> dict[str, bool]:
    async with app.sessions() as session:
        return {u["email"]: u["bouncing"] for u in await run_in(session, queries.list_users)}


async def test_item17_1_a_forged_report_cannot_silence_a_colleague(relayed: App, sink: Sink,
                                                                  mail: MailBuilder) -> None:
    """The attack of issue 17: an outsider mails in once, gets a receipt, then sends a report
    citing that receipt that names a colleague. Only a recipient of the cited mail can be
    marked, and only when the report names them."""
    await add_user(relayed, AGENT, "Anne Agent", agent=True)  # agents could be silenced the same way
    await ingest(relayed, mail(sender="mette@firma.example", subject="Min sag"))  # the colleague's case
    await ingest(relayed, mail(sender="ole@andet.example", subject="Hej"))
    assert await relayed.sender.run_once() == 2
    receipt = next(m.message["Message-ID"] for m in sink.messages if m.recipients == ["ole@andet.example"])
    forged = await ingest(relayed, delivery_report("ole@andet.example", receipt, "mette@firma.example", AGENT))
    # the colleague's next status mail goes out, not held
    await lifecycle.set_status(relayed.desk, "SAG-000001", "paabegyndt", AGENT)
    assert [r["state"] for r in await outbox(relayed)] == ["sent", "sent", "pending"]
    assert await relayed.sender.run_once() == 1
    assert sink.messages[-1].recipients == ["mette@firma.example"]
    assert await _bouncing(relayed) == {AGENT: False, "mette@firma.example": False, "ole@andet.example": False}
    # and the outcome says why nobody was marked
    assert forged.action is Outcome.IGNORED and "marked bouncing" not in forged.reason
    assert f"not a recipient of the cited mail: mette@firma.example, {AGENT}" in forged.reason
    stray = await ingest(relayed, delivery_report("ole@andet.example", "<x@andet.example>", "mette@firma.example"))
    assert "nothing marked: the report cites no mail of ours" in stray.reason


async def test_item17_1_a_report_marks_only_the_recipient_it_names(relayed: App, sink: Sink,
                                                                  mail: MailBuilder) -> None:
    """A real bounce of the receipt to Ole, which also lists an address the receipt never went
    to: Ole is marked, the other is not."""
    await ingest(relayed, mail(sender="mette@firma.example", subject="Min sag"))
    await ingest(relayed, mail(sender="ole@andet.example", subject="Hej"))
    await relayed.sender.run_once()
    receipt = next(m.message["Message-ID"] for m in sink.messages if m.recipients == ["ole@andet.example"])
    report = await ingest(relayed, delivery_report("MAILER-DAEMON@mx.andet.example", receipt, "OLE@andet.example",
                                                   "mette@firma.example"))
    assert "marked bouncing: ole@andet.example" in report.reason
    assert "not a recipient of the cited mail: mette@firma.example" in report.reason
    assert await _bouncing(relayed) == {"mette@firma.example": False, "ole@andet.example": True}


async def test_item17_1_unbounce_sends_the_held_mail(relayed: App, sink: Sink, mail: MailBuilder) -> None:
    await ingest(relayed, mail())
    await relayed.sender.run_once()
    await ingest(relayed, delivery_report("MAILER-DAEMON@mx.borger.example", sink.messages[0].message["Message-ID"],
                                          "jens@borger.example"))
    await ingest(relayed, mail(subject="Nyt spørgsmål", body="Endnu et"))
    assert await relayed.sender.run_once() == 0
    done = await lifecycle.unbounce(relayed.desk, "Jens@Borger.example")
    assert done == {"email": "jens@borger.example", "was_bouncing": True, "released": 1}
    assert await _bouncing(relayed) == {"jens@borger.example": False}
    assert await relayed.sender.run_once() == 1
    assert [r["state"] for r in await outbox(relayed)] == ["sent", "sent"]
    assert [m.message["Subject"].split()[0] for m in sink.messages] == ["[SAG-000001]", "[SAG-000002]"]
    again = await lifecycle.unbounce(relayed.desk, "jens@borger.example")
    assert again == {"email": "jens@borger.example", "was_bouncing": False, "released": 0}
    with pytest.raises(lifecycle.NotFound):
        await lifecycle.unbounce(relayed.desk, "nobody@borger.example")


async def test_maildir_default_delivers_files(app: App, mail: MailBuilder) -> None:
    await ingest(app, mail())
    assert await app.sender.run_once() == 1
    folder = Path(app.settings.base_dir) / "outbound" / "new"
    [path] = list(folder.iterdir())
    assert b"[SAG-000001]" in path.read_bytes()



async def test_one_recipients_notices_arrive_in_the_order_they_were_made(relayed: App, sink: Sink,
                                                                          mail: MailBuilder) -> None:
    """Sent at once to different recipients, one after the other to the same one: the relay's
    slow answer on the first must not let the second overtake it."""
    for subject in ("Første sag", "Anden sag"):
        await ingest(relayed, mail(subject=subject))
    await ingest(relayed, mail(subject="Fra en anden", sender="mette@borger.example"))
    sink.handler.stall_matching = (b"SAG-000001", 0.5)
    started = time.monotonic()
    assert await relayed.sender.run_once() == 3
    got = [(m.recipients[0], m.message["Subject"].split()[0]) for m in sink.messages]
    assert got[0] == ("mette@borger.example", "[SAG-000003]")  # not held up behind another recipient's mail
    assert got[1:] == [("jens@borger.example", "[SAG-000001]"), ("jens@borger.example", "[SAG-000002]")]
    assert time.monotonic() - started < 5
