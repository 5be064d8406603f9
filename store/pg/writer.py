"""The daemon's inbox writer on PostgreSQL: the group commits of the SMTP and IMAP edges, in
the writer process of store/writer.py (its framing, restarts and ordering), with a
psycopg connection of its own.

On PostgreSQL the edges committed through asyncpg in the listener's own event loop: the
INSERTs' parameters, the hashing of every mail (`row_of`) and the driver's work all ran where
aiosmtpd reads the next DATA, so a slow commit, or only a busy one, delayed every session's
next line. Here the loop writes the raw bytes to a socket and reads the ids back, as on SQLite.

A batch is one statement in one round trip (`BATCH_SQL`): the rows and their raw bytes in two
INSERTs of one WITH, each over arrays (`unnest`), so its text is the same for every batch and
stays prepared on the server. One statement outside a transaction block is its own transaction:
all of it or nothing, committed (and its WAL flushed: `synchronous_commit` is on here) before
the answer comes back. Through SQLAlchemy's `insert_batch` the same commit was four round
trips (BEGIN, the rows, the raw bytes, COMMIT), each a wait for the backend to be scheduled on
a busy machine, while the 250s wait.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from gateway.errors import StoreUnavailable
from store.inbox import Accepted, IncomingMail, T, accepted_in_order, first_of_each_key, row_of

# `row_of`'s keys (but `raw`), the column types they go to, in this order.
_COLUMNS = (("received_at", "timestamptz"), ("source", "varchar"), ("envelope_from", "varchar"),
            ("envelope_to", "text"), ("size", "integer"), ("sha256", "varchar"), ("message_id", "varchar"),
            ("dedup_key", "varchar"), ("state", "varchar"), ("attempts", "integer"))
_NAMES = ", ".join(name for name, _ in _COLUMNS)
_VALUES = ", ".join(f"CAST(%({name})s AS {kind}[])" for name, kind in _COLUMNS)
_SELECTED = ", ".join("envelope_to::json" if name == "envelope_to" else name for name, _ in _COLUMNS)
# WITH ORDINALITY / ORDER BY n: the ids are taken in the order the mails came, which is the
# order the worker claims them in. A key already stored is skipped (ON CONFLICT DO NOTHING) and
# looked up after (`_FIND_SQL`). The raw bytes' INSERT sees the ids of the rows' INSERT through
# its RETURNING; the foreign key is checked at the statement's end, when both are in.
BATCH_SQL = (
    f"WITH v AS (SELECT * FROM unnest({_VALUES}) WITH ORDINALITY AS v({_NAMES}, n)), "
    f"new AS (INSERT INTO inbound_mail ({_NAMES}) SELECT {_SELECTED} FROM v ORDER BY n "
    "ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key), "
    "raw AS (INSERT INTO inbound_raw (inbound_id, raw) SELECT new.id, r.raw FROM new "
    "JOIN unnest(CAST(%(dedup_key)s AS varchar[]), CAST(%(raw)b AS bytea[])) AS r(dedup_key, raw) "
    "USING (dedup_key)) "
    "SELECT id, dedup_key FROM new")
_FIND_SQL = "SELECT id, dedup_key FROM inbound_mail WHERE dedup_key = ANY(%(keys)s)"


class PgCommitter:
    """One batch of mails, one statement and one round trip (`BATCH_SQL`), committed on its own."""

    def __init__(self, url: str) -> None:
        self._engine = create_engine(make_url(url).set(drivername="postgresql+psycopg"), pool_size=1,
                                     max_overflow=1)
        event.listen(self._engine, "connect", _autocommit)
        received = T.c.received_at.type
        self._received_at = received.dialect_impl(self._engine.dialect).bind_processor(self._engine.dialect)

    @staticmethod
    def rows(mails: list[IncomingMail], now: datetime) -> list[dict[str, Any]]:
        return [row_of(mail, now) for mail in mails]

    def params(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The batch as one array a column (`BATCH_SQL`'s parameters)."""
        first = first_of_each_key(rows)
        params: dict[str, Any] = {name: [row[name] for row in first] for name, _ in _COLUMNS}
        if self._received_at is not None:
            params["received_at"] = [self._received_at(v) for v in params["received_at"]]
        params["envelope_to"] = [json.dumps(v) for v in params["envelope_to"]]
        params["raw"] = [row["raw"] for row in first]
        return params

    def commit(self, rows: list[dict[str, Any]], more: bool = False) -> list[Accepted]:
        try:
            pooled = self._engine.raw_connection()
        except (DBAPIError, OSError) as exc:
            raise StoreUnavailable(f"inbox commit failed: {type(exc).__name__}") from exc
        try:
            conn: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
            returned = conn.execute(BATCH_SQL, self.params(rows), prepare=True).fetchall()
            ids = {str(key): int(new_id) for new_id, key in returned}
            missing = [row["dedup_key"] for row in rows if row["dedup_key"] not in ids]
            if missing:  # stored before (a duplicate): its id
                found = conn.execute(_FIND_SQL, {"keys": list(dict.fromkeys(missing))}).fetchall()
                ids.update({str(key): int(old_id) for old_id, key in found})
            return accepted_in_order(rows, ids, {str(key) for _, key in returned})
        except (psycopg.Error, OSError) as exc:
            if isinstance(exc, psycopg.Error) and pooled.driver_connection is not None \
                    and pooled.driver_connection.broken:
                pooled.invalidate(exc)
            raise StoreUnavailable(f"inbox commit failed: {type(exc).__name__}") from exc
        finally:
            pooled.close()

    def close(self) -> None:
        self._engine.dispose()


def _autocommit(dbapi_conn: Any, _record: Any) -> None:
    """Each statement its own transaction: the batch's single statement commits when it ends."""
    dbapi_conn.autocommit = True
