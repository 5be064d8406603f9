"""Two `gateway run` nodes against one PostgreSQL (rules §9): nothing processed or sent twice.

Runs in the PostgreSQL pass of `make test` (GATEWAY_TEST_DATABASE_URL); the SQLite pass
skips it by name, since several nodes on one SQLite file is not a supported set-up.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from tests.conftest import ADDRESS, ROOT
from tests.daemon_proc import DaemonProcess
from tests.sink import Sink

pytestmark = pytest.mark.skipif(not os.environ.get("GATEWAY_TEST_DATABASE_URL"),
                                reason="several nodes need PostgreSQL: runs in the PostgreSQL pass")

N_NEW = int(os.environ.get("GATEWAY_MULTINODE_MAILS", "1000"))  # + as many replies = 2000 mails


def new_mail(i: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"borger{i}@kommune{i % 7}.example"
    msg["To"] = ADDRESS
    msg["Subject"] = f"Henvendelse nummer {i}"
    msg["Message-ID"] = f"<new-{i}@kommune.example>"
    msg.set_content(f"Hej Kundebetjening,\n\nDette er henvendelse {i}.\n\nMvh borger {i}")
    return msg.as_bytes()


def reply_mail(i: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"borger{i}@kommune{i % 7}.example"
    msg["To"] = ADDRESS
    msg["Subject"] = f"SV: Henvendelse nummer {i}"
    msg["Message-ID"] = f"<reply-{i}@kommune.example>"
    msg["In-Reply-To"] = f"<new-{i}@kommune.example>"
    msg["References"] = f"<new-{i}@kommune.example>"
    msg.set_content(f"Her er mere om henvendelse {i}.\n\nDen 5. jan. 2026 skrev Kundebetjening:\n> Tak")
    return msg.as_bytes()


async def deliver(port_of: dict[int, int], mails: list[tuple[int, bytes]], sessions: int = 10) -> list[int]:
    """Send each (node, raw) over SMTP; returns the indexes that got 250."""
    gate = asyncio.Semaphore(sessions)
    ok: list[int] = []

    async def one(index: int, node: int, raw: bytes) -> None:
        async with gate:
            try:
                await aiosmtplib.send(raw, sender="borger@kommune.example", recipients=[ADDRESS],
                                      hostname="127.0.0.1", port=port_of[node], timeout=30)
                ok.append(index)
            except (aiosmtplib.SMTPException, OSError):
                pass

    await asyncio.gather(*(one(i, node, raw) for i, (node, raw) in enumerate(mails)))
    return ok


async def wait_for(node: DaemonProcess, sql: str, expected: int, timeout: float = 240.0) -> int:
    value = -1
    for _ in range(int(timeout * 4)):
        value = int(await node.scalar(sql))
        if value >= expected:
            return value
        await asyncio.sleep(0.25)
    return value


def maintenance(node: DaemonProcess, at: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(node.config_path), "maintenance",
                             "--at", at], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def execute(node: DaemonProcess, sql: str) -> None:
    from sqlalchemy import text

    from store.engine import make_engine

    engine = make_engine(node.settings.database.url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def step(name: str, started: list[float]) -> None:
    import time

    now = time.monotonic()
    print(f"[multinode] {name}: {now - started[0]:.1f}s", flush=True)
    started[0] = now


async def test_item26_two_nodes_one_postgres(tmp_path: Path) -> None:
    import time

    clock = [time.monotonic()]
    sink = await Sink().start()
    url = os.environ["GATEWAY_TEST_DATABASE_URL"]
    from tests.pg import fresh_database

    shared = {"url": fresh_database(url)}
    common = dict(database=shared, outbound={"transport": f"smtp://127.0.0.1:{sink.port}"},
                  worker={"lease_s": 3.0, "parse_in_subprocess": True}, daemon={"log_format": "json", "grace_s": 5.0,
                                                                                 "maintenance_interval_s": 3600.0})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = DaemonProcess(tmp_path / "a", **common)
    b = DaemonProcess(tmp_path / "b", **common)
    a.start()
    b.start()
    try:
        ports = {0: a.smtp_port, 1: b.smtp_port}
        # 1. new mails split across both nodes, then replies through the *other* node
        sent = await deliver(ports, [(i % 2, new_mail(i)) for i in range(N_NEW)])
        assert len(sent) == N_NEW
        assert await wait_for(a, "SELECT count(*) FROM inbound_mail WHERE state = 'done'", N_NEW) == N_NEW
        step("new mails processed", clock)
        sent = await deliver(ports, [((i + 1) % 2, reply_mail(i)) for i in range(N_NEW)])
        assert len(sent) == N_NEW
        total = 2 * N_NEW
        assert await wait_for(a, "SELECT count(*) FROM inbound_mail WHERE state = 'done'", total) == total
        outcomes = dict(await a.rows("SELECT outcome, count(*) FROM inbound_mail GROUP BY outcome"))
        assert outcomes == {"created": N_NEW, "commented": N_NEW}
        assert await a.scalar("SELECT count(DISTINCT number) FROM support_case") == N_NEW
        assert await a.scalar("SELECT count(*) FROM support_case") == N_NEW
        # every case got exactly one comment through the other node
        assert await a.scalar("SELECT count(*) FROM (SELECT case_id FROM comment GROUP BY case_id "
                              "HAVING count(*) = 2) t") == N_NEW
        step("replies processed", clock)
        # 2. every notification (the receipts) delivered once
        for _ in range(480):
            if len(sink.messages) >= N_NEW:
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.0)
        ids = Counter(m.message["Message-ID"] for m in sink.messages)
        assert len(ids) == N_NEW and max(ids.values()) == 1
        assert await a.scalar("SELECT count(*) FROM outbox WHERE state = 'sent'") == N_NEW
        step("notifications delivered", clock)
        # 3. auto-close run on both nodes at once closes each case once
        await execute(a, "UPDATE support_case SET status = 'udfoert', status_changed_at = now() - interval '8 days'")
        at = "2099-01-01T00:00:00+00:00"
        runs = [maintenance(a, at), maintenance(b, at)]
        for run in runs:  # in a thread: the sink in this event loop must keep answering them
            out, _ = await asyncio.to_thread(run.communicate, timeout=180)
            assert run.returncode == 0, out.decode()
        assert await a.scalar("SELECT count(*) FROM support_case WHERE status = 'lukket'") == N_NEW
        assert await a.scalar("SELECT count(*) FROM status_change WHERE to_status = 'lukket'") == N_NEW
        step("auto-close", clock)
        # 4. SIGKILL one node mid-load: the other takes its claims over after the lease
        burst = [(0, new_mail(100_000 + i)) for i in range(150)] + [(1, new_mail(200_000 + i)) for i in range(150)]
        task = asyncio.create_task(deliver(ports, burst))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(a.kill)
        acked = await task
        acknowledged = {f"<new-{100_000 + i if i < 150 else 200_000 + i - 150}@kommune.example>" for i in acked}
        stored = [mid for (mid,) in await b.rows("SELECT message_id FROM inbound_mail")]
        assert acknowledged <= set(stored)  # every 250 was a commit
        assert len(stored) == len(set(stored))  # nothing doubled
        assert await wait_for(b, "SELECT count(*) FROM inbound_mail WHERE state = 'done'", len(stored)) == len(stored)
        step("failover", clock)
        created = await b.scalar("SELECT count(*) FROM inbound_mail WHERE outcome = 'created'")
        assert await b.scalar("SELECT count(*) FROM support_case") == created
    finally:
        for node in (a, b):  # in a thread: the sink in this event loop must keep answering
            if node.running:
                await asyncio.to_thread(node.stop)
        await sink.stop()
