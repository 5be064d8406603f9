#!/usr/bin/env python3
"""Notification throughput against the floor of bare aiosmtplib (issue: notifications).

    .venv/bin/python bench/notify.py --n 2000 --concurrency 10

Queues N notifications (one case, N recipients) in a fresh SQLite store, then lets the sender
loop claim, render, deliver to Postfix's `smtp-sink` and mark them. In the same run, bare
aiosmtplib sends N pre-rendered messages to the same sink with the same concurrency (the floor).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    cmd = ["timeout", "600", binary, "-c", f"127.0.0.1:{port}", "256"]
    import os

    if os.geteuid() == 0:
        cmd[3:3] = ["-u", "nobody"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("smtp-sink did not start")


async def floor(port: int, messages: list[bytes], concurrency: int) -> float:
    import aiosmtplib

    gate = asyncio.Semaphore(concurrency)

    async def one(data: bytes) -> None:
        async with gate:
            await aiosmtplib.send(data, sender="kundebetjening@statens-adm.example",
                                  recipients=["bench@borger.example"], hostname="127.0.0.1", port=port)

    started = time.perf_counter()
    await asyncio.gather(*(one(m) for m in messages))
    return time.perf_counter() - started


async def gateway_run(port: int, n: int, concurrency: int) -> tuple[float, float, list[bytes]]:
    from gateway.app import open_app
    from gateway.model import Event
    from gateway.notify.send import notice_of
    from gateway.settings import load_settings
    from store import outbox, writes
    from store.outbox import Recipient

    with tempfile.TemporaryDirectory() as tmp:
        base = load_settings(ROOT / "config" / "gateway.toml", env={})
        settings = dataclasses.replace(
            base, base_dir=tmp,
            database=dataclasses.replace(base.database, url=f"sqlite+aiosqlite:///{tmp}/bench.db"),
            outbound=dataclasses.replace(base.outbound, transport=f"smtp://127.0.0.1:{port}",
                                         concurrency=concurrency))
        async with open_app(settings, migrate=True) as app:
            started = time.perf_counter()
            async with app.sessions() as session, session.begin():
                from gateway.model import Role, UserKind
                from store.queries import user_ref
                from store.transact import run_in

                user = await run_in(session, writes.add_user, "jens@borger.example", "Jens", None, UserKind.PERSON,
                                    Role.CUSTOMER, app.clock.now())
                case_id = await run_in(session, writes.create_case, "SAG-000001", "Benchmark", user_ref(user),
                                       app.clock.now())
                case = outbox.CaseHead(case_id, "SAG-000001", "Benchmark", "registreret")
                recipients = [Recipient(f"modtager{i}@borger.example", f"Modtager {i}", "da") for i in range(n)]
                await run_in(session, outbox.enqueue, case, Event.STATUS, recipients, app.clock.now(),
                             settings.mail.message_id_domain, {"previous_status": "registreret"})
            queued = time.perf_counter() - started
            due = await app.outbox.claim(n, app.clock.now(), 1)
            sample = [app.sender._renderer.compose(notice_of(d)) for d in due]
            await app.outbox.retry(None, app.clock.now())  # not needed: claims expire; keep rows pending
            from sqlalchemy import update

            from store.models import Outbox

            async with app.engine.begin() as conn:
                await conn.execute(update(Outbox).values(state="pending", attempts=0, claimed_until=None))
            started = time.perf_counter()
            while await app.sender.run_once(limit=500):
                pass
            sent = time.perf_counter() - started
            depth = await app.outbox.depth()
            assert depth == {"sent": n}, depth
    return queued, sent, sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=10)
    args = ap.parse_args()
    port = free_port()
    sink = start_sink(port)
    try:
        queued, sent, sample = asyncio.run(gateway_run(port, args.n, args.concurrency))
        bare = asyncio.run(floor(port, sample, args.concurrency))
    finally:
        sink.terminate()
        sink.wait()
    print(f"{args.n} notifications, concurrency {args.concurrency}, into Postfix smtp-sink on 127.0.0.1")
    print(f"queue   {args.n / queued:8.1f} rows/s (one transaction)")
    print(f"floor   aiosmtplib, pre-rendered   {args.n / bare:7.1f} mails/s")
    print(f"gateway claim+render+send+mark     {args.n / sent:7.1f} mails/s = {bare / sent:.0%} of floor "
          f"(target >= 50%)")


if __name__ == "__main__":
    main()
