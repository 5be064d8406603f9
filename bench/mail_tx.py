#!/usr/bin/env python3
"""CPU time of the mail transaction per mail: the facts read, the plan, the writes, the outbox
(`handle_all`, a group of 8 parsed mails a transaction, as the worker writes them).

    .venv/bin/python bench/mail_tx.py                      # this tree
    .venv/bin/python bench/mail_tx.py --tree /tmp/old      # another checkout's code, same mails

The mails of bench/ingest.py's mix are parsed first (not measured) and open a case each; then
each case gets an answer from its requester (half of the cases wait for one, so the answer
moves them back to work and mails the parties). CPU time of this process, whose threads run
the transactions, so other load on the machine moves it far less than wall-clock rates.
Alternate two trees in one run to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
GROUP = 8


def answer(requester: str, number: str, message_id: str | None, address: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = requester, address, f"SV: [{number}] Svar"
    msg["Message-ID"] = f"<svar-{number}@borger.example>"
    if message_id:
        msg["In-Reply-To"] = msg["References"] = message_id
    msg.set_content("Hej\n\nHer er de oplysninger, I bad om: kontonummer og adresse.\n\nMvh\n")
    return bytes(msg)


async def run(tree: str, mails: list[bytes]) -> tuple[float, float]:
    from gateway.app import open_app
    from gateway.settings import load_settings
    from store.inbox import IncomingMail

    try:
        from gateway.apply import Steps, handle_all  # type: ignore[attr-defined]
    except ImportError:  # the tree before the mail transaction moved to gateway/apply.py
        from gateway.worker import Steps, handle_all  # type: ignore[attr-defined,no-redef]

    with tempfile.TemporaryDirectory() as tmp:
        base = load_settings(ROOT / "config" / "gateway.toml", env={})
        settings = dataclasses.replace(
            base, base_dir=tmp,
            database=dataclasses.replace(base.database, url=f"sqlite+aiosqlite:///{tmp}/bench.db"),
            storage=dataclasses.replace(base.storage, blob_dir=f"{tmp}/blobs"),
            worker=dataclasses.replace(base.worker, parse_in_subprocess=False))
        async with open_app(settings, migrate=True) as app:
            steps = Steps.from_settings(settings)
            address = settings.mail.addresses[0]

            async def timed(raws: list[bytes]) -> tuple[float, list[Any]]:
                accepted = await app.inbox.accept_many([IncomingMail(r, "bench", None, (address,)) for r in raws],
                                                       app.clock.now())
                parsed = [await app.parser.parse(r, None, (address,)) for r in raws]
                work = [(a.inbound_id, None, p) for a, p in zip(accepted, parsed, strict=True)]
                results: list[Any] = []
                started = time.process_time()
                for i in range(0, len(work), GROUP):
                    results += await app.tx.run(handle_all, steps, work[i:i + GROUP], app.clock.now())
                return time.process_time() - started, list(zip(parsed, results, strict=True))

            opened, cases = await timed(mails)
            async with app.engine.begin() as conn:
                await conn.execute(text("UPDATE support_case SET status = 'afventer_rekvirent' WHERE id % 2 = 0"))
            answers = [answer(p.from_addr, r.case, p.message_id, address) for p, r in cases if r.case and p.from_addr]
            answered, results = await timed(answers)
            outcomes = sorted({r.action.value for _, r in results})
            print(f"{tree}: open {opened / len(mails) * 1000:.3f} ms CPU per mail ({len(mails)}), "
                  f"answer {answered / len(answers) * 1000:.3f} ms CPU per mail ({len(answers)}: {outcomes})")
            return opened, answered


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=str(ROOT), help="the checkout whose gateway/ and store/ are measured")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from ingest import corpus  # the same generated mix as bench/ingest.py

    mails = corpus(args.n, args.seed)
    sys.path.insert(0, args.tree)
    for name in [m for m in sys.modules if m.split(".")[0] in ("gateway", "store")]:
        del sys.modules[name]
    asyncio.run(run(args.tree, mails))


if __name__ == "__main__":
    main()
