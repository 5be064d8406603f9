#!/usr/bin/env python3
"""What the retention indexes of migration 0012 cost the mail path (issue 21).

    .venv/bin/python bench/retention_indexes.py --n 2000 --rounds 3

The indexes that let the retention jobs find what is due (`ix_inbound_expiry`,
`ix_outbox_prune_due`, `ix_case_raw_due`, `ix_case_anonymise_due`) are written on every
claim, outcome, notification and status change. This runs the same work on two SQLite stores,
one with them and one where they are dropped, alternating, with tiny mails so the store's share
is as large as it gets: the inbox worker (inline parse) makes a case per mail, then the sender
delivers every receipt to a maildir. It reports the CPU seconds of each phase (the process's
own and its threads', so the other load of the machine counts less than wall time would).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NEW_INDEXES = ("ix_inbound_expiry", "ix_outbox_prune_due", "ix_case_raw_due", "ix_case_anonymise_due")


def tiny(i: int) -> bytes:
    return (f"From: kunde{i % 500}@kunde.example\r\nTo: kundebetjening@statens-adm.example\r\n"
            f"Subject: Sag {i}\r\nMessage-ID: <bench-{i}@kunde.example>\r\n\r\nHej, sag nummer {i}.\r\n").encode()


async def one_round(n: int, with_indexes: bool) -> tuple[float, float]:
    from sqlalchemy import text

    from gateway.app import open_app
    from gateway.settings import load_settings
    from store.inbox import IncomingMail

    folder = Path(tempfile.mkdtemp(prefix="gw-bench-ret-"))
    base = load_settings(ROOT / "config" / "gateway.toml", env={"GATEWAY_BASE_DIR": str(folder)})
    settings = dataclasses.replace(
        base, base_dir=str(folder),
        database=dataclasses.replace(base.database, url=f"sqlite+aiosqlite:///{folder}/gateway.db"),
        storage=dataclasses.replace(base.storage, blob_dir=str(folder / "blobs")),
        outbound=dataclasses.replace(base.outbound, transport=f"maildir:{folder}/outbound"),
        worker=dataclasses.replace(base.worker, parse_in_subprocess=False),
        policy=dataclasses.replace(base.policy, max_mails_per_sender_per_hour=0, max_auto_answers_per_day=10**6))
    async with open_app(settings) as app:
        if not with_indexes:
            async with app.engine.begin() as conn:
                for name in NEW_INDEXES:
                    await conn.execute(text(f"DROP INDEX {name}"))
        for start in range(0, n, 100):
            await app.inbox.accept_many([IncomingMail(tiny(i), "bench", None, ("kundebetjening@statens-adm.example",))
                                         for i in range(start, min(n, start + 100))], app.clock.now())
        cpu = time.process_time()
        while await app.worker.run_once():
            pass
        worker = time.process_time() - cpu
        cpu = time.process_time()
        while await app.sender.run_once(limit=200):
            pass
        sender = time.process_time() - cpu
    return worker, sender


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for with_indexes in (False, True):
            results[with_indexes].append(asyncio.run(one_round(args.n, with_indexes)))
    for with_indexes, runs in results.items():
        worker = statistics.median(r[0] for r in runs)
        sender = statistics.median(r[1] for r in runs)
        label = "with the 0012 indexes   " if with_indexes else "without them            "
        print(f"{label} worker {worker / args.n * 1000:6.3f} ms CPU/mail   sender {sender / args.n * 1000:6.3f} "
              f"ms CPU/notification   (median of {args.rounds}, {args.n} mails)")


if __name__ == "__main__":
    main()
