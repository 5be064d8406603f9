"""What the data-protection use-cases (gateway/retention.py, gateway/privacy.py,
gateway/export.py) work with: the store's transactions, the attachment files and the clock —
not the whole App."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway.clock import Clock
from store.blobs import BlobStore
from store.engine import Database
from store.sqlite.wal import truncate_wal
from store.transact import Transactor


@dataclass(frozen=True)
class DataStore:
    tx: Transactor
    engine: Database  # for a lease
    blobs: BlobStore
    clock: Clock
    sqlite_url: str | None = None  # a SQLite file: its WAL is cut after anything is deleted

    async def cut_wal(self, patient: bool = True) -> bool | None:
        """SQLite: the WAL checkpointed into the file and cut to zero bytes, so the old pages it
        still holds go too; whether that got through (None: not SQLite). Not `patient` (after a
        routine retention run): one short try, which holds the SMTP commits back for at most
        a quarter second; the next run tries again."""
        if self.sqlite_url is None:
            return None
        attempts, wait_ms = (3, 1000) if patient else (1, 250)
        return await asyncio.to_thread(truncate_wal, self.sqlite_url, attempts, wait_ms)
