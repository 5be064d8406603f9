"""The crash test of issue 24: mail through a real Postfix in front of the gateway, while the
daemon's whole process group is SIGKILLed twice and the store stops answering for a few
seconds.

What must hold: every mail becomes exactly one case; every case is made within 15 s of the
mail's 250 or, when a fault came between, of the daemon or the store coming back (no claim
waits for its 300 s lease); no receipt is in the maildir twice; Postfix's log has no 421.

The private Postfix (tests/postfix.py, docs/testing.md) runs with 40 connections per
destination, within what docs/operations.md allows for `smtp.max_connections_per_relay` (100), and
its back-off cut to seconds; after each restart it is told to flush its queue, as an
operator's restart script would. The store outage: on SQLite another connection holds the
write lock (the daemon's busy timeout is 1 s, so its writes fail, as with a disk that stalls);
on PostgreSQL the database refuses connections and the daemon's are terminated.
"""

from __future__ import annotations

import asyncio
import email
import os
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests import smtp_probes as probes
from tests.daemon_proc import DaemonProcess
from tests.postfix import Postfix, postfix_binary

pytestmark = pytest.mark.skipif(postfix_binary() is None, reason="Postfix is not installed (make system-deps)")

DOMAIN = "statens-adm.example"
MAILS = int(os.environ.get("GATEWAY_CRASH_MAILS", "400"))
WAVES = 20
BOUND_S = 15.0


def crash_mail(i: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"borger{i}@kommune{i % 5}.example"
    msg["To"] = probes.ADDRESS
    msg["Subject"] = f"Henvendelse {i} under nedbrud"
    msg["Message-ID"] = f"<crash-{i}-{os.getpid()}@kommune.example>"
    msg.set_content(f"Hej Kundebetjening,\n\nDette er henvendelse nummer {i}.\n\nMvh borger {i}\n")
    return msg.as_bytes().replace(b"\n", b"\r\n")


async def feed(port: int, mails: list[bytes], waves: int, pause_s: float) -> None:
    """The mails into Postfix in waves: the gateway gets them over the whole test."""
    size = -(-len(mails) // waves)
    for start in range(0, len(mails), size):
        replies, _ = await probes.timed_deliveries(port, mails[start:start + size], sessions=5)
        assert all(r.code == 250 for r in replies), {str(r) for r in replies}  # Postfix took them
        await asyncio.sleep(pause_s)


@asynccontextmanager
async def store_outage(proc: DaemonProcess) -> AsyncIterator[None]:
    url = make_url(proc.settings.database.url)
    if url.get_backend_name() == "sqlite":
        lock = sqlite3.connect(str(url.database), isolation_level=None, timeout=10)
        lock.execute("BEGIN IMMEDIATE")  # the write lock: every write of the daemon fails after 1 s
        try:
            yield
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        return
    import asyncpg

    admin = await asyncpg.connect(host=url.host or "127.0.0.1", port=url.port or 5432,
                                  user=url.username or "postgres", database="postgres")
    try:
        await admin.execute(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                            url.database)
        try:
            yield
        finally:
            await admin.execute(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()


async def restart(proc: DaemonProcess, postfix: Postfix, down_s: float) -> tuple[datetime, int]:
    """SIGKILL of the daemon's process group while its worker holds claims, `down_s` down,
    started again: when it was back, and how many mails the worker held."""
    _, held = await proc.freeze_worker_holding_claims()
    proc.kill_group()
    await asyncio.sleep(down_s)
    proc.start()
    postfix.flush()
    return datetime.now(UTC), held


async def finished(proc: DaemonProcess, postfix: Postfix) -> bool:
    if postfix.queued():
        return False
    stored, open_mails, open_notices = (await proc.rows(
        "SELECT (SELECT count(*) FROM inbound_mail),"
        " (SELECT count(*) FROM inbound_mail WHERE state IN ('pending', 'processing')),"
        " (SELECT count(*) FROM outbox WHERE state IN ('pending', 'sending'))"))[0]
    return stored == MAILS and not open_mails and not open_notices


def when(value: datetime | str) -> datetime:
    """A time as the store returns it to plain SQL (SQLite: text), in UTC."""
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def longest_wait(received: datetime | str, processed: datetime | str, back: list[datetime]) -> float:
    """Seconds from the later of the mail's 250 and the last recovery before its case."""
    received, processed = when(received), when(processed)
    since = max([received, *[b for b in back if b <= processed]])
    return (processed - since).total_seconds()


def maildir_ids(outbound: Path) -> Counter[str]:
    ids: Counter[str] = Counter()
    for folder in ("new", "cur"):
        for path in (outbound / folder).glob("*") if (outbound / folder).exists() else []:
            ids[str(email.message_from_bytes(path.read_bytes())["Message-ID"])] += 1
    return ids


async def test_issue24_crash_through_postfix_two_sigkills_and_a_store_outage(tmp_path: Path) -> None:
    started = time.monotonic()
    sent = [crash_mail(i) for i in range(MAILS)]
    proc = DaemonProcess(tmp_path, worker={"parse_in_subprocess": True}, database={"busy_timeout_ms": 1000},
                         smtp={"store_timeout_s": 5.0}, policy={"max_auto_answers_per_day": 100_000})
    with Postfix(proc.smtp_port, DOMAIN, smtp_destination_concurrency_limit="40") as postfix, proc:
        proc.start()
        back = [datetime.now(UTC)]
        feeding = asyncio.create_task(feed(postfix.port, sent, WAVES, pause_s=0.6))
        held = []
        for _ in range(2):
            await asyncio.sleep(1.5)
            at, count = await restart(proc, postfix, down_s=1.0)
            back.append(at)
            held.append(count)
        await asyncio.sleep(1.5)
        async with store_outage(proc):
            await asyncio.sleep(4.0)
        back.append(datetime.now(UTC))
        postfix.flush()
        await feeding
        deadline = time.monotonic() + 60
        while not await finished(proc, postfix):
            assert time.monotonic() < deadline, f"not finished: Postfix holds {postfix.queued()}\n{proc.tail()}"
            await asyncio.sleep(0.25)
        rows = await proc.rows("SELECT message_id, received_at, processed_at, case_id, outcome FROM inbound_mail")
        receipts = {mid for (mid,) in await proc.rows(
            "SELECT message_id FROM outbox WHERE event = 'receipt' AND state = 'sent'")}
        assert proc.stop() == 0
        deferred = len(postfix.replies(r"status=deferred"))
        by_4xx = len(postfix.replies(r"status=deferred.*said: 4"))
        busy = postfix.replies(r"(said|refused to talk to me): 421")
    waits = [longest_wait(received, processed, back) for _, received, processed, _, _ in rows]
    runs = proc.events("daemon.run_started")
    print(f"\n[crash] {MAILS} mails through Postfix, 2 SIGKILLs of the process group, a 4 s store outage: "
          f"longest wait {max(waits):.1f} s, median {sorted(waits)[len(waits) // 2]:.2f} s; "
          f"the worker held {held} mails at the kills, the restarts took back "
          f"{[e['mails_taken_back'] for e in runs[1:]]} mails and "
          f"{[e['notifications_taken_back'] for e in runs[1:]]} receipts; "
          f"worker store errors {len(proc.events('worker.store_error'))}, released "
          f"{sum(e['count'] for e in proc.events('worker.released'))}; Postfix deferred "
          f"{deferred} times ({by_4xx} by a 4xx reply); "
          f"test {time.monotonic() - started:.0f} s")
    assert sorted(mid for mid, *_ in rows) == sorted(f"<crash-{i}-{os.getpid()}@kommune.example>" for i in range(MAILS))
    assert Counter(outcome for *_, outcome in rows) == {"created": MAILS}
    assert len({case for _, _, _, case, _ in rows}) == MAILS, "a mail became two cases, or two mails one"
    assert max(waits) <= BOUND_S, sorted(waits)[-5:]
    in_maildir = maildir_ids(tmp_path / "outbound")
    assert len(receipts) == MAILS and set(in_maildir) == receipts
    assert max(in_maildir.values()) == 1, [m for m, n in in_maildir.items() if n > 1][:5]
    assert deferred > 0, "no mail met a fault on its way from Postfix to the gateway"
    assert busy == [], busy[:3]
