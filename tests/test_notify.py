"""The sender loop against a real SMTP sink: headers, threading round trip, retries, once-only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.app import App, open_app
from gateway.clock import FrozenClock
from gateway.model import Outcome
from gateway.tokens import verify_token
from store import queries
from store.inbox import IncomingMail
from store.transact import run_in
from tests.conftest import ADDRESS, MailBuilder, free_port, make_settings
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
    assert "https://serviceportal.statens-adm.example/sager/SAG-000001" in msg.get_body(("plain",)).get_content()
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


async def test_item74_bounce_of_our_notification_marks_recipient_and_holds(relayed: App, sink: Sink,
                                                                    mail: MailBuilder) -> None:
    await ingest(relayed, mail())
    await relayed.sender.run_once()
    ours = sink.messages[0].message["Message-ID"]
    dsn = (
        "From: MAILER-DAEMON@mx.borger.example\r\nTo: " + ADDRESS + "\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-1@mx.borger.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nMailbox unknown\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.borger.example\r\n\r\n"
        "Final-Recipient: rfc822; jens@borger.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: " + ours + "\r\nSubject: x\r\n--b--\r\n")
    result = await ingest(relayed, dsn.encode())
    assert result.action is Outcome.IGNORED and "jens@borger.example" in result.reason
    await ingest(relayed, mail(subject="Nyt spørgsmål", body="Endnu et"))
    assert await relayed.sender.run_once() == 0
    rows = await outbox(relayed)
    assert [r["state"] for r in rows] == ["sent", "held"]
    assert len(sink.messages) == 1


async def test_maildir_default_delivers_files(app: App, mail: MailBuilder) -> None:
    await ingest(app, mail())
    assert await app.sender.run_once() == 1
    folder = Path(app.settings.base_dir) / "outbound" / "new"
    [path] = list(folder.iterdir())
    assert b"[SAG-000001]" in path.read_bytes()

