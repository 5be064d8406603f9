#!/usr/bin/env python3
"""CPU time of the mail transaction per mail: the facts read, the plan, the writes, the outbox
(`handle_all`, a group of 8 parsed mails a transaction, as the worker writes them).

    .venv/bin/python bench/mail_tx.py                      # this tree
    .venv/bin/python bench/mail_tx.py --tree /tmp/old      # another checkout's code, same mails
    GATEWAY_TEST_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1/postgres \
      .venv/bin/python bench/mail_tx.py --db postgresql   # on a fresh PostgreSQL database

The mails of bench/ingest.py's mix are parsed first (not measured) and open a case each; then
each case gets an answer from its requester (half of the cases wait for one, so the answer
moves them back to work and mails the parties). CPU time of this process, whose threads run
the transactions, so other load on the machine moves it far less than wall-clock rates.
Alternate two trees in one run to compare them.

It also counts the statements of the transactions (through SQLAlchemy, and those psycopg runs
itself) and the round trips to the server: a statement run alone, a pipeline of statements, an
executemany, and each transaction's BEGIN and COMMIT. On PostgreSQL it reports the wall time
a mail too (the server's work is not this process's CPU).
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


COUNTS = {"statements": 0, "round_trips": 0, "transactions": 0}


def count_statements() -> None:
    """Hooks on SQLAlchemy's engines and on psycopg's connections (if installed)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    depth = {"pipeline": 0}

    def one(*_args: Any) -> None:
        COUNTS["statements"] += 1
        COUNTS["round_trips"] += 0 if depth["pipeline"] else 1

    event.listen(Engine, "before_cursor_execute", one)
    event.listen(Engine, "begin", lambda _conn: COUNTS.__setitem__("transactions", COUNTS["transactions"] + 1))
    try:
        import psycopg
    except ImportError:
        return
    execute, executemany, pipeline = psycopg.Connection.execute, psycopg.Cursor.executemany, psycopg.Connection.pipeline

    def counted_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        one()
        return execute(self, *args, **kwargs)

    def counted_many(self: Any, query: Any, rows: Any, *args: Any, **kwargs: Any) -> Any:
        rows = list(rows)
        COUNTS["statements"] += len(rows)
        COUNTS["round_trips"] += 1
        return executemany(self, query, rows, *args, **kwargs)

    import contextlib

    @contextlib.contextmanager
    def counted_pipeline(self: Any) -> Any:
        COUNTS["round_trips"] += 0 if depth["pipeline"] else 1
        depth["pipeline"] += 1
        try:
            with pipeline(self) as p:
                yield p
        finally:
            depth["pipeline"] -= 1

    psycopg.Connection.execute = counted_execute  # type: ignore[method-assign]
    psycopg.Cursor.executemany = counted_many  # type: ignore[method-assign]
    psycopg.Connection.pipeline = counted_pipeline  # type: ignore[method-assign,assignment]


async def run(tree: str, mails: list[bytes], db: str) -> tuple[float, float]:
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
            database=dataclasses.replace(base.database, url=db or f"sqlite+aiosqlite:///{tmp}/bench.db"),
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
                COUNTS.update(statements=0, round_trips=0, transactions=0)
                started, wall = time.process_time(), time.perf_counter()
                for i in range(0, len(work), GROUP):
                    results += await app.tx.run(handle_all, steps, work[i:i + GROUP], app.clock.now())
                wall = time.perf_counter() - wall
                n = len(work)
                print(f"  {n} mails: {COUNTS['statements'] / n:.1f} statements and "
                      f"{(COUNTS['round_trips'] + 2 * COUNTS['transactions']) / n:.2f} round trips a mail "
                      f"({COUNTS['transactions']} transactions), wall {wall / n * 1000:.3f} ms a mail")
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
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite",
                    help="postgresql: a fresh database on the server of GATEWAY_TEST_DATABASE_URL")
    args = ap.parse_args()
    db, admin, database = "", "", ""
    if args.db == "postgresql":
        import os

        import psycopg
        from sqlalchemy.engine import make_url

        server = make_url(os.environ["GATEWAY_TEST_DATABASE_URL"])
        database = f"bench_mail_tx_{os.getpid()}"
        admin = server.set(drivername="postgresql").render_as_string(False)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {database}")
        db = server.set(database=database).render_as_string(False)
    try:
        measure(args, db)
    finally:
        if database:  # the database of this run only, dropped whatever happened
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def measure(args: argparse.Namespace, db: str) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from ingest import corpus  # the same generated mix as bench/ingest.py

    mails = corpus(args.n, args.seed)
    sys.path.insert(0, args.tree)
    for name in [m for m in sys.modules if m.split(".")[0] in ("gateway", "store")]:
        del sys.modules[name]
    count_statements()
    asyncio.run(run(args.tree, mails, db))


if __name__ == "__main__":
    main()
