"""store/sqlite/wal.py: in `gateway run` on SQLite, no commit waits for a WAL checkpoint; the worker's
Checkpointer copies the WAL into the database file when the SMTP commits pause, and at least
every FORCE_AFTER_S while they do not."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from store.engine import make_engine, sync_sqlite_engine
from store.sqlite.wal import FORCE_AFTER_S, Checkpointer, checkpoint_elsewhere

pytestmark = pytest.mark.sqlite_only


def _write(engine: Engine, rows: int) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x BLOB)")
        for _ in range(rows):
            conn.exec_driver_sql("INSERT INTO t VALUES (randomblob(4000))")


async def _until(check: object, timeout: float) -> float:
    """Seconds until check() is true (or the timeout)."""
    started = time.monotonic()
    while not check() and time.monotonic() - started < timeout:  # type: ignore[operator]
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_no_commit_checkpoints_and_the_checkpointer_does_it_when_quiet_or_overdue(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    db = tmp_path / "store.db"
    writer = sync_sqlite_engine(url, 1000)
    other = make_engine(url)
    await checkpoint_elsewhere(writer, other)
    with writer.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    async with other.connect() as aconn:
        assert (await aconn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 0
    _write(writer, 1100)  # 4.4 MB, past SQLite's default of 1000 pages: that commit would have checkpointed
    small = db.stat().st_size
    assert small < 100_000  # everything is still in the WAL

    quiet = [False]
    checkpointer = Checkpointer(url, 1000, lambda: quiet[0])
    stop = asyncio.Event()
    running = asyncio.ensure_future(checkpointer.run(stop))
    try:
        # SMTP commits keep coming: copied only once FORCE_AFTER_S has passed
        took = await _until(lambda: checkpointer.checkpoints == 1, 3 * FORCE_AFTER_S)
        assert FORCE_AFTER_S * 0.9 <= took < FORCE_AFTER_S + 1.0
        assert db.stat().st_size > 4_000_000
        # they pause: copied at once
        _write(writer, 600)
        quiet[0] = True
        grown = db.stat().st_size
        assert await _until(lambda: checkpointer.checkpoints == 2, 2.0) < 0.6
        assert db.stat().st_size > grown + 2_000_000
        await asyncio.sleep(0.5)  # nothing committed since: it looks, and does nothing
        assert checkpointer.checkpoints == 2
    finally:
        stop.set()
        await running
        writer.dispose()
        await other.dispose()
