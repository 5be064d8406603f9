"""The daemon's inbox writer on PostgreSQL: the group commits of the SMTP and IMAP edges, in
the writer process of store/writer.py (its framing, restarts and ordering), with a
psycopg connection of its own.

On PostgreSQL the edges committed through asyncpg in the listener's own event loop: the
INSERTs' parameters, the hashing of every mail (`row_of`) and the driver's work all ran where
aiosmtpd reads the next DATA, so a slow commit, or only a busy one, delayed every session's
next line. Here the loop writes the raw bytes to a socket and reads the ids back, as on SQLite.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from gateway.errors import StoreUnavailable
from store.inbox import Accepted, IncomingMail, insert_batch, row_of


class PgCommitter:
    """One batch of mails, one transaction (`store.inbox.insert_batch`): one multi-row INSERT
    … ON CONFLICT DO NOTHING RETURNING for the rows, one for their raw bytes, one commit."""

    def __init__(self, url: str) -> None:
        self._engine = create_engine(make_url(url).set(drivername="postgresql+psycopg"), pool_size=1,
                                     max_overflow=1)

    @staticmethod
    def rows(mails: list[IncomingMail], now: datetime) -> list[dict[str, Any]]:
        return [row_of(mail, now) for mail in mails]

    def commit(self, rows: list[dict[str, Any]], more: bool = False) -> list[Accepted]:
        try:
            with self._engine.begin() as conn:
                return insert_batch(conn, rows)
        except (DBAPIError, OSError) as exc:
            raise StoreUnavailable(f"inbox commit failed: {type(exc).__name__}") from exc

    def close(self) -> None:
        self._engine.dispose()
