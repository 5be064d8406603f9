#!/usr/bin/env python3
"""asyncpg against psycopg 3 for the worker's kind of transaction: many small statements.

    GATEWAY_TEST_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1/postgres \\
      .venv/bin/python bench/pg_drivers.py [--tx 200] [--per-tx 10]

Each way runs the same transactions: `--per-tx` times an INSERT … RETURNING id and a SELECT of
the row by that id (what a case's rows and reads look like), then the commit. Per statement,
it prints the client's CPU (this process: driver, SQLAlchemy, event loop, threads) and the wall
time. The ways:

  asyncpg, async session   SQLAlchemy's AsyncSession, the statements in `run_sync` (the greenlet):
                           how the store ran its transactions on PostgreSQL before issue 23
  asyncpg, raw             asyncpg's own prepared statements awaited in the event loop (the
                           best asyncpg can do; the store's sync functions cannot call it)
  psycopg, SQLAlchemy      a sync Session on a thread, statements through SQLAlchemy Core
  psycopg, raw prepared    the thread's connection runs the compiled SQL itself, prepared
                           (store/pg/driver.py)
  psycopg, pipelined       the same, the INSERTs of a transaction sent as one pipeline (no
                           SELECT between them): what `later` does with writes nobody reads
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

META = MetaData()
ROWS = Table("bench_driver_rows", META, Column("id", Integer, primary_key=True), Column("a", Integer),
             Column("b", String(200)))
INSERT = insert(ROWS).returning(ROWS.c.id)
SELECT = select(ROWS.c.a, ROWS.c.b).where(ROWS.c.id == 0)
SQL_INSERT_PG = "INSERT INTO bench_driver_rows (a, b) VALUES (%(a)s, %(b)s) RETURNING id"
SQL_SELECT_PG = "SELECT a, b FROM bench_driver_rows WHERE id = %(id)s"


def _work(per_tx: int) -> list[dict[str, Any]]:
    return [{"a": i, "b": f"row {i} " + "x" * 100} for i in range(per_tx)]


async def measure(name: str, run: Callable[[], Awaitable[None]], statements: int) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    await run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{name:26} {cpu / statements * 1e6:8.0f} µs CPU {wall / statements * 1e6:8.0f} µs wall a statement")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tx", type=int, default=200)
    ap.add_argument("--per-tx", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    url = make_url(os.environ["GATEWAY_TEST_DATABASE_URL"])
    plain = url.set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_driver_rows")
        conn.execute("CREATE TABLE bench_driver_rows (id serial PRIMARY KEY, a integer, b varchar(200))")
    statements = args.tx * args.per_tx * 2
    rows = _work(args.per_tx)
    async_engine = create_async_engine(url.set(drivername="postgresql+asyncpg"))
    sync_engine = create_engine(url.set(drivername="postgresql+psycopg"))
    thread = ThreadPoolExecutor(1)
    raw_pg = psycopg.connect(plain)
    raw_apg = await asyncpg.connect(plain)
    loop = asyncio.get_running_loop()

    def sa_tx(session: Session) -> None:
        conn = session.connection()
        for row in rows:
            new_id = conn.execute(INSERT, row).scalar_one()
            conn.execute(SELECT.where(ROWS.c.id == new_id)).first()

    async def asyncpg_session() -> None:
        for _ in range(args.tx):
            async with AsyncSession(async_engine) as session, session.begin():
                await session.run_sync(sa_tx)

    async def asyncpg_raw() -> None:
        ins = await raw_apg.prepare("INSERT INTO bench_driver_rows (a, b) VALUES ($1, $2) RETURNING id")
        sel = await raw_apg.prepare("SELECT a, b FROM bench_driver_rows WHERE id = $1")
        for _ in range(args.tx):
            async with raw_apg.transaction():
                for row in rows:
                    new_id = await ins.fetchval(row["a"], row["b"])
                    await sel.fetchrow(new_id)

    def on_thread(fn: Callable[[], None]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            for _ in range(args.tx):
                await loop.run_in_executor(thread, fn)
        return run

    def psycopg_sa() -> None:
        with Session(sync_engine) as session, session.begin():
            sa_tx(session)

    def psycopg_raw() -> None:
        with raw_pg.transaction():
            for row in rows:
                new_id = raw_pg.execute(SQL_INSERT_PG, row, prepare=True).fetchone()[0]  # type: ignore[index]
                raw_pg.execute(SQL_SELECT_PG, {"id": new_id}, prepare=True).fetchone()

    def psycopg_pipelined() -> None:
        with raw_pg.transaction():
            with raw_pg.pipeline():
                cursors = [raw_pg.execute(SQL_INSERT_PG, row, prepare=True) for row in rows]
            ids = [c.fetchone()[0] for c in cursors]  # type: ignore[index]
            with raw_pg.pipeline():
                for new_id in ids:
                    raw_pg.execute(SQL_SELECT_PG, {"id": new_id}, prepare=True)

    ways = [("asyncpg, async session", asyncpg_session), ("asyncpg, raw", asyncpg_raw),
            ("psycopg, SQLAlchemy", on_thread(psycopg_sa)), ("psycopg, raw prepared", on_thread(psycopg_raw)),
            ("psycopg, pipelined", on_thread(psycopg_pipelined))]
    print(f"{args.tx} transactions of {args.per_tx} INSERT … RETURNING and {args.per_tx} SELECTs; "
          f"load {Path('/proc/loadavg').read_text().split()[:3]}")
    for r in range(args.rounds):
        print(f"round {r + 1}")
        for name, run in ways:
            await measure(name, run, statements)
    await raw_apg.close()
    raw_pg.close()
    await async_engine.dispose()
    sync_engine.dispose()
    thread.shutdown()
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("DROP TABLE bench_driver_rows")


if __name__ == "__main__":
    asyncio.run(main())
